"""Training a Bézier curve between LoRA optima (LoRA-Curve, 2026; Garipov et al. 2018).

Objective per step, for a minibatch (x, y):

    L(φ(t) + ε) − λ · JS(p(·|x, φ(t_1)), …, p(·|x, φ(t_M))),   t, t_m ~ U(0, 1)

with ε a flat-minima perturbation (Gaussian noise of scale σ, or a SAM step of size ρ along the
normalised gradient) and JS the generalised Jensen–Shannon divergence H[mean_m p_m] − mean_m H[p_m]
(the mutual information of the points' average). The loss point doubles as t_1 and the JS term is
computed on the first ``js_batch`` examples only. With ``js_grad="first"`` (the default) the other
M − 1 points are evaluated without autograd and the term is weighted by M: JS is symmetric and the
t_m are exchangeable, so E[M · ∇_φ JS(p_1, sg(p_2), …)] = E[∇_φ JS(p_1, …, p_M)] (up to the loss
point's small perturbation) — the same expected gradient for one forward pass without a backward
per extra point, so a curve step costs little more than a plain LoRA step.

With ``t_sampling="example"`` every example of the minibatch gets its own t (and its own
perturbation), evaluated in one forward pass through per-example adapters
(:class:`~bayes_lora.lora.batched.PerSampleLinears`): the same expected objective with a
lower-variance estimate of the loss gradient than one t per step (``"step"``, the default; how the
two compare on the default model is in docs/tuning.md). Path analysis evaluates loss and accuracy
on a grid of t along any path.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from ..options import check_options, option
from ..types import EncodedTask
from .batched import PerSampleLinears, can_fold
from .checkpoint import LoopCheckpoint, StepLoop, kept, resume, save_if_due
from .curves import BezierCurve, linear_path
from .params import FunctionalModel
from .spaces import ParameterSpace
from .train import NumericalError, with_cached_prefix

PERTURBATIONS = ("none", "gaussian", "sam")
JS_GRADS = ("first", "all")
T_SAMPLINGS = ("example", "step")


@dataclass(frozen=True)
class CurveConfig:
    """Options of curve training; the defaults work on the default model (MiniLM, SST-2).

    Attributes
    ----------
    degree: Bézier degree n of every segment (n − 1 bends per segment).
    anchored: joints fixed at the optima (True) or every control point trained (False).
    epochs: passes over the training set.
    batch_size: examples per step.
    lr: Adam learning rate of the control points.
    js_weight: λ, weight of the Jensen–Shannon diversity term (0 switches it off).
    js_points: M ≥ 2 points on the curve compared by the JS term.
    js_batch: examples of each batch used for the JS term.
    js_grad: "first" (gradient through the loss point only, the term weighted by M: the same
        expected gradient at less cost) or "all" (backpropagate through every point).
    t_sampling: "step" (one t per minibatch) or "example" (a t and a perturbation per example,
        through per-example adapters; the model's θ must be made of linear layers).
    perturbation: "none", "gaussian" (θ + σ·ε) or "sam" (θ + ρ·g/‖g‖).
    sigma: scale of the Gaussian perturbation.
    rho: size of the SAM step.
    init_noise: std of the noise added to the initial (straight-line) bends.
    seed: seeds t draws, noise and batch order.
    max_steps: stop after this many steps (None or 0: no limit).
    grad_clip: clip the gradient norm of the control points (None: no clipping).
    """

    degree: int = option(2, ge=1, le=8)
    anchored: bool = option(True)
    epochs: float = option(2.0, gt=0)
    batch_size: int = option(16, ge=1)
    # chosen on the SST-2 dev split (docs/tuning.md); larger steps over-fit the bends
    lr: float = option(2.5e-4, gt=0)
    js_weight: float = option(0.05, ge=0)
    js_points: int = option(2, ge=2)
    js_batch: int = option(4, ge=1)
    js_grad: str = option("first", choices=JS_GRADS,
                          doc="'first': backpropagate the JS term through the loss point only (weighted by M, "
                              "the same expected gradient, cheaper); 'all': through every point")
    t_sampling: str = option("step", choices=T_SAMPLINGS,
                             doc="'step': one t per minibatch; 'example': every example of a minibatch its own t "
                                 "(per-example adapters)")
    perturbation: str = option("gaussian", choices=PERTURBATIONS)
    sigma: float = option(1e-3, ge=0)
    rho: float = option(0.05, ge=0)
    init_noise: float = option(0.0, ge=0)
    seed: int = option(0, ge=0, config=False, doc="the run's seed")
    max_steps: int | None = option(None, ge=0, doc="0 or unset = no limit")
    grad_clip: float | None = option(1.0, gt=0, doc="gradient-norm clipping; unset = none")

    def __post_init__(self):
        check_options(self)


@dataclass(frozen=True)
class CurveTrainResult:
    """The trained curve, the objective per step, the JS term per step and the time spent."""

    curve: BezierCurve
    losses: tuple[float, ...]
    js: tuple[float, ...]
    seconds: float
    config: CurveConfig = field(default_factory=CurveConfig)


def js_divergence(probs: Tensor) -> Tensor:
    """Generalised Jensen–Shannon divergence of M distributions [M, B, C], averaged over B."""
    mean = probs.mean(0)
    h_mean = -(mean * mean.clamp_min(1e-12).log()).sum(-1)
    h_each = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean(0)
    return (h_mean - h_each).mean()


def _slice_batch(task: EncodedTask, batch: dict, k: int) -> dict:
    """The first ``k`` examples of ``batch`` as a batch of the task (any task kind: classification
    rows, multiple-choice [B·C] rows, cached hidden states)."""
    return task.subset(batch["index"][:k]).full_batch()


def train_curve(
    fm: FunctionalModel,
    space: ParameterSpace,
    task: EncodedTask,
    anchors: Tensor,
    config: CurveConfig = CurveConfig(),
    *,
    curve: BezierCurve | None = None,
    progress: bool = False,
    checkpoint: LoopCheckpoint | None = None,
    prefix_cache: bool = True,
) -> CurveTrainResult:
    """Train a curve through ``anchors`` [K+1, d] (latents of ``space``) on ``task``.

    With ``prefix_cache`` the frozen layers below the first adapted one run once for the task
    (:func:`~bayes_lora.lora.train.with_cached_prefix`), not at every step.

    With a ``checkpoint`` the loop saves its state every ``checkpoint.every`` steps and resumes
    from a saved state of the same key, ending identical to an uninterrupted run. A NaN or Inf
    objective raises :class:`NumericalError` naming the step; the last checkpoint is kept.
    """
    fm, task = with_cached_prefix(fm, task, prefix_cache)
    from tqdm.auto import tqdm

    curve = curve or BezierCurve(
        anchors, degree=config.degree, anchored=config.anchored, init_noise=config.init_noise, seed=config.seed
    )
    params = [p for p in curve.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the curve has nothing to train (degree 1 and anchored): use degree ≥ 2")
    if config.t_sampling == "example" and not can_fold(fm):
        raise ValueError("curve t_sampling='example' needs per-example adapters, and this model's θ is not made "
                         "of nn.Linear weights only; use t_sampling='step'")
    opt = torch.optim.Adam(params, lr=config.lr)
    g = torch.Generator().manual_seed(int(config.seed))
    total = math.ceil(config.epochs * math.ceil(len(task) / config.batch_size))
    if config.max_steps:
        total = min(total, config.max_steps)
    loop = StepLoop(task, config.batch_size, total, g)
    named = {f"param.{i}": p for i, p in enumerate(params)}
    records, _ = resume(checkpoint, named, opt, loop)
    losses, js_vals = list(records.get("losses", [])), list(records.get("js", []))
    start = time.perf_counter() - float(records.get("seconds", 0.0))
    bar = tqdm(total=total, initial=loop.step, desc="curve", disable=not progress, leave=False)
    for batch in loop:
        step = loop.step
        points = config.js_points if config.js_weight > 0 else 1
        if config.t_sampling == "example":
            ts = torch.rand(points, batch["labels"].shape[0], generator=g)
        else:
            ts = torch.rand(points, generator=g)
        loss, js, objective = curve_objective(fm, space, task, curve, batch, ts, config, g)
        if not torch.isfinite(objective):
            bar.close()
            raise NumericalError(
                f"curve training: the objective became {objective.item()} at step {step}; {kept(checkpoint)} "
                "(lower lr or sigma)",
                last_good=curve.control_points().detach().clone(),
                step=step,
            )
        opt.zero_grad(set_to_none=True)
        objective.backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        losses.append(loss.item())
        js_vals.append(js.item())
        loop.completed()
        bar.update(1)
        save_if_due(checkpoint, named, opt, loop,
                    {"losses": losses, "js": js_vals, "seconds": time.perf_counter() - start, "stage": "curve"})
    bar.close()
    return CurveTrainResult(curve, tuple(losses), tuple(js_vals), time.perf_counter() - start, config)


def curve_objective(
    fm: FunctionalModel,
    space: ParameterSpace,
    task: EncodedTask,
    curve: BezierCurve,
    batch: dict,
    ts: Tensor,
    config: CurveConfig,
    g: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step's (loss, JS, objective) at curve positions ``ts`` (the loss point is ``ts[0]``).

    ``ts`` is [M] (one t per point for the whole batch) or [M, B] (every example its own t per
    point, evaluated through per-example adapters). The objective is ``loss − λ·JS`` with
    ``js_grad="all"`` and ``loss − λ·M·JS(p_1, sg(p_2), …)`` with ``js_grad="first"`` (the other
    points without autograd): the same expected gradient.
    """
    per_example = ts.dim() == 2
    theta = space.to_theta(curve(ts[0]))  # [D], or [B, D] per example
    theta_p = _perturb(fm, task, theta, batch, config, g)
    logits = _logits_at(fm, task, theta_p, batch, per_example)
    loss = F.cross_entropy(logits, batch["labels"])
    if config.js_weight == 0 or len(ts) < 2:
        return loss, torch.zeros(()), loss
    sub = _slice_batch(task, batch, config.js_batch)
    k = sub["labels"].shape[0]
    probs = [logits[:k].softmax(-1)]
    first = config.js_grad == "first"
    with torch.set_grad_enabled(not first):
        for t_m in ts[1:]:
            th_m = space.to_theta(curve(t_m[:k] if per_example else t_m))
            probs.append(_logits_at(fm, task, th_m, sub, per_example).softmax(-1))
    js = js_divergence(torch.stack(probs))
    weight = config.js_weight * (len(ts) if first else 1)
    return loss, js, loss - weight * js


def _logits_at(fm: FunctionalModel, task: EncodedTask, theta: Tensor, batch: dict, per_example: bool) -> Tensor:
    """Class logits of ``batch`` at θ [D], or with example i at θ[i] ([B, D], per-example adapters)."""
    if not per_example:
        return task.class_logits(fm.forward_at(theta), batch)
    with PerSampleLinears(fm, theta):
        return task.class_logits(fm.model, batch)


def _perturb(fm, task, theta: Tensor, batch, config: CurveConfig, g: torch.Generator) -> Tensor:
    """θ + ε: Gaussian noise, or a SAM step along the normalised gradient of the batch loss (of
    each example's own loss, row by row, when θ is [B, D] per example)."""
    if config.perturbation == "gaussian" and config.sigma > 0:
        return theta + config.sigma * torch.randn(theta.shape, generator=g)
    if config.perturbation == "sam" and config.rho > 0:
        th = theta.detach().requires_grad_(True)
        inner = F.cross_entropy(_logits_at(fm, task, th, batch, theta.dim() == 2), batch["labels"])
        (grad,) = torch.autograd.grad(inner, th)
        return theta + config.rho * grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return theta


@dataclass(frozen=True)
class PathEval:
    """Loss and accuracy at each t of a path, and its barrier max_t L(t) − max(L(0), L(1))."""

    t: tuple[float, ...]
    loss: tuple[float, ...]
    accuracy: tuple[float, ...]

    @property
    def barrier(self) -> float:
        return max(self.loss) - max(self.loss[0], self.loss[-1])

    def to_dict(self) -> dict:
        return {"t": list(self.t), "loss": list(self.loss), "accuracy": list(self.accuracy), "barrier": self.barrier}


@torch.no_grad()
def evaluate_path(
    fm: FunctionalModel, space: ParameterSpace, task: EncodedTask, points: Tensor, t: Tensor, *, batch_size: int = 64
) -> PathEval:
    """Mean NLL and accuracy of ``task`` at each latent of ``points`` [T, d] (one per t)."""
    losses, accs = [], []
    for w in points:
        theta = space.to_theta(w)
        nll, correct = 0.0, 0
        for batch in task.batches(batch_size, by_length=True):  # sums: the order does not matter
            logits = task.class_logits(fm.forward_at(theta), batch)
            nll += F.cross_entropy(logits, batch["labels"], reduction="sum").item()
            correct += (logits.argmax(-1) == batch["labels"]).sum().item()
        losses.append(nll / len(task))
        accs.append(correct / len(task))
    return PathEval(tuple(float(x) for x in t), tuple(losses), tuple(accs))


def linear_and_curve_paths(
    fm: FunctionalModel,
    space: ParameterSpace,
    task: EncodedTask,
    curve: BezierCurve,
    *,
    grid: int = 11,
    batch_size: int = 64,
) -> dict[str, PathEval]:
    """Loss/accuracy along the straight line between the curve's end points and along the curve."""
    t = torch.linspace(0, 1, grid)
    with torch.no_grad():
        joints = curve.joints.detach()
        line = linear_path(joints[0], joints[-1], t)
        along = curve(t).detach()
    return {
        "linear": evaluate_path(fm, space, task, line, t, batch_size=batch_size),
        "curve": evaluate_path(fm, space, task, along, t, batch_size=batch_size),
    }
