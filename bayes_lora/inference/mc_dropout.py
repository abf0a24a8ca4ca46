"""MC dropout on the LoRA path (BayesLoRA, v1 of arXiv 2506.22809; Gal & Ghahramani 2016).

peft applies dropout to the input of every LoRA branch, ΔW x → B A dropout_p(x). BayesLoRA keeps
that dropout on at prediction and averages S stochastic passes at the fine-tuned adapter θ̂:

    p(y | x) ≈ (1/S) Σ_s softmax f(x; θ̂, mask_s),      mask_s ~ Bernoulli(1 − p), scaled 1/(1 − p)

Only the LoRA dropout modules are switched to training mode (the frozen backbone's own dropout
stays off), with rate ``p`` whatever rate the model was built with (a model built with
``lora_dropout=0`` holds ``nn.Identity`` there, which is swapped for ``nn.Dropout(p)``); the
model is restored afterwards. Sample s runs with the global RNGs seeded by ``seed + s`` inside
:func:`~bayes_lora.lora.rng.seeded`, so the same seed gives the same masks and the caller's RNG
state is untouched.

There are no LoRA vectors to sample: the randomness is in the activations, so
:meth:`MCDropoutPosterior.sample_thetas` raises.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from ..lora.params import FunctionalModel
from ..lora.rng import seeded
from ..types import EncodedTask, FitInfo, Prediction, over_batches
from .base import FitContext, Needs, Posterior, choose_on_dev
from .registry import register


def lora_dropout_modules(model: nn.Module) -> list[tuple[nn.ModuleDict, str]]:
    """(ModuleDict, adapter name) of every peft LoRA dropout of ``model``."""
    out = []
    for module in model.modules():
        drop = getattr(module, "lora_dropout", None)
        if isinstance(drop, nn.ModuleDict):
            out.extend((drop, key) for key in drop)
    return out


@contextlib.contextmanager
def lora_dropout(model: nn.Module, p: float) -> Iterator[int]:
    """Within the block, every LoRA dropout of ``model`` is an active ``nn.Dropout(p)``
    (``nn.Identity`` when p = 0); the original modules and their training flags come back on
    exit. Yields the number of dropout sites."""
    if not 0 <= p < 1:
        raise ValueError(f"dropout rate p must be in [0, 1), got {p}")
    sites = lora_dropout_modules(model)
    if not sites:
        raise ValueError("the model has no LoRA dropout modules (lora_dropout); is it a peft LoRA model?")
    saved = [(holder, key, holder[key], holder[key].training) for holder, key in sites]
    try:
        for holder, key, _, _ in saved:
            holder[key] = nn.Dropout(p).train() if p > 0 else nn.Identity().eval()
        yield len(saved)
    finally:
        for holder, key, old, training in saved:
            holder[key] = old
            old.train(training)


class MCDropoutPosterior(Posterior):
    """S stochastic forward passes at θ̂ with LoRA dropout of rate ``p`` kept on.

    Attributes
    ----------
    theta: the adapter θ̂ [D] the passes are made at.
    p: the LoRA dropout rate used at prediction.
    """

    method = "mc_dropout"
    default_num_samples = 16

    def __init__(self, fm: FunctionalModel, theta: Tensor, p: float = 0.1, **kw):
        super().__init__(fm, **kw)
        if not 0 <= p < 1:
            raise ValueError(f"dropout rate p must be in [0, 1), got {p}")
        self.theta = theta.detach().clone()
        self.p = float(p)

    def sample_thetas(self, n: int, *, seed: int = 0) -> Tensor:
        raise NotImplementedError(
            "mc_dropout samples dropout masks on the LoRA activations, not LoRA vectors θ; "
            "use predict() for its samples (theta holds the single adapter)"
        )

    @torch.no_grad()
    def predict(
        self, task: EncodedTask, *, num_samples: int | None = None, seed: int = 0, batch_size: int = 64
    ) -> Prediction:
        """Probabilities [S, N, C]: pass s over the whole task with masks seeded by ``seed + s``."""
        n = self._n(num_samples)
        forward = self.fm.forward_at(self.theta)
        out = []
        with lora_dropout(self.fm.model, self.p):
            for s in range(n):
                with seeded(int(seed) + s):
                    out.append(over_batches(task, batch_size, lambda b: task.class_logits(forward, b).softmax(-1)))
        return Prediction(torch.stack(out), task.labels)

    def state(self):
        return {"theta": self.theta}, {"p": self.p}

    @classmethod
    def from_state(cls, fm, tensors, meta, ctx=None):
        return cls(fm, tensors["theta"], p=meta["p"])


#: ``p="dev"``: the candidate dropout rates (0.01 is nearly the adapter θ̂ alone)
DEV_P_GRID = (0.01, 0.05, 0.1, 0.2, 0.3)


def _check_p(p) -> None:
    if p == "dev":
        return
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise ValueError(f"mc_dropout: p must be a rate in [0, 1) or 'dev' (chosen on the dev split), got {p!r}")


@register("mc_dropout", MCDropoutPosterior,
          needs=lambda o: (Needs.ANCHORS, *((Needs.DEV,) if o.get("p") == "dev" else ())),
          check=lambda o, _model: _check_p(o["p"]))
def fit_mc_dropout(ctx: FitContext, *, p: float | str = 0.1, anchor: int = 0) -> MCDropoutPosterior:
    """MC dropout (BayesLoRA): LoRA dropout of rate ``p`` on at prediction, at anchor ``anchor``.
    ``p="dev"``: the rate of :data:`DEV_P_GRID` whose predictive has the lowest NLL on ``ctx.dev``
    (the task's dev split)."""
    _check_p(p)
    theta = ctx.require_anchors(anchor + 1)[anchor]
    options = {"p": p, "anchor": anchor}
    if p != "dev":
        return MCDropoutPosterior(ctx.fm, theta, p=p, options=options, info=FitInfo(0.0))
    dev = ctx.require_dev("mc_dropout: p='dev'")
    posts = [MCDropoutPosterior(ctx.fm, theta, p=q, options=options) for q in DEV_P_GRID]
    best, record = choose_on_dev(posts, DEV_P_GRID, dev, parameter="p", prefer_low=True, reference=0.1,
                                 reference_name="default", seed=ctx.seed)
    post = posts[best]
    post.info = FitInfo(record["seconds"], (), {"dev_choice": record})
    return post
