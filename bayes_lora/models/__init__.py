"""Pyro models over LoRA subspaces: the built-in curve model (position t, offset z), its
declarative spec, and the likelihood call a user-written Pyro model makes."""
from .curve import CurveModel, offset_basis
from .likelihood import TaskLogits
from .spec import CurvePosteriorSpec, OffsetSpec, Prior
from .user import LoRALikelihood, model_sites

__all__ = ["CurveModel", "CurvePosteriorSpec", "LoRALikelihood", "OffsetSpec", "Prior", "TaskLogits",
           "model_sites", "offset_basis"]
