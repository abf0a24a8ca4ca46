"""Many θ in one forward pass: samples folded into the batch, per-sample adapters.

A batch of B examples is repeated for S samples (sample-major: rows s·B … s·B + B − 1 belong to
sample s) and every linear layer whose weights are in θ (LoRA A and B factors, a trained head)
applies sample s's weights to sample s's rows with one batched matmul. The frozen base runs once
over S·B rows: larger matrix products and one Python pass instead of S.

    with PerSampleLinears(fm, thetas):          # θ [S, D]
        logits = task.class_logits(fm.model, fold(batch, S))     # [S·B, C]

Only models whose θ lives entirely in ``nn.Linear`` weights and biases can be folded
(:func:`can_fold`); anything else falls back to the loop over samples.

The same per-sample adapters give **per-example gradients** in one backward pass: give example i
its own copy w_i of the latent (all equal to w), so that row block i of the batch sees only w_i;
then ∂/∂w_i of Σ_j v_jᵀ f(x_j; w_j) is v_iᵀ J_i, example i's own vector–Jacobian product. One
backward pass per cotangent column yields J_iᵀ v_i for every example of the batch at once
(:func:`per_example_vjp`), where ``torch.func.jacrev`` loops over the output rows (the CPU
attention backward has no vmap batching rule). The Laplace GGN and the GLM predictive use it.
"""
from __future__ import annotations

import types
from collections.abc import Callable
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

    def __init__(self, fm: FunctionalModel, thetas: Tensor | dict[str, Tensor]):
        owners = _owners(fm.model, fm.layout)
        if owners is None:
            raise ValueError("this model's θ is not made of nn.Linear weights only; use the loop over samples")
        self.thetas = thetas  # θ [S, D], or already split by tensor {name: [S, *shape]}
        self.owners = owners
        self.layout = fm.layout

    def __enter__(self) -> PerSampleLinears:  # noqa: PYI034
        if isinstance(self.thetas, dict):
            params = self.thetas
            missing = [n for n in self.layout.names if n not in params]
            if missing:
                raise ValueError(f"per-sample tensors are missing θ's {missing}")
            s = params[self.layout.names[0]].shape[0]
        else:
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


def per_example_vjp(
    fm: FunctionalModel,
    space,
    task,
    batch: dict,
    w: Tensor,
    cotangents: Callable[[Tensor], Tensor],
) -> tuple[Tensor, Tensor]:
    """Per-example vector–Jacobian products of the class logits with respect to a latent.

    Parameters
    ----------
    fm: the functional model (its θ must be foldable, :func:`can_fold`).
    space: the parameter space, θ = space.to_theta(w) (differentiable, batched; split by tensor
        with ``space.theta_tensors``).
    task: the task whose ``class_logits`` gives f [B, C] for ``batch``; its model input must hold
        each example's rows contiguously (one row per example, or C rows per multiple-choice
        question), as every task of bayes_lora does.
    batch: one batch of ``task``.
    w: the latent [d] at which to differentiate.
    cotangents: ``f [B, C] -> v [B, C, K]`` (computed from the detached logits), K vectors per
        example.

    Returns
    -------
    (G, f): G [B, K, d] with G[i, k] = J_iᵀ v[i, :, k], J_i = ∂f(x_i; w)/∂w, and the logits f [B, C].
    """
    b = batch["labels"].shape[0]
    with torch.enable_grad():
        ws = w.detach().expand(b, w.shape[-1]).clone().requires_grad_(True)  # w_i, one per example
        # split by tensor: tensors the space holds fixed carry no gradient, so the backward
        # stops at the lowest free one (a top-layer subnetwork skips the layers below)
        with PerSampleLinears(fm, space.theta_tensors(ws)):
            f = task.class_logits(fm.model, batch)  # row block i depends on w_i only
        if f.shape[0] != b:
            raise ValueError(f"per-example gradients need logits [B={b}, C], got {tuple(f.shape)}")
        v = cotangents(f.detach())
        k = v.shape[-1]
        rows = [torch.autograd.grad(f, ws, v[..., j], retain_graph=j + 1 < k)[0] for j in range(k)]
    return (rows[0].unsqueeze(1) if k == 1 else torch.stack(rows, dim=1)), f.detach()


def per_example_jacobians(fm: FunctionalModel, space, task, batch: dict, w: Tensor) -> tuple[Tensor, Tensor]:
    """Jacobians J [B, C, d] of every example's class logits with respect to the latent ``w``, and
    the logits f [B, C]: :func:`per_example_vjp` with the C unit cotangents (C backward passes)."""

    def units(f: Tensor) -> Tensor:
        return torch.eye(f.shape[-1], dtype=f.dtype).expand(f.shape[0], -1, -1)

    return per_example_vjp(fm, space, task, batch, w, units)


__all__ = ["PerSampleLinears", "can_fold", "fold", "folded_class_logits", "per_example_jacobians", "per_example_vjp"]
