"""Pyro models over a few latents (curve position t, offset z) and their declarative specs."""
from .curve import CurveModel, offset_basis
from .likelihood import TaskLogits
from .spec import CurvePosteriorSpec, CurveSpec, OffsetSpec, Prior

__all__ = ["CurveModel", "CurvePosteriorSpec", "CurveSpec", "OffsetSpec", "Prior", "TaskLogits", "offset_basis"]
