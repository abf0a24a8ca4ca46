"""Deep ensemble of independently fine-tuned LoRA optima (Lakshminarayanan et al. 2017).

The members are the anchors of the run: the same optima that anchor the curves.
"""
from __future__ import annotations

from torch import Tensor

from ..lora.params import FunctionalModel
from ..types import FitInfo
from .base import FitContext, Needs, Posterior
from .registry import register


class EnsemblePosterior(Posterior):
    """Equal-weight mixture of M point masses; sample s is member s mod M."""

    method = "ensemble"

    def __init__(self, fm: FunctionalModel, members: Tensor, **kw):
        super().__init__(fm, **kw)
        if members.dim() != 2 or members.shape[0] < 1:
            raise ValueError(f"ensemble members must be [M, D] with M ≥ 1, got {tuple(members.shape)}")
        self.members = members.detach().clone()
        self.default_num_samples = members.shape[0]
        self.num_atoms = members.shape[0]

    def sample_thetas(self, n: int, *, seed: int = 0) -> Tensor:
        idx = [i % self.members.shape[0] for i in range(n)]
        return self.members[idx].clone()

    def latent_samples(self, n: int, *, seed: int = 0):
        import torch

        return {"member": torch.tensor([i % self.members.shape[0] for i in range(n)])}

    def state(self):
        return {"members": self.members}, {}

    @classmethod
    def from_state(cls, fm, tensors, meta, ctx=None):
        return cls(fm, tensors["members"])


@register("ensemble", EnsemblePosterior, needs=(Needs.ANCHORS,))
def fit_ensemble(ctx: FitContext, *, members: int | None = None) -> EnsemblePosterior:
    """Deep ensemble: the first ``members`` anchors (default: all of them)."""
    anchors = ctx.require_anchors(members or 1)
    m = anchors.shape[0] if members is None else members
    return EnsemblePosterior(ctx.fm, anchors[:m], options={"members": m}, info=FitInfo(0.0))
