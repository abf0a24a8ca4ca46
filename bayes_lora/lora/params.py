"""The LoRA parameter vector θ of a peft model, and functional evaluation at any θ.

θ is the concatenation of every *trainable* tensor of a peft model (LoRA ``lora_A`` / ``lora_B``
factors and the trainable copies of ``modules_to_save`` such as a classification head),
selected by ``requires_grad`` — what is trainable is what is inferred. Evaluation at θ goes
through :func:`torch.func.functional_call`, so the model is never edited in place and many θ
can be evaluated one after the other or under :func:`torch.vmap`.
"""
from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor, nn

from .device import module_device


def trainable_parameter_names(model: nn.Module) -> tuple[str, ...]:
    """Names of the parameters of ``model`` with ``requires_grad`` (its LoRA tensors and head)."""
    names = tuple(n for n, p in model.named_parameters() if p.requires_grad)
    if not names:
        raise ValueError(
            "the model has no trainable parameters; pass a peft LoRA model "
            "(peft.get_peft_model) whose adapters are trainable"
        )
    return names


def is_lora_factor(name: str) -> bool:
    """Whether a parameter name is a LoRA ``A`` or ``B`` factor (as opposed to a head copy)."""
    return ".lora_A." in name or ".lora_B." in name


@dataclass(frozen=True)
class ParamLayout:
    """The order, names and shapes of the tensors packed into the flat vector θ.

    Attributes
    ----------
    names: parameter names, as in ``model.named_parameters()``.
    shapes: their shapes, in the same order.
    """

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.shapes):
            raise ValueError("ParamLayout needs one shape per name")
        if len(set(self.names)) != len(self.names):
            raise ValueError("ParamLayout names must be unique")

    @classmethod
    def from_model(cls, model: nn.Module, names: Iterable[str] | None = None) -> ParamLayout:
        """Layout of ``names`` (default: every trainable parameter) of ``model``."""
        params = dict(model.named_parameters())
        names = tuple(names) if names is not None else trainable_parameter_names(model)
        missing = [n for n in names if n not in params]
        if missing:
            raise KeyError(f"the model has no parameters named {missing[:3]}")
        return cls(names, tuple(tuple(params[n].shape) for n in names))

    @cached_property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @cached_property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for k in self.numels:
            out.append(acc)
            acc += k
        return tuple(out)

    @property
    def dim(self) -> int:
        """D, the length of θ."""
        return sum(self.numels)

    def flatten(self, tensors: Mapping[str, Tensor]) -> Tensor:
        """Pack ``{name: tensor}`` (each with optional shared leading batch dims) into θ [..., D]."""
        parts = []
        for name, shape in zip(self.names, self.shapes):
            if name not in tensors:
                raise KeyError(f"flatten: missing tensor {name!r}")
            t = tensors[name]
            batch = t.shape[: t.dim() - len(shape)]
            if tuple(t.shape[len(batch):]) != shape:
                raise ValueError(f"flatten: {name!r} has shape {tuple(t.shape)}, expected {shape}")
            parts.append(t.reshape(*batch, -1))
        return torch.cat(parts, dim=-1)

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """Split θ [..., D] into ``{name: tensor[..., *shape]}`` (views, differentiable)."""
        if theta.shape[-1] != self.dim:
            raise ValueError(f"θ has length {theta.shape[-1]}, the layout needs {self.dim}")
        batch = theta.shape[:-1]
        chunks = torch.split(theta, list(self.numels), dim=-1)
        return {n: c.reshape(*batch, *s) for n, c, s in zip(self.names, chunks, self.shapes)}

    def read(self, model: nn.Module) -> Tensor:
        """The current θ of ``model`` (a detached copy, in host memory like every θ: see
        :mod:`bayes_lora.lora.device`)."""
        params = dict(model.named_parameters())
        return self.flatten({n: params[n].detach() for n in self.names}).clone().cpu()

    @torch.no_grad()
    def write_(self, model: nn.Module, theta: Tensor) -> None:
        """Copy θ into ``model``'s parameters in place (to hand the model to other libraries)."""
        params = dict(model.named_parameters())
        for name, value in self.unflatten(theta.detach()).items():
            params[name].copy_(value)

    def at_rank(self, rank: int) -> ParamLayout:
        """The same tensors with every LoRA factor at rank ``rank``: ``lora_A`` [r, in] →
        [rank, in], ``lora_B`` [out, r] → [out, rank]; the other tensors (a head) unchanged.
        The layout of a rank-``rank`` θ that the same peft modules evaluate
        (:meth:`FunctionalModel.with_layout`): a LoRA layer computes B(A(x)) whatever their rank."""
        if isinstance(rank, bool) or not isinstance(rank, numbers.Integral) or rank < 1:
            raise ValueError(f"a LoRA rank must be a positive integer, got {rank!r}")
        rank = int(rank)
        if not any(is_lora_factor(n) for n in self.names):
            raise ValueError("the layout has no LoRA factors (lora_A / lora_B) to change the rank of")
        shapes = []
        for name, shape in zip(self.names, self.shapes):
            if ".lora_A." in name:
                shape = (rank, *shape[1:])
            elif ".lora_B." in name:
                shape = (shape[0], rank, *shape[2:])
            shapes.append(tuple(shape))
        return ParamLayout(self.names, tuple(shapes))

    @property
    def lora_ranks(self) -> tuple[int, ...]:
        """The rank of every LoRA module (its ``lora_A`` factor's rows), in layout order."""
        return tuple(s[0] for n, s in zip(self.names, self.shapes) if ".lora_A." in n)

    def same_but_ranks(self, other: ParamLayout) -> bool:
        """Whether ``other`` holds the same tensors in the same order, differing at most in the
        LoRA factors' rank (the layout of another LoRA-XS rank over the same modules)."""
        if self.names != other.names:
            return False
        return all(a == b or (is_lora_factor(n) and len(a) == len(b) == 2
                              and (a[1] == b[1] if ".lora_A." in n else a[0] == b[0]))
                   for n, a, b in zip(self.names, self.shapes, other.shapes))

    def to_json(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes]}

    @classmethod
    def from_json(cls, obj: Mapping) -> ParamLayout:
        return cls(tuple(obj["names"]), tuple(tuple(s) for s in obj["shapes"]))

    def check_same(self, other: ParamLayout, what: str = "θ") -> None:
        """Raise a ValueError naming the first difference if ``other`` is not this layout."""
        if self == other:
            return
        mine, theirs = dict(zip(self.names, self.shapes)), dict(zip(other.names, other.shapes))
        only_a = sorted(set(mine) - set(theirs))
        only_b = sorted(set(theirs) - set(mine))
        if only_a or only_b:
            raise ValueError(
                f"{what}: the LoRA tensors differ (missing {only_a[:2]}, unexpected {only_b[:2]}); "
                "were they made with other target modules or another base model?"
            )
        bad = [n for n in mine if mine[n] != theirs[n]]
        if bad:
            raise ValueError(
                f"{what}: tensor {bad[0]!r} has shape {theirs[bad[0]]}, the run's model has "
                f"{mine[bad[0]]} (another LoRA rank or base model?)"
            )
        raise ValueError(f"{what}: the LoRA tensors are in another order")


def _logits(out) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


class FunctionalModel:
    """Evaluate a (frozen) model at any θ without touching its stored parameters.

    Parameters
    ----------
    model: a peft LoRA model (any ``nn.Module``); it is put in eval mode and its parameters
        are frozen (``requires_grad=False``) after the layout has been read.
    layout: which parameters θ holds; default: the model's trainable parameters.

    ``fm(theta, **inputs)`` returns the model's logits at θ [D]; ``fm.many(thetas, **inputs)``
    stacks the logits of θ [S, D] (a loop by default, ``vectorize=True`` uses ``torch.vmap``).
    θ and the tensor inputs are moved to the model's device first (differentiably; nothing moves
    on a CPU model), so θ may stay in host memory (:mod:`bayes_lora.lora.device`); the logits are
    on the model's device.
    """

    def __init__(self, model: nn.Module, layout: ParamLayout | None = None):
        self.layout = layout or ParamLayout.from_model(model)
        self.model = model.eval()
        for p in model.parameters():
            p.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        """Where the model's weights are (its first parameter's device)."""
        return module_device(self.model)

    def __call__(self, theta: Tensor, **inputs) -> Tensor:
        device = self.device
        if theta.device != device:
            theta = theta.to(device)
        inputs = {k: v.to(device) if isinstance(v, Tensor) and v.device != device else v for k, v in inputs.items()}
        params = self.layout.unflatten(theta)
        out = torch.func.functional_call(self.model, params, args=(), kwargs=inputs, strict=False)
        return _logits(out)

    def many(self, thetas: Tensor, *, vectorize: bool = False, **inputs) -> Tensor:
        """Logits at each θ of ``thetas`` [S, D], stacked to [S, ...]."""
        if vectorize:
            return torch.vmap(lambda th: self(th, **inputs), randomness="different")(thetas)
        return torch.stack([self(th, **inputs) for th in thetas])

    def with_layout(self, layout: ParamLayout) -> FunctionalModel:
        """This functional model evaluating θ of ``layout``: the same tensors at another LoRA
        rank (:meth:`ParamLayout.at_rank`, e.g. LoRA-XS cores of their own rank), on the same
        modules and weights (nothing is copied: ``functional_call`` hands each peft layer its
        factors, and B(A(x)) takes them at any rank). ``self`` when the layout is its own."""
        if layout == self.layout:
            return self
        known = self.__dict__.setdefault("_with_layouts", {})
        if layout in known:  # one model per layout: its probes (can_fold) are made once
            return known[layout]
        if not self.layout.same_but_ranks(layout):
            raise ValueError("with_layout: the layout must hold this model's θ tensors, differing only in "
                             "the LoRA factors' rank")
        other = copy.copy(self)
        for cached in ("_can_fold", "_with_layouts"):  # re-probed at the new shapes; its own
            other.__dict__.pop(cached, None)
        other.layout = layout
        known[layout] = other
        full = self.__dict__.get("full")
        if isinstance(full, FunctionalModel):  # a suffix model keeps its full model's layout in step
            other.full = full.with_layout(layout)
        return other

    def forward_at(self, theta: Tensor):
        """A ``forward(**inputs)`` closure at θ, as :meth:`EncodedTask.class_logits` expects."""
        return lambda **inputs: self(theta, **inputs)
