"""Laplace approximation over LoRA parameters, through laplace-torch.

The posterior is a Gaussian N(ŵ, Σ) over the latent w of one parameter space (Daxberger et al.
2021, "Laplace Redux"; Yang et al. 2024, "Bayesian low-rank adaptation for LLMs"):

* ``space="projected"`` — the LoRA-XS cores (and head) of :class:`~bayes_lora.lora.spaces.
  ProjectedSpace`, around the projected MAP ``ctx.projected``; d = M·r² + head numbers
  (1,154 on the default model: 6 modules × 64 + the 770 numbers of the head);
* ``space="adapter"`` — the same r×r cores and head, but between the frozen SVD factors of a
  fine-tuned anchor's own update B̂Â = UΣVᵀ (``ProjectedSpace(around=θ̂)``): the core R = I *is*
  the anchor, so the Gaussian sits at the full-LoRA MAP (d = 1,154 on the default model);
* ``space="full"`` — θ itself, every LoRA tensor and the head, around a MAP anchor
  ``ctx.anchors[anchor]``; d = D (37,634 on the default model);
* ``space="subnetwork"`` — the tensors of θ named by ``tensors`` (default: the top adapted layer's
  LoRA tensors and the head; 13,058 numbers on the default model) around ``ctx.anchors[anchor]``,
  the rest fixed there (a subnetwork or last-layer Laplace; :class:`~bayes_lora.lora.spaces.
  MaskedSpace`). Per-example gradients stop at the lowest free layer.

The posterior precision is Σ⁻¹ = H/T + λI, with H the generalised Gauss–Newton matrix
Σ_i J_iᵀ (diag p_i − p_i p_iᵀ) J_i of the training NLL at ŵ (J_i = ∂f(x_i)/∂w, f the class
logits), in one of three structures — dense, diagonal, or Kronecker-factored per linear layer
(K-FAC; Martens & Grosse 2015), or low rank (the exact GGN of the Hessian's n examples, rank
≤ n(C − 1), in its eigenbasis) — and λ a scalar prior precision, fixed or chosen by maximising
the Laplace evidence log p(D) ≈ log p(D|ŵ) − ½ λ‖ŵ‖² + ½ log det(λI) − ½ log det Σ⁻¹
(MacKay 1992; Immer et al. 2021). T = n/N rescales a Hessian fitted on n of the N training
examples (``subset``) to the whole set; an optional likelihood temperature multiplies it.

Predictives
-----------
* ``"glm"`` (linearised; Immer et al. 2021): f(x) ≈ f̂(x) + J(x)(w − ŵ), so the logits are
  Gaussian, f ~ N(f̂, J Σ Jᵀ). With ``link="mc"`` each of the S samples is the softmax of one
  draw of f; with ``link="probit"`` every sample is the same probit-approximated probability
  softmax(f̂ / √(1 + π/8 · diag J Σ Jᵀ)) (MacKay 1992), so the mean is the probit predictive and
  the mutual information between samples is exactly 0 — use ``"mc"`` to measure epistemic
  uncertainty.
* ``"sampled"``: w_s ~ N(ŵ, Σ), θ_s = g(w_s), p_s = softmax f(x; θ_s). Over the full space the
  tuned prior dominates directions the data barely constrain and draws predict at chance
  (see METHODS.md); sample in a well-constrained space (the projected cores).

How laplace-torch is used
-------------------------
laplace-torch fits H and tunes λ; its posterior precision is then stored in a compact form
(:mod:`bayes_lora.inference.laplace_factors`: :class:`DenseFactor`, :class:`DiagFactor`,
:class:`KronFactor`, :class:`LowRankFactor`) from which sampling, the GLM predictive and save /
load work without a live laplace-torch object. The glue (batches, the
networks handed over, our curvature backend) lives in :mod:`bayes_lora.inference.laplace_torch`.

* Dense and diagonal structures: the network handed to laplace-torch is :class:`LatentNet`, whose
  only parameter is the latent w. Curvature comes from a laplace-torch curvature backend of our
  own, :func:`per_example_ggn_backend` (a ``GGNInterface`` whose ``full`` / ``diag`` /
  ``jacobians`` use per-example adapters, :func:`~bayes_lora.lora.batched.per_example_vjp`): the
  GGN Σ_i J_iᵀ Λ_i J_i with Λ_i = diag p_i − p_i p_iᵀ = Σ_k u_ik u_ikᵀ of rank C − 1 is Σ_i Σ_k
  (J_iᵀ u_ik)(J_iᵀ u_ik)ᵀ, so one forward and C − 1 backward passes per batch (one for a binary
  task) give it exactly — the cost of a training step. laplace-torch's stock ``GGNInterface``
  (``torch.func.jacrev``, which loops over output rows because the CPU attention backward has no
  vmap rule) is the fallback for models whose θ is not made of linear layers. (Its default
  curvlinops backend computes dense GGNs with forward-mode AD, which the CPU scaled-dot-product
  attention of transformers does not implement.) The dense structure's evidence uses one
  eigendecomposition of H: log det(H/T + λI) = Σ_j log(h_j/T + λ) for a scalar λ, instead of a
  d × d log-determinant at every step of the prior optimisation.
* Low-rank structure (``hessian="lowrank"``, any space; per-example adapters only): the same
  backend's GGN rows R [n(C − 1), d] give H = RᵀR exactly, eigendecomposed through the small
  Gram matrix RRᵀ (:func:`lowrank_laplace`, laplace-torch's ``LowRankLaplace``). The posterior is
  Σ = λ⁻¹(I − U diag(l/(l + λ)) Uᵀ): the data sharpen the prior only in the k ≤ n(C − 1)
  directions its curvature spans, the prior holds everywhere else, and nothing of size d × d is
  built — on the default model the exact GGN over all 37,634 LoRA numbers in one training pass
  over the Hessian's 500 examples (K-FAC approximates that GGN and needs C backward passes).
* Kronecker structure: K-FAC needs the linear layers that consume the parameters, so the network
  is the peft model itself (:class:`ModelNet`), with θ = ŵ written into its LoRA tensors and
  their gradients switched on only for the duration of the fit; curvature comes from
  laplace-torch's default curvlinops backend, one Kronecker block per LoRA factor and head
  tensor. A flat latent has no layers, so the projected space supports only dense and diagonal
  Hessians (its d × d dense block is what K-FAC would reduce to anyway).
"""
from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from typing import Any

import torch
from torch import Tensor, nn

from ..lora.batched import can_fold, per_example_jacobians
from ..lora.params import FunctionalModel
from ..lora.spaces import FullSpace, MaskedSpace, ParameterSpace, check_core_ranks
from ..types import Batch, EncodedTask, FitInfo, Prediction, over_batches
from .base import (
    CORE_SPACES,
    FitContext,
    Posterior,
    SpaceKind,
    choose_on_dev,
    needs_for_space,
    predictive_nll,
    space_from_state,
    space_state,
)
from .laplace_factors import (
    FACTORS,
    JITTER_TRIES,
    DenseFactor,
    DiagFactor,
    GaussianFactor,
    KronFactor,
    LowRankFactor,
)
from .laplace_torch import (
    _LABELS,
    MAX_LOWRANK_ROWS,
    LatentNet,
    ModelNet,
    _check_kron_layers,
    _trainable_at,
    eigen_full_laplace,
    lowrank_laplace,
    per_example_ggn_backend,
    task_loader,
)
from .registry import register

__all__ = [
    "JITTER_TRIES",
    "DenseFactor",
    "DiagFactor",
    "GaussianFactor",
    "HessianStructure",
    "KronFactor",
    "LaplacePosterior",
    "LatentNet",
    "Link",
    "LowRankFactor",
    "ModelNet",
    "Predictive",
    "SpaceKind",
    "fit_laplace",
]

#: largest latent dimension for which a dense d × d precision is built (stored in float64:
#: 8·d² bytes, 0.5 GB at this limit)
MAX_DENSE_DIM = 8192


class HessianStructure(str, Enum):
    """Structure of the GGN and hence of the posterior precision."""

    FULL = "full"
    """Dense d × d (only for small d: the projected space)."""
    DIAG = "diag"
    """Diagonal: independent coordinates."""
    KRON = "kron"
    """Kronecker-factored per linear layer (K-FAC): A ⊗ G blocks (full space only)."""
    LOWRANK = "lowrank"
    """The exact GGN of the Hessian's examples in its eigenbasis, rank ≤ n(C − 1), plus the
    isotropic prior (any space; models with per-example adapters)."""


class Predictive(str, Enum):
    """How predictions are made from the Gaussian."""

    GLM = "glm"
    """Linearised network: Gaussian logits N(f̂, J Σ Jᵀ)."""
    SAMPLED = "sampled"
    """Evaluate the network at sampled latents."""


class Link(str, Enum):
    """How the GLM predictive's Gaussian logits become probabilities."""

    PROBIT = "probit"
    """softmax(f̂ / √(1 + π/8 · var f)): deterministic; all S samples equal, MI = 0."""
    MC = "mc"
    """softmax of S Monte-Carlo draws of the logits."""


@contextmanager
def _quiet_vmap_fallback() -> Iterator[None]:
    """Silence torch's notice that CPU attention has no vmap batching rule for its backward
    (``jacrev`` then loops over the output rows; correct, only slower)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*have not yet implemented the batching rule.*")
        yield


def _choice(enum: type[Enum], value: Any, what: str):
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(m.value) for m in enum)
        raise ValueError(f"laplace: {what} must be one of {choices}, got {value!r}") from None


# --- the posterior --------------------------------------------------------------------------------


class LaplacePosterior(Posterior):
    """A Gaussian N(ŵ, Σ) over the latent of a parameter space, with a GLM or sampled predictive.

    Parameters
    ----------
    fm: the functional model.
    space: the parameter space (``ProjectedSpace``, ``FullSpace`` or ``MaskedSpace``); θ = space.to_theta(w).
    mean: the MAP latent ŵ [d].
    factor: the posterior covariance Σ (:class:`DenseFactor`, :class:`DiagFactor`,
        :class:`KronFactor`).
    predictive: "glm" or "sampled" (see :class:`Predictive`).
    link: "probit" or "mc", for the GLM predictive.
    jacobian_batch_size: examples per Jacobian ``torch.func.jacrev`` call in the GLM predictive
        (models that cannot use per-example adapters only).
    """

    method = "laplace"

    def __init__(
        self,
        fm: FunctionalModel,
        space: ParameterSpace,
        mean: Tensor,
        factor: GaussianFactor,
        *,
        predictive: str = "glm",
        link: str = "probit",
        jacobian_batch_size: int = 4,
        **kw,
    ):
        super().__init__(fm, **kw)
        if mean.shape != (space.dim,) or factor.dim != space.dim:
            raise ValueError(
                f"laplace: mean {tuple(mean.shape)} and covariance (d={factor.dim}) must match "
                f"the space's {space.dim} coordinates"
            )
        self.space = space
        self.mean = mean.detach().clone().float()
        self.factor = factor
        self.predictive = _choice(Predictive, predictive, "predictive")
        self.link = _choice(Link, link, "link")
        self.jacobian_batch_size = int(jacobian_batch_size)
        self._per_example = can_fold(fm)  # per-example adapters for the GLM Jacobians, else jacrev
        # the probit predictive is deterministic: one sample says everything
        deterministic = self.predictive is Predictive.GLM and self.link is Link.PROBIT
        self.default_num_samples = 1 if deterministic else 16
        self.num_atoms = 1 if deterministic else None
        # the GLM predictive linearises around ŵ: its draws are not the network at draws of w
        self.predicts_at_latents = self.predictive is Predictive.SAMPLED

    @property
    def space_kind(self) -> str:
        return self.space.kind

    # --- sampling -------------------------------------------------------------------------
    def _latents(self, n: int, seed: int) -> Tensor:
        g = torch.Generator().manual_seed(int(seed))
        z = torch.randn(n, self.space.dim, generator=g)
        return self.mean + self.factor.scale(z)

    def sample_thetas(self, n: int, *, seed: int = 0) -> Tensor:
        """θ_s = g(w_s) with w_s ~ N(ŵ, Σ), drawn by a generator seeded with ``seed``."""
        with torch.no_grad():
            return self.space.to_theta(self._latents(n, seed))

    def latent_samples(self, n: int, *, seed: int = 0) -> dict[str, Tensor]:
        """The latents w_s [n, d] behind ``sample_thetas(n, seed=seed)``."""
        return {"w": self._latents(n, seed)}

    # --- prediction -----------------------------------------------------------------------
    def glm_moments(self, task: EncodedTask, batch: Batch) -> tuple[Tensor, Tensor]:
        """Logits f̂ [B, C] at ŵ and their linearised covariance J Σ Jᵀ [B, C, C] on a batch."""

        if self._per_example:  # per-example adapters: C backward passes for the whole batch
            jac, f = per_example_jacobians(self.fm, self.space, task, batch, self.mean)
            return f, self.factor.square_form(jac)

        def logits(w: Tensor) -> tuple[Tensor, Tensor]:
            out = task.class_logits(self.fm.forward_at(self.space.to_theta(w)), batch)
            return out, out

        with torch.enable_grad(), _quiet_vmap_fallback():
            jac, f = torch.func.jacrev(logits, has_aux=True)(self.mean)
        return f.detach(), self.factor.square_form(jac.detach())

    def predict(
        self, task: EncodedTask, *, num_samples: int | None = None, seed: int = 0, batch_size: int = 64
    ) -> Prediction:
        """Probabilities [S, N, C]: sampled θ_s, or the GLM predictive (see the module doc).

        For the GLM predictive the Jacobians are taken per example over batches of ``batch_size``
        examples (per-example adapters), or of min(``batch_size``, ``jacobian_batch_size``)
        examples with ``torch.func.jacrev`` for models that cannot fold; with ``link="mc"`` the
        logit noise [S, N, C] is drawn up front from ``seed``, so results do not depend on batching.
        """
        if self.predictive is Predictive.SAMPLED:
            return super().predict(task, num_samples=num_samples, seed=seed, batch_size=batch_size)
        s = self._n(num_samples)
        noise = None
        if self.link is Link.MC:
            g = torch.Generator().manual_seed(int(seed))
            noise = torch.randn(s, len(task), task.num_classes, generator=g)
        jb = batch_size if self._per_example else max(1, min(batch_size, self.jacobian_batch_size))

        def probs(batch) -> Tensor:  # [S, B, C]
            f, cov = self.glm_moments(task, batch)
            f = f.to(cov.device)  # the Jacobians are taken for θ, in host memory (lora.device): the moments there
            if noise is None:
                return _probit(f, cov).expand(s, f.shape[0], -1)
            draws = f + torch.einsum("bck,sbk->sbc", _psd_sqrt(cov), noise[:, batch["index"].cpu()])
            return draws.softmax(-1)

        return Prediction(over_batches(task, jb, probs, dim=1).contiguous(), task.labels)

    # --- persistence ----------------------------------------------------------------------
    def state(self):
        tensors = {"mean": self.mean}
        tensors.update({f"factor.{k}": v for k, v in self.factor.tensors().items()})
        space_tensors, space_meta = space_state(self.space)  # with the SVD factors of a core space
        tensors.update(space_tensors)
        meta = {
            **space_meta,
            "structure": self.factor.structure,
            "factor": self.factor.meta(),
            "predictive": self.predictive.value,
            "link": self.link.value,
            "jacobian_batch_size": self.jacobian_batch_size,
        }
        return tensors, meta

    @classmethod
    def from_state(cls, fm, tensors, meta, ctx=None):
        _choice(SpaceKind, meta["space"], "space")
        space = space_from_state(fm, tensors, meta)
        factor_tensors = {k[len("factor."):]: v for k, v in tensors.items() if k.startswith("factor.")}
        factor = FACTORS[meta["structure"]].from_tensors(factor_tensors, meta.get("factor", {}))
        return cls(
            fm,
            space,
            tensors["mean"],
            factor,
            predictive=meta["predictive"],
            link=meta["link"],
            jacobian_batch_size=meta.get("jacobian_batch_size", 4),
        )


def _shared_jacobian_nlls(posts: list[LaplacePosterior], dev: EncodedTask, batch_size: int = 64) -> list[float] | None:
    """The dev NLL of each posterior's GLM probit predictive, for posteriors that differ only in Σ
    (one mean, one space): per batch J is taken once and only J Σ Jᵀ is formed per posterior.
    None for other predictives (evaluated one by one by :func:`choose_on_dev`)."""
    first = posts[0]
    if not (first.predictive is Predictive.GLM and first.link is Link.PROBIT and first._per_example):
        return None

    def per_batch(batch) -> Tensor:  # [K, B, C]: the probit predictive of every posterior
        jac, f = per_example_jacobians(first.fm, first.space, dev, batch, first.mean)
        return torch.stack([_probit(f, post.factor.square_form(jac)).cpu() for post in posts])

    with torch.no_grad():
        probs = over_batches(dev, batch_size, per_batch, dim=1)
    return [predictive_nll(p, dev.labels) for p in probs]


def _probit(f: Tensor, cov: Tensor) -> Tensor:
    """The probit predictive softmax(f / √(1 + π/8 · diag cov)) [B, C] of logits f [B, C] with
    covariance cov [B, C, C] (MacKay 1992)."""
    kappa = 1.0 / torch.sqrt(1.0 + math.pi / 8 * cov.diagonal(dim1=-2, dim2=-1))
    return (kappa * f.to(kappa.device)).softmax(-1)


def _psd_sqrt(cov: Tensor) -> Tensor:
    """Symmetric square roots [B, C, C] of PSD matrices (eigenvalues clamped at 0)."""
    cov = (cov + cov.transpose(-1, -2)) / 2
    lam, vec = torch.linalg.eigh(cov.to(torch.float64))
    root = (vec * lam.clamp_min(0).sqrt().unsqueeze(-2)) @ vec.transpose(-1, -2)
    return root.to(cov.dtype)


# --- fitting -----------------------------------------------------------------------------------------


#: ``prior="dev"``: the candidate prior precisions, as multiples of the evidence's λ (laplace-torch's
#: ``gridsearch`` spans a log grid too; this one is centred on the evidence and reaches far towards
#: the MAP — a 256× precision — so that a Laplace that harms on held-out data can shrink away)
DEV_PRIOR_GRID = (1 / 16, 1 / 4, 1.0, 4.0, 16.0, 64.0, 256.0)


def _subset(task: EncodedTask, subset: int | None, seed: int) -> EncodedTask:
    if subset is None:
        return task
    if int(subset) < 1:
        raise ValueError(f"laplace: subset must be ≥ 1 training examples, got {subset}")
    if int(subset) >= len(task):
        return task
    g = torch.Generator().manual_seed(int(seed))
    index = torch.randperm(len(task), generator=g)[: int(subset)].sort().values
    return task.subset(index)


def _check_options(space, hessian, prior, predictive, link, temperature, tensors):
    """The space and Hessian structure of these options, or a ValueError naming the option."""
    kind = _choice(SpaceKind, space, "space")
    hessian = hessian or ("kron" if kind in (SpaceKind.FULL, SpaceKind.SUBNETWORK) else "full")
    structure = _choice(HessianStructure, hessian, "hessian")
    _choice(Predictive, predictive, "predictive")
    _choice(Link, link, "link")
    if isinstance(prior, str):
        if prior not in ("marglik", "dev"):
            raise ValueError(f"laplace: prior must be 'marglik', 'dev' or a float ≥ 0, got {prior!r}")
    elif not (isinstance(prior, (int, float)) and math.isfinite(prior) and prior >= 0):
        raise ValueError(f"laplace: a fixed prior precision must be a float ≥ 0, got {prior!r}")
    if isinstance(temperature, bool) or not (isinstance(temperature, (int, float)) and math.isfinite(temperature)
                                             and temperature > 0):
        raise ValueError(f"laplace: temperature must be a float > 0, got {temperature!r}")

    if tensors is not None and kind is not SpaceKind.SUBNETWORK:
        raise ValueError(f"laplace: tensors= picks the free tensors of space='subnetwork', not of space={space!r}")
    if kind not in (SpaceKind.FULL, SpaceKind.SUBNETWORK) and structure is HessianStructure.KRON:
        raise ValueError(
            f"laplace: hessian='kron' is not supported on the {kind.value} space: its latent is one "
            "flat vector with no linear layers to factor (K-FAC would reduce to one dense "
            "block); use hessian='full' there (d is small), or space='full' for K-FAC over the "
            "LoRA tensors"
        )
    return kind, structure


def _check(options, model) -> None:
    """Every option of a Laplace fit that can be checked without training (:meth:`Backend.check`):
    values and their combinations, the ranks a core space needs, the ``tensors`` patterns."""
    from ..lora.params import ParamLayout

    o = options
    kind, _ = _check_options(o["space"], o["hessian"], o["prior"], o["predictive"], o["link"], o["temperature"],
                             o["tensors"])
    if kind.value in CORE_SPACES:
        check_core_ranks(model)
    if kind is SpaceKind.SUBNETWORK and o["tensors"] is not None:
        MaskedSpace.check_patterns(ParamLayout.from_model(model), o["tensors"])


@register("laplace", LaplacePosterior, choices={"space": SpaceKind, "hessian": HessianStructure,
                                              "predictive": Predictive, "link": Link},
          needs=needs_for_space("space", dev="prior"), check=_check)
def fit_laplace(
    ctx: FitContext,
    *,
    space: str = "projected",
    hessian: str | None = None,
    prior: str | float = "marglik",
    predictive: str = "glm",
    link: str = "probit",
    subset: int | None = None,
    batch_size: int | None = None,
    anchor: int = 0,
    jacobian_batch_size: int = 4,
    temperature: float = 1.0,
    tensors: list[str] | None = None,
) -> LaplacePosterior:
    """Laplace: a Gaussian around a MAP, curvature and evidence-tuned prior from laplace-torch.

    Parameters
    ----------
    ctx: the fit context (model, training task, anchors).
    space: "projected" (LoRA-XS cores around ``ctx.projected``), "adapter" (r×r cores
        between the SVD factors of ``ctx.anchors[anchor]``'s own update, around that anchor),
        "full" (θ around ``ctx.anchors[anchor]``) or "subnetwork" (the tensors of θ named by
        ``tensors`` around ``ctx.anchors[anchor]``, the rest fixed there).
    hessian: "full", "diag", "kron" or "lowrank"; default "kron" on the full and subnetwork spaces, "full" on the
        core spaces. Unsupported: "kron" on a core space (a flat latent has no layers), "full" on
        a space of more than :data:`MAX_DENSE_DIM` coordinates, and "lowrank" for models
        without per-example adapters, with a zero prior, or with more than
        :data:`~bayes_lora.inference.laplace_torch.MAX_LOWRANK_ROWS` GGN rows (subset × (C − 1)).
    prior: "marglik" (scalar prior precision maximising the Laplace evidence, laplace-torch's
        ``optimize_prior_precision``), "dev" (the λ of :data:`DEV_PRIOR_GRID` × the evidence's λ
        whose predictive has the lowest NLL on ``ctx.dev``, the task's dev split — laplace-torch's
        ``gridsearch`` on a validation loader, around the evidence; the grid reaches 256 × the
        evidence's precision, a posterior near the MAP, so a posterior that harms on dev is not
        chosen) or a fixed prior precision λ ≥ 0.
    predictive: "glm" or "sampled".
    link: "probit" or "mc" (GLM predictive only).
    subset: fit the Hessian on this many training examples (a sample seeded by ``ctx.seed``);
        curvature and log-likelihood are scaled by N / subset (laplace-torch's temperature).
    batch_size: examples per curvature batch; default 32 (one K-FAC pass, or one forward and
        C − 1 backward passes of per-example adapters, per batch), and ``jacobian_batch_size``
        for models that cannot fold (``torch.func.jacrev`` costs grow with the batch).
    anchor: which anchor is the MAP of the full and adapter spaces.
    jacobian_batch_size: examples per Jacobian in the GLM predictive.
    temperature: likelihood temperature T > 0: the log-likelihood (and so H) is divided by T,
        Σ⁻¹ = H/T + λI, and the evidence is that of the tempered likelihood. T > 1 widens the
        posterior; small subspace posteriors are over-concentrated at T = 1 (Izmailov et al. 2019)
        — choose T on held-out data, as the curve posterior's.
    tensors: for ``space="subnetwork"``: glob patterns (``fnmatch``) of the θ tensors that are
        free, e.g. ``["*.layer.5.*", "*classifier*"]``; default the top adapted layer's LoRA
        tensors and every non-LoRA tensor (the head). Per-example gradients then stop at the
        lowest free layer, so the curvature pass skips the backward through the layers below.
    """
    with warnings.catch_warnings():  # a dependency scripts a function at import (torch.jit is deprecated)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
        from laplace import Laplace
        from laplace.curvature import CurvlinopsGGN, GGNInterface

    start = time.perf_counter()
    kind, structure = _check_options(space, hessian, prior, predictive, link, temperature, tensors)
    fm = ctx.fm
    if kind is SpaceKind.PROJECTED:
        pm = ctx.require_projected()
        param_space: ParameterSpace = pm.space
        mean = pm.core
    elif kind is SpaceKind.ADAPTER:
        param_space = ctx.adapter_space(anchor)
        mean = param_space.initial()  # identity cores and the anchor's head: the anchor itself
    elif kind is SpaceKind.SUBNETWORK:
        base = ctx.require_anchors(anchor + 1)[anchor]
        names = MaskedSpace.top_layer_names(fm.layout) if tensors is None else tensors
        param_space = MaskedSpace.from_names(fm.layout, base, names)
        mean = param_space.initial()
    else:
        param_space = FullSpace(fm.layout)
        mean = ctx.require_anchors(anchor + 1)[anchor]
    fm = fm.with_layout(param_space.layout)  # LoRA-XS cores of their own rank: a rank-k θ
    d = param_space.dim
    if structure is HessianStructure.FULL and d > MAX_DENSE_DIM:
        raise ValueError(
            f"laplace: hessian='full' over the {kind.value} space would build a dense {d} × {d} "
            f"precision ({d * d * 4 / 2**30:.1f} GiB per float32 copy, several copies); it is "
            f"limited to d ≤ {MAX_DENSE_DIM}. Use space='projected' for a dense Hessian, or "
            "hessian='kron' / 'diag' over the full space"
        )

    train = _subset(ctx.train, subset, ctx.seed)
    n, n_total = len(train), len(ctx.train)
    per_example = can_fold(fm)  # our per-example GGN backend, else laplace-torch's jacrev one
    if structure is HessianStructure.LOWRANK:
        if not isinstance(prior, str) and prior <= 0:
            raise ValueError("laplace: hessian='lowrank' needs a prior precision > 0 (or 'marglik')")
        rows = n * (train.num_classes - 1)
        if rows > MAX_LOWRANK_ROWS:
            raise ValueError(
                f"laplace: hessian='lowrank' keeps all {rows} GGN rows ({n} examples × "
                f"{train.num_classes - 1}) of {d} numbers in memory; the limit is {MAX_LOWRANK_ROWS} "
                f"— pass subset ≤ {MAX_LOWRANK_ROWS // (train.num_classes - 1)}"
            )
    bs = batch_size or (32 if structure is HessianStructure.KRON or per_example else jacobian_batch_size)
    if bs < 1:
        raise ValueError(f"laplace: batch_size must be ≥ 1, got {bs}")
    loader = task_loader(train, bs, by_length=True)

    def run(net: nn.Module, backend):
        kwargs = {"subset_of_weights": "all", "hessian_structure": structure.value}
        if structure is HessianStructure.FULL:
            make, kwargs = eigen_full_laplace(), {}
        elif structure is HessianStructure.LOWRANK:
            make, kwargs = lowrank_laplace(), {}
        else:
            make = Laplace
        la = make(
            net,
            "classification",
            **kwargs,
            backend=backend,
            dict_key_x=_LABELS,  # laplace-torch only reads dict_key_x for the batch size
            dict_key_y=_LABELS,
            temperature=float(temperature) * n / n_total,
        )
        t0 = time.perf_counter()
        with _quiet_vmap_fallback():
            la.fit(loader, progress_bar=ctx.progress)
        t1 = time.perf_counter()
        if prior in ("marglik", "dev"):  # "dev" searches around the evidence's λ
            with warnings.catch_warnings():
                # laplace-torch reminds that the probit link is the default of its own predictive
                warnings.filterwarnings("ignore", message=".*link_approx.*")
                la.optimize_prior_precision(method="marglik", pred_type="glm", prior_structure="scalar")
        else:
            la.prior_precision = float(prior)
        t2 = time.perf_counter()
        lml = float(la.log_marginal_likelihood().detach())
        if la.n_params != d or not torch.allclose(la.mean.float(), mean.float()):
            raise RuntimeError("laplace: laplace-torch's mean is not the MAP latent (parameter order?)")
        factor, jitter = FACTORS[structure.value].from_precision(la.posterior_precision)
        prior_prec = la.prior_precision.detach().reshape(-1)
        return la, factor, jitter, lml, prior_prec, t1 - t0, t2 - t1

    if structure is HessianStructure.KRON:
        free = param_space.free_names if isinstance(param_space, MaskedSpace) else fm.layout.names
        _check_kron_layers(fm.model, free)
        with _trainable_at(fm, param_space.to_theta(mean), free):
            out = run(ModelNet(fm.model, train), CurvlinopsGGN)
    else:
        # the low-rank GGN's rows come from our backend; for a model that cannot fold per-example
        # adapters it computes them one example at a time (same rows, slower)
        ours = per_example or structure is HessianStructure.LOWRANK
        out = run(LatentNet(fm, param_space, train, mean), per_example_ggn_backend() if ours else GGNInterface)
    la, factor, jitter, lml, prior_prec, fit_s, prior_s = out
    dev_stats: dict[str, Any] = {}
    if prior == "dev":  # the curvature is fitted: only λ changes, and with it the factor
        dev = ctx.require_dev("laplace: prior='dev'")
        t0 = time.perf_counter()
        evidence = float(prior_prec[0])
        grid = [evidence * g for g in DEV_PRIOR_GRID]
        factors = []
        for lam in grid:
            la.prior_precision = lam
            factors.append(FACTORS[structure.value].from_precision(la.posterior_precision))
        posts = [LaplacePosterior(fm, param_space, mean, f, predictive=predictive, link=link,
                                  jacobian_batch_size=jacobian_batch_size) for f, _ in factors]
        # the lowest dev NLL; a tie goes to the larger λ (nearer the MAP)
        best, record = choose_on_dev(posts, grid, dev, parameter="prior_precision", prefer_low=False,
                                     reference=evidence, reference_name="evidence", seed=ctx.seed,
                                     nlls=_shared_jacobian_nlls(posts, dev))
        record["seconds"] = time.perf_counter() - t0  # with the factors' construction
        la.prior_precision = grid[best]
        factor, jitter = factors[best]
        lml = float(la.log_marginal_likelihood().detach())
        prior_prec = la.prior_precision.detach().reshape(-1)
        dev_stats = {"dev_choice": record}

    options = {
        "space": kind.value,
        "hessian": structure.value,
        "prior": prior,
        "predictive": predictive,
        "link": link,
        "subset": subset,
        "batch_size": bs,
        "anchor": None if kind is SpaceKind.PROJECTED else anchor,
        "jacobian_batch_size": jacobian_batch_size,
        "temperature": temperature,
    }
    if isinstance(param_space, MaskedSpace):
        options["tensors"] = param_space.free_names  # the patterns resolved: what was fitted
    stats = {
        "prior_precision": prior_prec.item() if prior_prec.numel() == 1 else prior_prec.tolist(),
        "log_marginal_likelihood": lml,
        "hessian": structure.value,
        "space": kind.value,
        "n_params": d,
        "n_data": n,
        "n_train": n_total,
        "fit_seconds": fit_s,
        "prior_seconds": prior_s,
        "jitter": jitter,
        **dev_stats,
    }
    if kind is SpaceKind.PROJECTED:
        stats["map_seconds"] = float(ctx.projected.seconds)
    post = LaplacePosterior(
        fm,
        param_space,
        mean,
        factor,
        predictive=predictive,
        link=link,
        jacobian_batch_size=jacobian_batch_size,
        options=options,
        info=FitInfo(time.perf_counter() - start, (), stats),
    )
    return post
