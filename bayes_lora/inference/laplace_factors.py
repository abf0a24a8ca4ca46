"""The compact, savable forms of a Laplace posterior's covariance Σ (:mod:`bayes_lora.inference.laplace`).

Each :class:`GaussianFactor` maps standard normal draws to draws of N(0, Σ) (``scale``), gives the
GLM predictive's logit covariance J Σ Jᵀ (``square_form``) and saves / loads itself as tensors plus
JSON — without a live laplace-torch object:

* :class:`DenseFactor`: the Cholesky factor of a dense precision;
* :class:`DiagFactor`: posterior variances;
* :class:`KronFactor`: laplace-torch's eigendecomposed Kronecker precision (K-FAC);
* :class:`LowRankFactor`: λ⁻¹(I − U diag(l/(l + λ)) Uᵀ), a low-rank GGN plus an isotropic prior.

``from_precision`` builds each from laplace-torch's posterior precision, adding jitter (with a
warning) when a dense, diagonal or Kronecker precision is not positive definite.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import ClassVar, TypeVar

import torch
from torch import Tensor

__all__ = [
    "FACTORS",
    "JITTER_TRIES",
    "DenseFactor",
    "DiagFactor",
    "GaussianFactor",
    "KronFactor",
    "LowRankFactor",
]

T = TypeVar("T")

#: how many times jitter (growing ×10 from 1e-6 · mean diagonal) is added to a precision that is
#: not positive definite before giving up
JITTER_TRIES = 5


class GaussianFactor:
    """The covariance Σ of N(ŵ, Σ) in a compact form.

    Subclasses implement ``scale`` (z ~ N(0, I) → Σ^{1/2} z ~ N(0, Σ)), ``square_form``
    (J Σ Jᵀ per example) and their persistence.
    """

    structure: ClassVar[str]
    dim: int

    def scale(self, z: Tensor) -> Tensor:
        """Map standard normal draws z [n, d] to draws [n, d] with covariance Σ."""
        raise NotImplementedError

    def square_form(self, jac: Tensor) -> Tensor:
        """J Σ Jᵀ [B, C, C] for Jacobians J [B, C, d]."""
        raise NotImplementedError

    def tensors(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def meta(self) -> dict:
        return {}

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Tensor], meta: Mapping) -> GaussianFactor:
        raise NotImplementedError


class DenseFactor(GaussianFactor):
    """Σ = (L Lᵀ)⁻¹ from the lower Cholesky factor L [d, d] of the precision (float64)."""

    structure = "full"

    def __init__(self, precision_tril: Tensor):
        self.precision_tril = precision_tril.to(torch.float64)
        self.dim = precision_tril.shape[-1]

    def scale(self, z: Tensor) -> Tensor:
        # Lᵀ x = z  ⇒  cov x = L⁻ᵀ L⁻¹ = (L Lᵀ)⁻¹
        x = torch.linalg.solve_triangular(self.precision_tril.T, z.T.to(torch.float64), upper=True)
        return x.T.to(z.dtype)

    def square_form(self, jac: Tensor) -> Tensor:
        b, c, d = jac.shape
        v = torch.linalg.solve_triangular(
            self.precision_tril, jac.reshape(b * c, d).T.to(torch.float64), upper=False
        ).reshape(d, b, c)
        return torch.einsum("dbc,dbk->bck", v, v).to(jac.dtype)

    def tensors(self) -> dict[str, Tensor]:
        return {"precision_tril": self.precision_tril}

    @classmethod
    def from_tensors(cls, tensors, meta):
        return cls(tensors["precision_tril"])

    @classmethod
    def from_precision(cls, precision: Tensor) -> tuple[DenseFactor, float]:
        """Cholesky-factor a dense precision, with jitter if needed; returns (factor, jitter)."""
        p = precision.detach().to(torch.float64)
        p = (p + p.T) / 2
        eye = torch.eye(p.shape[0], dtype=p.dtype)

        def make(eps: float) -> Tensor:
            tril, info = torch.linalg.cholesky_ex(p + eps * eye)
            if int(info) != 0 or not torch.isfinite(tril).all():
                raise _NotPositiveDefinite
            return tril

        tril, eps = _with_jitter(make, float(p.diagonal().mean()), "dense")
        return cls(tril), eps


class DiagFactor(GaussianFactor):
    """Σ = diag(v) with posterior variances v [d] (float64)."""

    structure = "diag"

    def __init__(self, variance: Tensor):
        self.variance = variance.to(torch.float64)
        self.dim = variance.shape[-1]

    def scale(self, z: Tensor) -> Tensor:
        return (z.to(torch.float64) * self.variance.sqrt()).to(z.dtype)

    def square_form(self, jac: Tensor) -> Tensor:
        j = jac.to(torch.float64)
        return torch.einsum("bcp,p,bkp->bck", j, self.variance, j).to(jac.dtype)

    def tensors(self) -> dict[str, Tensor]:
        return {"variance": self.variance}

    @classmethod
    def from_tensors(cls, tensors, meta):
        return cls(tensors["variance"])

    @classmethod
    def from_precision(cls, precision: Tensor) -> tuple[DiagFactor, float]:
        """Invert a diagonal precision [d], with jitter if needed; returns (factor, jitter)."""
        p = precision.detach().to(torch.float64)

        def make(eps: float) -> Tensor:
            q = p + eps
            if not (torch.isfinite(q).all() and (q > 0).all()):
                raise _NotPositiveDefinite
            return 1.0 / q

        var, eps = _with_jitter(make, float(p.mean()), "diagonal")
        return cls(var), eps


class KronFactor(GaussianFactor):
    """Σ from laplace-torch's eigen-decomposed Kronecker precision (``KronDecomposed``).

    Block b of the precision is Q_b (Λ_b + δ_b) Q_bᵀ, with Q_b = Q_b1 ⊗ Q_b2 and Λ_b = λ_b1 ⊗ λ_b2
    for a weight (output × input factors) or a single dense factor for a bias; δ_b is the prior
    precision. Blocks follow the order of the model's trainable parameters (= θ's layout).
    """

    structure = "kron"

    def __init__(self, decomposed):
        from laplace.utils.matrix import KronDecomposed

        # contiguous copies: the same numbers as after a save / load round trip, so the same
        # BLAS paths and bit-identical draws
        self.kd = KronDecomposed(
            [[q.detach().contiguous() for q in qs] for qs in decomposed.eigenvectors],
            [[lam.detach().contiguous() for lam in ls] for ls in decomposed.eigenvalues],
            decomposed.deltas.detach().contiguous(),
            damping=decomposed.damping,
        )
        self.dim = sum(math.prod(len(lam) for lam in ls) for ls in decomposed.eigenvalues)

    def scale(self, z: Tensor) -> Tensor:
        return self.kd.bmm(z[:, None, :], exponent=-0.5)[:, 0, :]

    def square_form(self, jac: Tensor) -> Tensor:
        return self.kd.inv_square_form(jac)

    def tensors(self) -> dict[str, Tensor]:
        out = {"deltas": self.kd.deltas.detach()}
        for b, (qs, ls) in enumerate(zip(self.kd.eigenvectors, self.kd.eigenvalues)):
            for k, (q, lam) in enumerate(zip(qs, ls)):
                out[f"{b}.q{k}"] = q
                out[f"{b}.l{k}"] = lam
        return out

    def meta(self) -> dict:
        return {"factors": [len(ls) for ls in self.kd.eigenvalues], "damping": bool(self.kd.damping)}

    @classmethod
    def from_tensors(cls, tensors, meta):
        from laplace.utils.matrix import KronDecomposed

        vecs = [[tensors[f"{b}.q{k}"] for k in range(n)] for b, n in enumerate(meta["factors"])]
        vals = [[tensors[f"{b}.l{k}"] for k in range(n)] for b, n in enumerate(meta["factors"])]
        return cls(KronDecomposed(vecs, vals, tensors["deltas"], damping=meta["damping"]))

    @classmethod
    def from_precision(cls, precision) -> tuple[KronFactor, float]:
        """Wrap a ``KronDecomposed`` precision, adding jitter to δ_b if a block is not PD."""
        from laplace.utils.matrix import KronDecomposed

        kd = precision.detach()

        def make(eps: float):
            deltas = kd.deltas + eps
            for ls, delta in zip(kd.eigenvalues, deltas):
                if len(ls) == 1:
                    lam = ls[0] + delta
                elif kd.damping:
                    lam = torch.outer(ls[0] + delta.sqrt(), ls[1] + delta.sqrt())
                else:
                    lam = torch.outer(ls[0], ls[1]) + delta
                if not (torch.isfinite(lam).all() and (lam > 0).all()):
                    raise _NotPositiveDefinite
            return KronDecomposed(kd.eigenvectors, kd.eigenvalues, deltas, damping=kd.damping)

        decomposed, eps = _with_jitter(make, float(kd.diag().mean()), "Kronecker")
        return cls(decomposed), eps


class LowRankFactor(GaussianFactor):
    """Σ = (U diag(l) Uᵀ + λI)⁻¹ = λ⁻¹ (I − U diag(l / (l + λ)) Uᵀ) for orthonormal U [d, k], the
    eigenvalues l [k] > 0 of the (scaled, tempered) low-rank GGN and a scalar prior precision
    λ > 0 — a prior-sized variance outside the k directions the data curve."""

    structure = "lowrank"

    def __init__(self, vectors: Tensor, eigvals: Tensor, prior: float):
        if not (math.isfinite(prior) and prior > 0):
            raise ValueError(
                f"laplace: a low-rank Hessian needs a scalar prior precision > 0 (the posterior "
                f"is the prior outside the data's k directions), got {prior}"
            )
        self.vectors = vectors.detach().float().contiguous()
        self.eigvals = eigvals.detach().to(torch.float64).clamp_min(0)
        self.prior = float(prior)
        self.dim = vectors.shape[0]

    def scale(self, z: Tensor) -> Tensor:
        # (I − U diag(b) Uᵀ)² = I − U diag(l/(l+λ)) Uᵀ for b = 1 − √(λ/(l+λ))
        b = 1.0 - torch.sqrt(self.prior / (self.eigvals + self.prior))
        zu = (z.float() @ self.vectors).double() * b
        x = z.double() - (zu.float() @ self.vectors.T).double()
        return (x / math.sqrt(self.prior)).to(z.dtype)

    def square_form(self, jac: Tensor) -> Tensor:
        a = self.eigvals / (self.eigvals + self.prior)
        ju = (jac.float() @ self.vectors).double()  # [B, C, k]
        j = jac.double()
        return ((j @ j.transpose(1, 2) - (ju * a) @ ju.transpose(1, 2)) / self.prior).to(jac.dtype)

    def tensors(self) -> dict[str, Tensor]:
        return {"vectors": self.vectors, "eigvals": self.eigvals}

    def meta(self) -> dict:
        return {"prior": self.prior}

    @classmethod
    def from_tensors(cls, tensors, meta):
        return cls(tensors["vectors"], tensors["eigvals"], meta["prior"])

    @classmethod
    def from_precision(cls, precision) -> tuple[LowRankFactor, float]:
        """From laplace-torch's low-rank precision ((U, l), diag λ) with a uniform λ."""
        (vectors, eigvals), prior = precision
        prior = prior.detach().reshape(-1)
        if not bool((prior == prior[0]).all()):
            raise ValueError("laplace: a low-rank Hessian supports a scalar prior precision only")
        return cls(vectors, eigvals, float(prior[0])), 0.0


#: the factor class of each Hessian structure (``structure`` → class), for loading
FACTORS: dict[str, type[GaussianFactor]] = {
    f.structure: f for f in (DenseFactor, DiagFactor, KronFactor, LowRankFactor)
}


class _NotPositiveDefinite(Exception):
    pass


def _with_jitter(make: Callable[[float], T], mean_diag: float, what: str) -> tuple[T, float]:
    """``make(0)``; if the precision is not positive definite, ``make(ε)`` with ε = 1e-6 ·
    mean(diag) growing ×10 up to :data:`JITTER_TRIES` times, warning each time."""
    try:
        return make(0.0), 0.0
    except _NotPositiveDefinite:
        pass
    scale = mean_diag if math.isfinite(mean_diag) and mean_diag > 0 else 1.0
    eps = 1e-6 * scale
    for _ in range(JITTER_TRIES):
        warnings.warn(
            f"laplace: the {what} posterior precision is not positive definite; "
            f"adding jitter {eps:.3g} to its diagonal",
            RuntimeWarning,
            stacklevel=3,
        )
        try:
            return make(eps), eps
        except _NotPositiveDefinite:
            eps *= 10
    raise torch.linalg.LinAlgError(
        f"laplace: the {what} posterior precision is not positive definite even with jitter "
        f"{eps / 10:.3g} (= 1e-2 × its mean diagonal {scale:.3g}); the Hessian has NaN/Inf "
        "entries or the prior precision is too small — pass a larger float `prior`, or check "
        "that the anchor is a converged MAP"
    )
