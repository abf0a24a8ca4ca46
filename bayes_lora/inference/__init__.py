"""One inference layer: every method behind the :class:`Posterior` base, an explicit registry."""
from .base import (
    FitContext,
    Method,
    Needs,
    Posterior,
    ProjectedMAP,
    fit_projected_map,
    predict_probs,
)
from .registry import available_methods, fit, get_backend, load, register

__all__ = [
    "FitContext",
    "Method",
    "Needs",
    "Posterior",
    "ProjectedMAP",
    "available_methods",
    "fit",
    "fit_projected_map",
    "get_backend",
    "load",
    "predict_probs",
    "register",
]
