"""Fine-tuning in a parameter space: MAP optima (the anchors of curves, members of ensembles).

Training is functional: a latent vector w is optimised with AdamW and evaluated through
``space.to_theta(w)`` and :class:`~bayes_lora.lora.params.FunctionalModel`, so the same loop
trains full LoRA tensors, LoRA-XS cores or any other space.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import check_options, option
from ..types import EncodedTask, over_batches
from .checkpoint import LoopCheckpoint, StepLoop, kept, resume, save_if_due
from .params import FunctionalModel, ParamLayout, is_lora_factor
from .spaces import ParameterSpace


class NumericalError(RuntimeError):
    """A NaN or Inf appeared during optimisation; ``last_good`` holds the last finite latent."""

    def __init__(self, message: str, last_good: Tensor | None = None, step: int = -1):
        super().__init__(message)
        self.last_good = last_good
        self.step = step


@dataclass(frozen=True)
class TrainConfig:
    """Options of a fine-tuning run.

    Attributes
    ----------
    epochs: passes over the training set.
    batch_size: examples per step.
    lr: AdamW learning rate.
    weight_decay: AdamW decoupled weight decay on every latent coordinate.
    seed: seeds the initialisation and the batch order.
    max_steps: stop after this many steps (None or 0: run all epochs).
    grad_clip: clip the gradient norm of the latent (None: no clipping).
    """

    epochs: float = option(2.0, gt=0)
    batch_size: int = option(16, ge=1)
    # chosen for the anchors on the SST-2 dev split (docs/tuning.md)
    lr: float = option(1e-3, gt=0)
    weight_decay: float = option(0.0, ge=0)
    seed: int = option(0, ge=0, config=False, doc="the run's seed (per anchor: seed, seed + 1, ...)")
    max_steps: int | None = option(None, ge=0, doc="0 or unset = no limit")
    grad_clip: float | None = option(1.0, gt=0, doc="gradient-norm clipping; unset = none")

    def __post_init__(self):
        check_options(self)


@dataclass(frozen=True)
class TrainResult:
    """The optimised latent, the loss of every step, the snapshots taken and the time spent."""

    latent: Tensor
    losses: tuple[float, ...]
    seconds: float
    snapshots: tuple[Tensor, ...] = field(default=())


def init_theta(layout: ParamLayout, seed: int, template: Tensor | None = None) -> Tensor:
    """A fresh LoRA initialisation θ₀ drawn with ``seed`` (Hu et al. 2021's scheme).

    A factors ~ U(−1/√d_in, 1/√d_in) (peft's kaiming-uniform default), B factors = 0, and other
    trainable tensors (a head) ~ N(0, 0.02²) for weights and 0 for biases — different seeds give
    independent optima, related to each other by LoRA's factorisation symmetry.
    """
    g = torch.Generator().manual_seed(int(seed))
    parts = []
    for name, shape in zip(layout.names, layout.shapes):
        if ".lora_A." in name:
            bound = 1.0 / math.sqrt(shape[-1])
            parts.append((torch.rand(shape, generator=g) * 2 - 1) * bound)
        elif ".lora_B." in name or name.endswith("bias"):
            parts.append(torch.zeros(shape))
        else:
            parts.append(torch.randn(shape, generator=g) * 0.02)
    return layout.flatten({n: p for n, p in zip(layout.names, parts)})


def task_loss(fm: FunctionalModel, task: EncodedTask, theta: Tensor, batch) -> Tensor:
    """Mean negative log-likelihood of a batch at θ."""
    logits = task.class_logits(fm.forward_at(theta), batch)
    return F.cross_entropy(logits, batch["labels"])


def train_latent(
    fm: FunctionalModel,
    space: ParameterSpace,
    task: EncodedTask,
    init: Tensor,
    config: TrainConfig = TrainConfig(),
    *,
    loss_fn: Callable[[Tensor, dict, int], Tensor] | None = None,
    snapshot_every: int = 0,
    progress: bool = False,
    stage: str = "train",
    checkpoint: LoopCheckpoint | None = None,
) -> TrainResult:
    """Minimise the task's NLL over the latent of ``space`` with AdamW.

    ``loss_fn(w, batch, step)`` replaces the default loss (mean NLL at ``space.to_theta(w)``).
    Every ``snapshot_every`` steps a copy of w is kept (for SWAG / PCA bases). With a
    ``checkpoint``, the loop saves its state every ``checkpoint.every`` steps and resumes from a
    saved state of the same key (ending identical to an uninterrupted run); the checkpoint is
    left in place for the caller to clear once the result is stored.
    A NaN or Inf loss raises :class:`NumericalError` naming the stage and step, carrying the
    last finite latent; the last checkpoint is kept.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(int(config.seed))
    w = torch.nn.Parameter(init.detach().clone().float())
    opt = torch.optim.AdamW([w], lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(task) / config.batch_size)
    total = math.ceil(config.epochs * steps_per_epoch)
    if config.max_steps:
        total = min(total, config.max_steps)
    if loss_fn is None:
        def loss_fn(w_, batch, step):
            return task_loss(fm, task, space.to_theta(w_), batch)

    loop = StepLoop(task, config.batch_size, total, g)
    records, tensors = resume(checkpoint, {"w": w}, opt, loop)
    losses = list(records.get("losses", []))
    snaps = [tensors[f"snapshot.{i}"] for i in range(int(records.get("snapshots", 0)))]
    start = time.perf_counter() - float(records.get("seconds", 0.0))
    bar = tqdm(total=total, initial=loop.step, desc=stage, disable=not progress, leave=False)
    for batch in loop:
        step = loop.step
        loss = loss_fn(w, batch, step)
        if not torch.isfinite(loss):
            bar.close()
            raise NumericalError(
                f"{stage}: the loss became {loss.item()} at step {step}; {kept(checkpoint)} "
                "(lower the learning rate or check the data)",
                last_good=w.detach().clone(),
                step=step,
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_([w], config.grad_clip)
        opt.step()
        losses.append(loss.item())
        loop.completed()
        if snapshot_every and loop.step % snapshot_every == 0:
            snaps.append(w.detach().clone())
        bar.update(1)
        if progress:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        save_if_due(checkpoint, {"w": w}, opt, loop,
                    {"losses": losses, "snapshots": len(snaps), "seconds": time.perf_counter() - start, "stage": stage},
                    {f"snapshot.{i}": s for i, s in enumerate(snaps)})
    bar.close()
    return TrainResult(w.detach().clone(), tuple(losses), time.perf_counter() - start, tuple(snaps))


@torch.no_grad()
def evaluate_logits(fm: FunctionalModel, task: EncodedTask, theta: Tensor, batch_size: int = 64) -> Tensor:
    """Class logits [N, C] of every example of ``task`` at θ, in dataset order."""
    return over_batches(task, batch_size, lambda b: task.class_logits(fm.forward_at(theta), b))


def fine_tune(
    fm: FunctionalModel,
    space: ParameterSpace,
    task: EncodedTask,
    config: TrainConfig = TrainConfig(),
    *,
    init: Tensor | None = None,
    progress: bool = False,
    checkpoint: LoopCheckpoint | None = None,
    prefix_cache: bool = True,
) -> TrainResult:
    """One MAP optimum: fresh seeded init (full space) or the space's initial latent, then AdamW.

    With ``prefix_cache`` the hidden states below the first adapted layer are computed once
    (:func:`with_cached_prefix`) and every step runs the adapted layers only: the same optimum,
    several times faster when the adapters sit on the top layers."""
    fm, task = with_cached_prefix(fm, task, prefix_cache)
    if init is None:
        if space.kind == "full":
            init = init_theta(space.layout, config.seed)
        else:
            init = space.initial()
            g = torch.Generator().manual_seed(int(config.seed))
            init = init + 1e-3 * torch.randn(init.shape, generator=g) * (init == 0)
    return train_latent(fm, space, task, init, config, progress=progress,
                        stage=f"fine-tune seed {config.seed}", checkpoint=checkpoint)


def with_cached_prefix(fm: FunctionalModel, task: EncodedTask, enabled: bool = True):
    """``(fm, task)`` with the frozen prefix of the model cached for the task
    (:func:`~bayes_lora.lora.prefix.with_prefix_cache`); unchanged when ``enabled`` is False, the
    task is cached already, or the cache does not apply (every layer adapted, an architecture the
    suffix model does not reproduce: logged there)."""
    from .prefix import CachedTask, with_prefix_cache

    if not enabled or isinstance(task, CachedTask):
        return fm, task
    return with_prefix_cache(fm, task)


def head_names(layout: ParamLayout) -> tuple[str, ...]:
    """Trainable tensors that are not LoRA factors (e.g. the classification head)."""
    return tuple(n for n in layout.names if not is_lora_factor(n))


def fine_tune_anchors(
    fm: FunctionalModel,
    space: ParameterSpace,
    task: EncodedTask,
    seeds: list[int] | tuple[int, ...],
    config: TrainConfig = TrainConfig(),
    *,
    progress: bool = False,
    prefix_cache: bool = True,
) -> tuple[Tensor, list[TrainResult]]:
    """M independent optima, one per seed (fresh init and batch order each): [M, d] and results."""
    if len(seeds) < 1 or len(set(seeds)) != len(seeds):
        raise ValueError(f"anchors need distinct seeds, got {list(seeds)}")
    fm, task = with_cached_prefix(fm, task, prefix_cache)  # once for all anchors
    results = [fine_tune(fm, space, task, TrainConfig(**{**config.__dict__, "seed": int(s)}), progress=progress)
               for s in seeds]
    return torch.stack([r.latent for r in results]), results
