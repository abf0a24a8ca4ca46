"""MAP: one fine-tuned adapter, a point mass at θ̂."""
from __future__ import annotations

from torch import Tensor

from ..lora.params import FunctionalModel
from ..lora.spaces import FullSpace
from ..lora.train import TrainConfig, fine_tune
from ..types import FitInfo
from .base import FitContext, Needs, Posterior
from .registry import register


class MapPosterior(Posterior):
    """A point mass at one adapter θ̂: every sample is θ̂."""

    method = "map"
    default_num_samples = 1
    num_atoms = 1

    def __init__(self, fm: FunctionalModel, theta: Tensor, **kw):
        super().__init__(fm, **kw)
        self.theta = theta.detach().clone()

    def sample_thetas(self, n: int, *, seed: int = 0) -> Tensor:
        return self.theta.expand(n, -1).clone()

    def state(self):
        return {"theta": self.theta}, {}

    @classmethod
    def from_state(cls, fm, tensors, meta, ctx=None):
        return cls(fm, tensors["theta"])


@register("map", MapPosterior, needs=lambda o: () if o["train"] else (Needs.ANCHORS,))
def fit_map(ctx: FitContext, *, anchor: int = 0, train: bool = False) -> MapPosterior:
    """MAP: the context's anchor ``anchor`` (or a fresh fine-tune with ``train=True``)."""
    if train or ctx.anchors is None:
        cfg = TrainConfig(**{**ctx.train_config.__dict__, "seed": ctx.seed})
        res = fine_tune(ctx.fm, FullSpace(ctx.fm.layout), ctx.train, cfg, progress=ctx.progress)
        return MapPosterior(ctx.fm, res.latent, options={"anchor": None}, info=FitInfo(res.seconds, res.losses))
    anchors = ctx.require_anchors(anchor + 1)
    return MapPosterior(ctx.fm, anchors[anchor], options={"anchor": anchor}, info=FitInfo(0.0))
