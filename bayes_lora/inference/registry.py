"""An explicit registry of inference backends: method name → fit function and posterior class."""
from __future__ import annotations

import importlib
import inspect
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from torch import nn

from ..lora.params import FunctionalModel
from .base import FitContext, Needs, Posterior, read_saved


@dataclass(frozen=True)
class Backend:
    """A registered method: how to fit it and which class loads it back."""

    name: str
    fit: Callable[..., Posterior]
    posterior_cls: type[Posterior]
    doc: str = ""
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """The allowed values of the string options that name a variant (e.g. ``space``), so that a
    config can be checked before anything is trained."""
    requires: Callable[[Mapping[str, Any]], Iterable[Needs]] | None = None
    fingerprint_fn: Callable[[Mapping[str, Any]], str] | None = None
    check_fn: Callable[[Mapping[str, Any], nn.Module], None] | None = None

    def options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """``given`` over the defaults of ``fit``'s keyword options."""
        sig = inspect.signature(self.fit).parameters
        defaults = {n: p.default for n, p in sig.items() if p.kind == p.KEYWORD_ONLY and p.default is not p.empty}
        return {**defaults, **given}

    def needs(self, given: Mapping[str, Any]) -> frozenset[Needs]:
        """What a fit with options ``given`` takes from the context (:class:`Needs`): computed
        first by a caller that stages its work (the runner), and part of the fit's identity."""
        return frozenset(Needs(n) for n in self.requires(self.options(given))) if self.requires else frozenset()

    def fingerprint(self, given: Mapping[str, Any]) -> str:
        """What else a fit with options ``given`` depends on (a user model's source file), as a
        digest ('' when nothing)."""
        return self.fingerprint_fn(self.options(given)) if self.fingerprint_fn else ""

    def check(self, given: Mapping[str, Any], model: nn.Module) -> None:
        """Raise ValueError when a fit with options ``given`` cannot work on ``model`` (the peft
        model), found from shapes alone: run before anything is trained."""
        if self.check_fn:
            self.check_fn(self.options(given), model)


_REGISTRY: dict[str, Backend] = {}
#: module of each built-in backend, imported on first use (keeps ``import bayes_lora`` light)
_BUILTIN = {
    "map": "bayes_lora.inference.map",
    "zero_shot": "bayes_lora.inference.map",
    "ensemble": "bayes_lora.inference.ensemble",
    "mc_dropout": "bayes_lora.inference.mc_dropout",
    "laplace": "bayes_lora.inference.laplace",
    "swag": "bayes_lora.inference.swag",
    "vi": "bayes_lora.inference.vi",
    "curve": "bayes_lora.inference.curve",
    "pyro": "bayes_lora.inference.pyro_model",
}


def register(name: str, posterior_cls: type[Posterior], doc: str = "",
             choices: Mapping[str, type[Enum] | tuple[str, ...]] | None = None,
             needs: Iterable[Needs] | Callable[[Mapping[str, Any]], Iterable[Needs]] = (),
             fingerprint: Callable[[Mapping[str, Any]], str] | None = None,
             check: Callable[[Mapping[str, Any], nn.Module], None] | None = None):
    """Decorator registering ``fit(ctx, **options) -> Posterior`` under ``name`` (once).

    ``choices`` maps string options to their allowed values (a string ``Enum`` or a tuple).
    ``needs`` says what the fit takes from the context (:class:`~.base.Needs`): a fixed set, or a
    function of the options (defaults filled in). ``fingerprint(options)`` digests anything else
    the fit reads (a file named by an option). ``check(options, model)`` raises ValueError when the
    options cannot work on the model, from shapes alone (a caller runs it before any training)."""

    def deco(fn):
        if name in _REGISTRY and _REGISTRY[name].fit is not fn:
            raise ValueError(f"a backend named {name!r} is already registered")
        allowed = {k: tuple(m.value for m in v) if isinstance(v, type) and issubclass(v, Enum) else tuple(v)
                   for k, v in (choices or {}).items()}
        requires = needs if callable(needs) else (lambda _o, fixed=tuple(needs): fixed)
        _REGISTRY[name] = Backend(name, fn, posterior_cls, doc or (fn.__doc__ or "").strip().split("\n")[0], allowed,
                                  requires, fingerprint, check)
        return fn

    return deco


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise ValueError(f"unknown inference method {name!r}; known: {sorted(set(_BUILTIN) | set(_REGISTRY))}")
    return _REGISTRY[name]


def available_methods() -> list[str]:
    """Names of every method that can be fitted (built-in and registered)."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def fit(method: str, ctx: FitContext, **options) -> Posterior:
    """Fit ``method`` on the context's model and training task; the fit time goes in ``info``."""
    backend = get_backend(method)
    start = time.perf_counter()
    post = backend.fit(ctx, **options)
    seconds = time.perf_counter() - start
    if not post.info.seconds:
        post.info = replace(post.info, seconds=seconds)
    return post


def load(path: str | Path, fm: FunctionalModel, ctx: FitContext | None = None) -> Posterior:
    """Load a posterior saved by :meth:`Posterior.save`, checking it belongs to ``fm``'s layout (or,
    for LoRA-XS cores of their own rank, to the same tensors at another LoRA rank, which ``fm``'s
    modules evaluate: :meth:`~bayes_lora.lora.params.FunctionalModel.with_layout`)."""
    from ..lora.params import ParamLayout
    from ..types import FitInfo

    tensors, meta = read_saved(path)
    saved = ParamLayout.from_json(meta["layout"])
    if fm.layout.same_but_ranks(saved):  # LoRA-XS cores of their own rank: θ of another LoRA rank
        fm = fm.with_layout(saved)
    fm.layout.check_same(saved, what=f"posterior {path}")
    backend = get_backend(meta["method"])
    post = backend.posterior_cls.from_state(fm, tensors, meta["state"], ctx)
    post.options = meta.get("options", {})
    info = meta.get("info", {})
    post.info = FitInfo(info.get("seconds", 0.0), tuple(info.get("losses", ())), info.get("stats", {}))
    return post
