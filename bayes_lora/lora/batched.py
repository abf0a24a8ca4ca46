"""Many θ in one forward pass: samples folded into the batch, per-sample adapters.

A batch of B examples is repeated for S samples (sample-major: rows s·B … s·B + B − 1 belong to
sample s) and every linear layer whose weights are in θ (LoRA A and B factors, a trained head)
applies sample s's weights to sample s's rows with one batched matmul. The frozen base runs once
over S·B rows: larger matrix products and one Python pass instead of S.

    with PerSampleLinears(fm, thetas):          # θ [S, D]
        logits = task.class_logits(fm.model, fold(batch, S))     # [S·B, C]

Only models whose θ lives entirely in ``nn.Linear`` weights and biases can be folded
(:func:`can_fold`); anything else falls back to the loop over samples.
"""
from __future__ import annotations

import types
from typing import Any

import torch
from torch import Tensor, nn

from .params import FunctionalModel, ParamLayout


def _owners(model: nn.Module, layout: ParamLayout) -> dict[str, tuple[nn.Module, str]] | None:
    """``{θ name: (the nn.Linear holding it, "weight" | "bias")}``, or None if a θ tensor is not
    the weight or bias of an ``nn.Linear``."""
    modules = dict(model.named_modules())
    out = {}
    for name in layout.names:
        path, _, attr = name.rpartition(".")
        mod = modules.get(path)
        if not isinstance(mod, nn.Linear) or attr not in ("weight", "bias"):
            return None
        out[name] = (mod, attr)
    return out


def can_fold(fm: FunctionalModel) -> bool:
    """Whether every θ tensor of ``fm`` is a weight or bias of an ``nn.Linear``."""
    return _owners(fm.model, fm.layout) is not None


def _per_sample_linear(self: nn.Linear, x: Tensor) -> Tensor:
    w, b = self._ps_weight, self._ps_bias  # [S, out, in] or None, [S, out] or None
    s = self._ps_samples
    if x.shape[0] % s:
        raise ValueError(f"a folded batch has {x.shape[0]} rows, not a multiple of {s} samples")
    lead = x.shape[:-1]
    xs = x.reshape(s, -1, x.shape[-1])  # [S, rows·…, in]
    if w is None:
        y = xs @ self.weight.T
    else:
        y = torch.bmm(xs, w.transpose(1, 2))
    if b is not None:
        y = y + b[:, None, :]
    elif self.bias is not None:
        y = y + self.bias
    return y.reshape(*lead, y.shape[-1])


class PerSampleLinears:
    """Context manager: inside it, ``fm.model`` evaluates sample s of ``thetas`` [S, D] on the
    s-th block of rows of a folded batch (see :func:`fold`)."""

    def __init__(self, fm: FunctionalModel, thetas: Tensor):
        owners = _owners(fm.model, fm.layout)
        if owners is None:
            raise ValueError("this model's θ is not made of nn.Linear weights only; use the loop over samples")
        self.thetas = thetas
        self.owners = owners
        self.layout = fm.layout

    def __enter__(self) -> PerSampleLinears:  # noqa: PYI034
        s = self.thetas.shape[0]
        params = self.layout.unflatten(self.thetas)  # {name: [S, *shape]}
        self.modules: list[nn.Linear] = []
        for name, (mod, attr) in self.owners.items():
            if mod not in self.modules:
                self.modules.append(mod)
                mod._ps_weight, mod._ps_bias, mod._ps_samples = None, None, s
                mod.forward = types.MethodType(_per_sample_linear, mod)
            setattr(mod, f"_ps_{attr}", params[name])
        return self

    def __exit__(self, *exc: object) -> None:
        for mod in self.modules:
            for a in ("forward", "_ps_weight", "_ps_bias", "_ps_samples"):
                mod.__dict__.pop(a, None)


def fold(batch: Any, samples: int) -> Any:
    """``batch`` with every tensor repeated ``samples`` times along its first axis (sample-major)."""
    if isinstance(batch, Tensor):
        return batch.repeat(samples, *([1] * (batch.dim() - 1))) if batch.dim() else batch
    if isinstance(batch, dict):
        return {k: fold(v, samples) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(fold(v, samples) for v in batch)
    return batch


@torch.no_grad()
def folded_class_logits(fm: FunctionalModel, task, batch: dict, thetas: Tensor) -> Tensor:
    """Class logits [S, B, C] of ``batch`` at every θ of ``thetas`` [S, D] in one forward pass."""
    s = thetas.shape[0]
    b = batch["labels"].shape[0]
    with PerSampleLinears(fm, thetas):
        logits = task.class_logits(fm.model, fold(batch, s))
    return logits.reshape(s, b, *logits.shape[1:])


__all__ = ["PerSampleLinears", "can_fold", "fold", "folded_class_logits"]
