"""One inference layer: every method behind the :class:`Posterior` base, an explicit registry."""
from .base import FitContext, Method, Posterior, predict_probs
from .registry import available_methods, fit, get_backend, load, register

__all__ = [
    "FitContext",
    "Method",
    "Posterior",
    "available_methods",
    "fit",
    "get_backend",
    "load",
    "predict_probs",
    "register",
]
