"""LoRA parameter spaces: flatten, functional evaluation, projected subspaces, Bézier curves."""
from .curves import BezierCurve, bernstein_matrix, linear_path
from .params import FunctionalModel, ParamLayout, is_lora_factor, trainable_parameter_names
from .spaces import (
    AffineSpace,
    FullSpace,
    MaskedSpace,
    ParameterSpace,
    ProjectedSpace,
    orthonormal_span,
    pca_basis,
    random_basis,
)

__all__ = [
    "AffineSpace",
    "BezierCurve",
    "FullSpace",
    "FunctionalModel",
    "MaskedSpace",
    "ParamLayout",
    "ParameterSpace",
    "ProjectedSpace",
    "bernstein_matrix",
    "is_lora_factor",
    "linear_path",
    "orthonormal_span",
    "pca_basis",
    "random_basis",
    "trainable_parameter_names",
]
