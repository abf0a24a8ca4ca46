"""MAP: one fine-tuned adapter, a point mass at θ̂."""
from __future__ import annotations

import torch
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


def _map_needs(o) -> tuple[Needs, ...]:
    if o["space"] == "projected":
        return (Needs.PROJECTED_MAP,)
    return () if o["train"] else (Needs.ANCHORS,)


@register("map", MapPosterior, choices={"space": ("full", "projected")}, needs=_map_needs)
def fit_map(ctx: FitContext, *, anchor: int = 0, train: bool = False, space: str = "full") -> MapPosterior:
    """MAP: the context's anchor ``anchor`` (or a fresh fine-tune with ``train=True``); with
    ``space="projected"``, the LoRA-XS MAP ``ctx.projected`` (its cores and head, at their rank),
    the point the projected Laplace, SWAG and VI fit around."""
    if space == "projected":
        pm = ctx.require_projected()
        return MapPosterior(ctx.fm.with_layout(pm.space.layout), pm.space.to_theta(pm.core),
                            options={"space": "projected", "rank": pm.space.ranks[0]},
                            info=FitInfo(float(pm.seconds)))
    if train or ctx.anchors is None:
        cfg = TrainConfig(**{**ctx.train_config.__dict__, "seed": ctx.seed})
        res = fine_tune(ctx.fm, FullSpace(ctx.fm.layout), ctx.train, cfg, progress=ctx.progress)
        return MapPosterior(ctx.fm, res.latent, options={"anchor": None}, info=FitInfo(res.seconds, res.losses))
    anchors = ctx.require_anchors(anchor + 1)
    return MapPosterior(ctx.fm, anchors[anchor], options={"anchor": anchor}, info=FitInfo(0.0))


class ZeroShotPosterior(MapPosterior):
    """A point mass at the base model: every LoRA B factor zero, so the adapters add nothing."""

    method = "zero_shot"


def _refuse_heads(names) -> None:
    from ..lora.params import is_lora_factor

    heads = [n for n in names if not is_lora_factor(n)]
    if heads:
        raise ValueError(f"zero_shot evaluates the base model, but θ holds a trained head ({heads[0]}, …) that "
                         "starts untrained: use a causal LM (model.kind = 'causal_lm') or lora.train_head = false "
                         "with a head the checkpoint already has")


def _check_zero_shot(options, model) -> None:
    from ..lora.params import trainable_parameter_names

    _refuse_heads(trainable_parameter_names(model))


@register("zero_shot", ZeroShotPosterior, check=_check_zero_shot)
def fit_zero_shot(ctx: FitContext) -> ZeroShotPosterior:
    """The base model before fine-tuning (θ with every LoRA B factor zero): the floor every method
    must beat. Refuses a θ with a trained head, whose starting values are no model at all."""
    layout = ctx.fm.layout
    _refuse_heads(layout.names)
    parts = layout.unflatten(layout.read(ctx.fm.model))
    theta = layout.flatten({n: torch.zeros_like(t) if ".lora_B." in n else t for n, t in parts.items()})
    return ZeroShotPosterior(ctx.fm, theta, options={}, info=FitInfo(0.0))
