"""Many θ in one forward pass: samples folded into the batch, per-sample adapters.

A batch of B examples is repeated for S samples (sample-major: rows s·B … s·B + B − 1 belong to
sample s) and every linear layer whose weights are in θ (LoRA A and B factors, a trained head)
applies sample s's weights to sample s's rows with one batched matmul. The frozen base runs once
over S·B rows: larger matrix products and one Python pass instead of S.

    with PerSampleLinears(fm, thetas):          # θ [S, D]
        logits = task.class_logits(fm.model, fold(batch, S))     # [S·B, C]

Only models whose θ lives entirely in ``nn.Linear`` weights and biases can be folded, and only
when the adapted layers see nothing but the batch's own rows (:func:`can_fold` checks both: the
second by a probe, folded against the loop, once per functional model); anything else falls
back to the loop over samples, with the reason logged. DeBERTa-v2 (v3) with shared relative-
position keys applies its adapted query / key projections to the relative-position embeddings,
which belong to no row: inside :class:`PerSampleLinears` its attention bias is computed once per
sample, with that sample's adapters (``_BATCH_FREE_METHODS``).

The same per-sample adapters give **per-example gradients** in one backward pass: give example i
its own copy w_i of the latent (all equal to w), so that row block i of the batch sees only w_i;
then ∂/∂w_i of Σ_j v_jᵀ f(x_j; w_j) is v_iᵀ J_i, example i's own vector–Jacobian product. One
backward pass per cotangent column yields J_iᵀ v_i for every example of the batch at once
(:func:`per_example_vjp`), where ``torch.func.jacrev`` loops over the output rows (the CPU
attention backward has no vmap batching rule). The Laplace GGN and the GLM predictive use it.
A model that cannot fold gets the same numbers from a loop over its examples.
"""
from __future__ import annotations

import logging
import types
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .device import module_device
from .params import FunctionalModel, ParamLayout, _logits

logger = logging.getLogger(__name__)

#: methods (by class name) that apply adapted linear layers to tensors shared by every row of the
#: batch, and the positions of their arguments that do hold the batch's rows (first axis)
_BATCH_FREE_METHODS: dict[str, tuple[str, tuple[int, ...]]] = {
    # DeBERTa-v2 / v3: query_proj / key_proj of the relative-position embeddings (share_att_key)
    "DisentangledSelfAttention": ("disentangled_attention_bias", (0, 1)),
}


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
    """Whether ``fm``'s samples can be folded into one batch (:class:`PerSampleLinears`): every θ
    tensor is a weight or bias of an ``nn.Linear``, and a folded forward pass of a small probe
    input at two θ gives the loop's logits (an architecture that mixes rows or applies an
    adapted layer to tensors outside the batch fails it). The answer is kept on ``fm``; a False
    is logged with its reason."""
    known = fm.__dict__.get("_can_fold")
    if known is not None:
        return known
    reason = None
    if _owners(fm.model, fm.layout) is None:
        reason = "a θ tensor is not the weight or bias of an nn.Linear"
    else:
        try:
            reason = _fold_probe(fm)
        except Exception as e:  # noqa: BLE001 - any failure of the probe means: do not fold
            reason = f"a folded probe pass failed ({type(e).__name__}: {e})"
    if reason is not None:
        logger.warning("per-sample adapters off for %s (the loop over samples is used): %s",
                       type(fm.model).__name__, reason)
    fm.__dict__["_can_fold"] = reason is None
    return reason is None


def _probe_inputs(fm: FunctionalModel, rows: int, length: int) -> dict[str, Tensor]:
    """Model inputs of ``rows`` sequences of ``length`` tokens (token 0): what a suffix model of
    the prefix cache takes (``inputs_embeds`` too) or a full model takes (token ids)."""
    device = fm.device
    inputs = {"input_ids": torch.zeros(rows, length, dtype=torch.long, device=device),
              "attention_mask": torch.ones(rows, length, dtype=torch.long, device=device)}
    if getattr(fm.model, "prefix_layer", None) is not None:
        from .prefix import _hidden_size, _model_dtype

        g = torch.Generator().manual_seed(0)
        hidden = torch.randn(rows, length, _hidden_size(fm.model), generator=g)
        inputs["inputs_embeds"] = hidden.to(device, _model_dtype(fm.model))
    return inputs


def _probe_theta(fm: FunctionalModel, g: torch.Generator) -> Tensor:
    """θ of ``fm``'s layout to probe with: the model's stored tensors, and for a tensor the model
    stores at another shape (a LoRA factor of another rank, :meth:`FunctionalModel.with_layout`)
    small seeded Gaussian entries."""
    params = dict(fm.model.named_parameters())
    parts = {}
    for name, shape in zip(fm.layout.names, fm.layout.shapes):
        stored = params[name].detach()
        if tuple(stored.shape) == tuple(shape):
            parts[name] = stored.float().cpu()
        else:
            parts[name] = 0.02 * torch.randn(shape, generator=g)
    return fm.layout.flatten(parts)


@torch.no_grad()
def _fold_probe(fm: FunctionalModel, samples: int = 2, rows: int = 2, length: int = 3) -> str | None:
    """None if a folded pass at ``samples`` perturbed θ equals the loop on a probe input, else why not."""
    g = torch.Generator().manual_seed(0)
    theta = _probe_theta(fm, g)
    noise = torch.randn(samples, theta.shape[0], generator=g).to(theta)
    thetas = theta + 0.05 * noise * theta.abs().mean().clamp_min(1.0)
    inputs = _probe_inputs(fm, rows, length)
    modes = [(m, m.training) for m in fm.model.modules()]
    fm.model.eval()
    try:
        loop = torch.cat([fm(th, **inputs) for th in thetas])
        with PerSampleLinears(fm, thetas):
            folded = _logits(fm.model(**fold(inputs, samples)))
    finally:
        for m, t in modes:
            m.training = t
    if folded.shape != loop.shape:
        return f"the folded pass gave logits {tuple(folded.shape)}, the loop {tuple(loop.shape)}"
    scale = float(loop.abs().max().clamp_min(1.0))
    tol = (1e-4 if loop.dtype in (torch.float32, torch.float64) else 5e-2) * scale
    diff = float((folded.float() - loop.float()).abs().max())
    if not diff <= tol:
        return f"a folded probe pass differs from the loop by {diff:.3g} (> {tol:.3g}): rows of different samples mix"
    return None


def _per_sample_linear(self: nn.Linear, x: Tensor) -> Tensor:
    w, b = self._ps_weight, self._ps_bias  # [S, out, in] or None, [S, out] or None
    only = self.__dict__.get("_ps_only")
    if only is not None:  # one sample's weights for every row (a tensor outside the batch)
        y = x @ (self.weight if w is None else w[only]).T
        if b is not None:
            return y + b[only]
        return y if self.bias is None else y + self.bias
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


def _per_sample_method(owner: nn.Module, method: Callable, batch_args: tuple[int, ...],
                       linears: list[nn.Linear], samples: int) -> Callable:
    """``method`` of ``owner`` run once per sample: the arguments at ``batch_args`` cut into the
    samples' row blocks, the per-sample ``linears`` inside ``owner`` set to that sample alone."""

    def run(*args: Any, **kwargs: Any):
        rows = args[batch_args[0]].shape[0]
        if rows % samples:
            raise ValueError(f"a folded batch has {rows} rows, not a multiple of {samples} samples")
        k = rows // samples
        out = []
        try:
            for s in range(samples):
                for mod in linears:
                    mod._ps_only = s
                cut = list(args)
                for i in batch_args:
                    cut[i] = args[i][s * k:(s + 1) * k]
                out.append(method(*cut, **kwargs))
        finally:
            for mod in linears:
                mod.__dict__.pop("_ps_only", None)
        return torch.cat(out) if isinstance(out[0], Tensor) else out[0]

    return run


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
        self.fm_model = fm.model

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
        # θ may live in host memory (bayes_lora.lora.device): to the model's device, differentiably
        device = module_device(self.fm_model)
        params = {n: v.to(device) if v.device != device else v for n, v in params.items()}
        self.modules: list[nn.Linear] = []
        for name, (mod, attr) in self.owners.items():
            if mod not in self.modules:
                self.modules.append(mod)
                mod._ps_weight, mod._ps_bias, mod._ps_samples = None, None, s
                mod.forward = types.MethodType(_per_sample_linear, mod)
            setattr(mod, f"_ps_{attr}", params[name])
        # methods applying adapted layers to tensors outside the batch: once per sample
        self.methods: list[tuple[nn.Module, str]] = []
        patched = set(self.modules)
        for owner in self.fm_model.modules():
            spec = _BATCH_FREE_METHODS.get(type(owner).__name__)
            if spec is None:
                continue
            inside = [m for m in owner.modules() if m in patched]
            if inside:
                name, batch_args = spec
                setattr(owner, name, _per_sample_method(owner, getattr(owner, name), batch_args, inside, s))
                self.methods.append((owner, name))
        return self

    def __exit__(self, *exc: object) -> None:
        for mod in self.modules:
            for a in ("forward", "_ps_weight", "_ps_bias", "_ps_samples", "_ps_only"):
                mod.__dict__.pop(a, None)
        for owner, name in self.methods:
            owner.__dict__.pop(name, None)


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
    fm: the functional model; per-example adapters when it folds (:func:`can_fold`), else a loop
        over the batch's examples.
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
    if not can_fold(fm):
        return _per_example_vjp_loop(fm, space, task, batch, w, cotangents)
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


def _per_example_vjp_loop(fm: FunctionalModel, space, task, batch: dict, w: Tensor,
                          cotangents: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """:func:`per_example_vjp` for a model that cannot fold: one forward pass per example (the
    same numbers, B forward passes instead of one)."""
    index = batch["index"]
    grads, logits = [], []
    with torch.enable_grad():
        for i in range(index.shape[0]):
            one = task.subset(index[i:i + 1]).full_batch()
            wi = w.detach().clone().requires_grad_(True)
            f = task.class_logits(fm.forward_at(space.to_theta(wi)), one)  # [1, C]
            v = cotangents(f.detach())  # [1, C, K]
            k = v.shape[-1]
            grads.append(torch.stack([torch.autograd.grad(f, wi, v[..., j], retain_graph=j + 1 < k)[0]
                                      for j in range(k)]))
            logits.append(f.detach()[0])
    return torch.stack(grads), torch.stack(logits)


def per_example_jacobians(fm: FunctionalModel, space, task, batch: dict, w: Tensor) -> tuple[Tensor, Tensor]:
    """Jacobians J [B, C, d] of every example's class logits with respect to the latent ``w``, and
    the logits f [B, C]: :func:`per_example_vjp` with the C unit cotangents (C backward passes)."""

    def units(f: Tensor) -> Tensor:
        return torch.eye(f.shape[-1], dtype=f.dtype, device=f.device).expand(f.shape[0], -1, -1)

    return per_example_vjp(fm, space, task, batch, w, units)


__all__ = ["PerSampleLinears", "can_fold", "fold", "folded_class_logits", "per_example_jacobians", "per_example_vjp"]
