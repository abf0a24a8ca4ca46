"""SWAG: SWA-Gaussian over the LoRA-XS cores (Maddox et al. 2019; B-LoRA-XS, Marszałek et al. 2025).

Starting from a MAP latent, training continues with a constant learning rate and K iterates
w_1..w_K of the latent are collected. The iterates come from the package's training loop
(AdamW without weight decay, gradient clipping as in fine-tuning) rather than Maddox et al.'s
SGD: Adam's per-coordinate step of about lr makes one default lr work across spaces whose
gradient scales differ (the LoRA-XS cores are multiplied by the singular values), and the
spread of the iterates — hence the covariance — is set by lr (``scale`` rescales it). Their first two moments define a Gaussian

    w̄ = (1/K) Σ_k w_k                              (the SWA mean θ_SWA)
    Σ_diag = diag((1/K) Σ_k (w_k − w̄)²)            (clamped to ≥ 1e-30)
    D = [w_1 − w̄, …, w_K − w̄]                      (deviation matrix, K columns)
    Σ = ½·Σ_diag + D Dᵀ / (2(K − 1))

sampled as w = w̄ + (1/√2)·Σ_diag^{1/2} z₁ + (1/√(2(K−1)))·D z₂ with z₁ ~ N(0, I_d) and
z₂ ~ N(0, I_K), then mapped to the LoRA vector θ by the space. By default the space is the
projected LoRA-XS space (cores + head), where a few hundred numbers hold the uncertainty and the
low-rank SWAG covariance is well constrained (B-LoRA-XS). The deviations are taken from the
final mean, so D's columns sum to zero and D Dᵀ has rank ≤ K − 1.

The functional core is :func:`collect_snapshots` (the constant-lr trajectory), :func:`swag_moments`
(w̄, Σ_diag, D) and :func:`swag_sample`; :func:`fit_swag` is the registered driver.
"""
from __future__ import annotations

import math
from enum import Enum

import numpy as np
import torch
from torch import Tensor

from ..lora.checkpoint import LoopCheckpoint
from ..lora.params import FunctionalModel
from ..lora.spaces import FullSpace, ParameterSpace, ProjectedSpace
from ..lora.train import TrainConfig, TrainResult, train_latent
from ..types import FitInfo
from .base import (
    DEV_SCALE_GRID,
    FitContext,
    Posterior,
    SpaceKind,
    check_scale,
    check_space,
    choose_on_dev,
    needs_for_space,
    space_from_state,
    space_state,
)
from .registry import register

#: smallest diagonal variance kept (Maddox et al. clamp the same way)
VAR_CLAMP = 1e-30


class Covariance(str, Enum):
    """Which part of the SWAG covariance is sampled."""

    SWAG = "swag"
    """½·Σ_diag + D Dᵀ / (2(K−1)): the full SWAG Gaussian (Maddox et al. 2019)."""
    DIAG = "diag"
    """Σ_diag alone (SWAG-Diagonal)."""
    LOW_RANK = "low_rank"
    """D Dᵀ / (K−1) alone: the low-rank part (rank ≤ K − 1), no diagonal."""


# --- functional core -------------------------------------------------------------------------
def swag_moments(snapshots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SWA mean w̄ [d], clamped diagonal variance Σ_diag [d] and deviations D [d, K] of
    snapshots [K, d]. The variance is the mean squared deviation (the same number as
    mean(w²) − w̄², without its cancellation in float32)."""
    if snapshots.dim() != 2 or snapshots.shape[0] < 2:
        raise ValueError(f"SWAG needs snapshots [K ≥ 2, d], got {tuple(snapshots.shape)}")
    snaps = snapshots.double()
    mean = snaps.mean(0)
    dev = snaps - mean
    var = dev.pow(2).mean(0).clamp_min(VAR_CLAMP)
    return mean.float(), var.float(), dev.T.contiguous().float()


def _factors(
    var: Tensor, dev: Tensor, covariance: Covariance, scale: float
) -> tuple[Tensor | None, Tensor | None]:
    """(diagonal std [d] or None, low-rank factor [d, K] or None) with Σ = diag(std²) + L Lᵀ."""
    k = dev.shape[1]
    c = math.sqrt(scale)
    if covariance is Covariance.SWAG:
        return c * (var / 2).sqrt(), c * dev / math.sqrt(2 * (k - 1))
    if covariance is Covariance.DIAG:
        return c * var.sqrt(), None
    return None, c * dev / math.sqrt(k - 1)


def swag_sample(
    mean: Tensor,
    var: Tensor,
    dev: Tensor,
    n: int,
    *,
    seed: int = 0,
    covariance: Covariance | str = Covariance.SWAG,
    scale: float = 1.0,
) -> Tensor:
    """``n`` draws [n, d] of the SWAG Gaussian (see the module docstring), seeded by ``seed``.

    ``scale`` multiplies the covariance. z₁ and z₂ are always both drawn, so the diagonal and
    low-rank variants share their random numbers for a given seed.
    """
    covariance = Covariance(covariance)
    g = torch.Generator().manual_seed(int(seed))
    z1 = torch.randn(n, mean.shape[0], generator=g)
    z2 = torch.randn(n, dev.shape[1], generator=g)
    std, factor = _factors(var, dev, covariance, scale)
    out = mean.expand(n, -1).clone()
    if std is not None:
        out = out + z1 * std
    if factor is not None:
        out = out + z2 @ factor.T
    return out


def collect_snapshots(
    fm: FunctionalModel,
    space: ParameterSpace,
    task,
    init: Tensor,
    *,
    snapshots: int,
    collect_every: int,
    lr: float,
    batch_size: int,
    seed: int,
    weight_decay: float = 0.0,
    grad_clip: float | None = 1.0,
    progress: bool = False,
    checkpoint: LoopCheckpoint | None = None,
) -> TrainResult:
    """Continue training from ``init`` at the constant learning rate ``lr`` (Adam), keeping a
    snapshot every ``collect_every`` steps until ``snapshots`` are collected."""
    cfg = TrainConfig(
        epochs=1e9,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        max_steps=snapshots * collect_every,
        grad_clip=grad_clip,
    )
    return train_latent(
        fm, space, task, init, cfg, snapshot_every=collect_every, progress=progress, stage="swag",
        checkpoint=checkpoint,
    )


# --- posterior -------------------------------------------------------------------------------
class SwagPosterior(Posterior):
    """The SWAG Gaussian over a space's latent, mapped to θ by the space.

    Attributes
    ----------
    space: the parameter space (projected LoRA-XS by default).
    mean: θ_SWA in latent coordinates [d].
    var: the diagonal variance Σ_diag [d] (≥ 1e-30).
    deviations: D [d, K], the snapshots minus the mean.
    covariance: which covariance is sampled (:class:`Covariance`).
    scale: multiplies the covariance.
    """

    method = "swag"

    def __init__(
        self,
        fm: FunctionalModel,
        space: ParameterSpace,
        mean: Tensor,
        var: Tensor,
        deviations: Tensor,
        *,
        covariance: Covariance | str = Covariance.SWAG,
        scale: float = 1.0,
        **kw,
    ):
        super().__init__(fm, **kw)
        d = space.dim
        if mean.shape != (d,) or var.shape != (d,) or deviations.dim() != 2 or deviations.shape[0] != d:
            raise ValueError(
                f"SWAG moments must be mean [{d}], var [{d}], deviations [{d}, K]; got "
                f"{tuple(mean.shape)}, {tuple(var.shape)}, {tuple(deviations.shape)}"
            )
        if deviations.shape[1] < 2:
            raise ValueError("SWAG needs at least K = 2 snapshots")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.space = space
        self.mean = mean.detach().clone()
        self.var = var.detach().clone().clamp_min(VAR_CLAMP)
        self.deviations = deviations.detach().clone()
        self.covariance_kind = Covariance(covariance)
        self.scale = float(scale)

    @property
    def rank(self) -> int:
        """K, the number of snapshots (columns of D)."""
        return self.deviations.shape[1]

    def covariance(self) -> Tensor:
        """The dense covariance [d, d] that :meth:`sample_latents` draws from (times ``scale``)."""
        std, factor = _factors(self.var, self.deviations, self.covariance_kind, self.scale)
        cov = torch.zeros(self.space.dim, self.space.dim)
        if std is not None:
            cov = cov + torch.diag(std.pow(2))
        if factor is not None:
            cov = cov + factor @ factor.T
        return cov

    def covariance_spectrum(self, top: int = 32, max_dim: int = 4096) -> dict:
        """The eigenvalues of the covariance sampled (times ``scale``), the ``top`` largest,
        descending, with its trace: how much of the variance a few directions hold (B-LoRA-XS:
        low-rank weight covariances suffice).

        A dense eigendecomposition for d ≤ ``max_dim``; above it, Lanczos (ARPACK) on the
        matrix-free product v ↦ diag(σ²)v + L(Lᵀv), never a d × d matrix (the LoRA-XS cores at
        k = 128 are ~99,000 numbers). Both exact: ``exact`` is True.
        """
        std, factor = _factors(self.var, self.deviations, self.covariance_kind, self.scale)
        trace = (0.0 if std is None else float(std.double().pow(2).sum())) + (
            0.0 if factor is None else float(factor.double().pow(2).sum()))
        d = self.space.dim
        if d <= max_dim:
            eig = torch.linalg.eigvalsh(self.covariance().double()).flip(0)
        elif factor is None:  # a diagonal: its sorted entries
            eig = std.double().pow(2).sort(descending=True).values
        else:
            eig = torch.from_numpy(_top_eigenvalues(std, factor, min(top, d - 1)))
        eig = eig.clamp_min(0.0)[:top]
        return {"eigenvalues": [float(v) for v in eig], "trace": trace, "dim": d, "exact": True}

    def sample_latents(self, n: int, *, seed: int = 0) -> Tensor:
        """Draws w [n, d] in the space's coordinates."""
        return swag_sample(
            self.mean, self.var, self.deviations, n,
            seed=seed, covariance=self.covariance_kind, scale=self.scale,
        )

    def sample_thetas(self, n: int, *, seed: int = 0) -> Tensor:
        with torch.no_grad():
            return self.space.to_theta(self.sample_latents(n, seed=seed))

    def latent_samples(self, n: int, *, seed: int = 0) -> dict[str, Tensor]:
        return split_latent(self.space, self.sample_latents(n, seed=seed))

    def state(self):
        space_tensors, space_meta = space_state(self.space)
        tensors = {"mean": self.mean, "var": self.var, "deviations": self.deviations, **space_tensors}
        meta = {"covariance": self.covariance_kind.value, "scale": self.scale, **space_meta}
        return tensors, meta

    @classmethod
    def from_state(cls, fm, tensors, meta, ctx=None):
        space = space_from_state(fm, tensors, meta, ctx)
        return cls(
            fm, space, tensors["mean"], tensors["var"], tensors["deviations"],
            covariance=meta["covariance"], scale=meta["scale"],
        )


def split_latent(space: ParameterSpace, w: Tensor) -> dict[str, Tensor]:
    """Named latent draws: ``core`` [n, Σr²] and ``head`` [n, ...] for a projected space
    (head omitted when it is not a latent), ``theta`` otherwise."""
    if isinstance(space, ProjectedSpace):
        out = {"core": w[..., : space.core_dim]}
        if space.dim > space.core_dim:
            out["head"] = w[..., space.core_dim :]
        return out
    return {"theta": w}


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def _check_options(snapshots, space) -> SpaceKind:
    """The space of these options, or a ValueError naming the option."""
    if snapshots < 2:
        raise ValueError(f"SWAG needs snapshots ≥ 2, got {snapshots}")
    kind = SpaceKind(space)
    if kind is SpaceKind.SUBNETWORK:
        raise ValueError("swag: space='subnetwork' is a Laplace space; SWAG runs in 'projected', 'adapter' or 'full'")
    return kind


def _check(options, model) -> None:
    """What a SWAG fit can check without training (:meth:`Backend.check`): the options and the
    ranks a core space needs."""
    _check_options(options["snapshots"], options["space"])
    check_scale(options["scale"], "swag")
    check_space("space")(options, model)


def _top_eigenvalues(std: Tensor | None, factor: Tensor | None, k: int) -> np.ndarray:
    """The ``k`` largest eigenvalues, descending, of diag(std²) + factor factorᵀ, by Lanczos on
    its matrix-vector product (the matrix is never formed)."""
    from scipy.sparse.linalg import LinearOperator, eigsh

    diag = None if std is None else std.double().pow(2).numpy()
    lr = None if factor is None else factor.double().numpy()
    d = diag.shape[0] if diag is not None else lr.shape[0]

    def matvec(v):
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        out = np.zeros(d) if diag is None else diag * v
        return out if lr is None else out + lr @ (lr.T @ v)

    op = LinearOperator((d, d), matvec=matvec, dtype=np.float64)
    vals = eigsh(op, k=k, which="LA", return_eigenvectors=False, v0=np.ones(d), tol=1e-10, ncv=min(d, max(2 * k + 1, 64)))
    return np.sort(vals)[::-1].copy()


@register("swag", SwagPosterior, choices={"space": SpaceKind, "covariance": Covariance},
          needs=needs_for_space("space", dev="scale"), check=_check)
def fit_swag(
    ctx: FitContext,
    *,
    snapshots: int = 10,
    collect_every: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    covariance: str = Covariance.SWAG.value,
    scale: float | str = 1.0,
    space: str = SpaceKind.PROJECTED.value,
    weight_decay: float = 0.0,
    seed: int | None = None,
) -> SwagPosterior:
    """SWAG over the LoRA-XS cores: K snapshots of constant-lr Adam from the projected MAP.

    Parameters
    ----------
    snapshots: K, the number of iterates kept (columns of D; the rank of the low-rank part).
    collect_every: steps between snapshots; default a quarter epoch.
    lr: the constant learning rate; default ``ctx.projected_lr`` (core spaces) or the fine-tuning
        lr (full) — the rate the MAP was found with.
    batch_size: default the context's fine-tuning batch size.
    covariance: "swag" (½ diag + low rank), "diag" or "low_rank" (:class:`Covariance`).
    scale: multiplies the covariance at sampling time; "dev": the multiplier of
        :data:`~bayes_lora.inference.base.DEV_SCALE_GRID` whose predictive has the lowest NLL on
        ``ctx.dev`` (the task's dev split; 1/64 is nearly the SWA mean).
    space: "projected" (LoRA-XS cores + head, from the projected MAP), "adapter" (r×r cores +
        head between the SVD factors of the first anchor's update, from that anchor) or "full"
        (LoRA vector θ from the anchor).
    seed: batch order of the SWAG run (default ``ctx.seed``).
    """
    kind = _check_options(snapshots, space)
    check_scale(scale, "swag")
    dev = ctx.require_dev("swag: scale='dev'") if scale == "dev" else None  # before the collection
    covariance = Covariance(covariance).value
    seed = ctx.seed if seed is None else int(seed)
    batch_size = batch_size or ctx.train_config.batch_size
    if kind is SpaceKind.PROJECTED:
        pm = ctx.require_projected()
        sp: ParameterSpace = pm.space
        init = pm.core
        lr = ctx.projected_lr if lr is None else lr
    elif kind is SpaceKind.ADAPTER:
        sp = ctx.adapter_space(0)
        init = sp.initial()
        lr = ctx.projected_lr if lr is None else lr
    else:
        sp = FullSpace(ctx.fm.layout)
        init = ctx.require_anchors(1)[0]
        lr = ctx.train_config.lr if lr is None else lr
    fm = ctx.fm.with_layout(sp.layout)  # LoRA-XS cores of their own rank: a rank-k θ
    if collect_every is None:
        collect_every = max(1, _steps_per_epoch(len(ctx.train), batch_size) // 4)
    res = collect_snapshots(
        fm, sp, ctx.train, init,
        snapshots=snapshots, collect_every=collect_every, lr=lr, batch_size=batch_size,
        seed=seed, weight_decay=weight_decay, grad_clip=ctx.train_config.grad_clip,
        progress=ctx.progress, checkpoint=ctx.checkpoint("swag"),
    )
    mean, var, deviations = swag_moments(torch.stack(res.snapshots))
    options = {
        "snapshots": snapshots, "collect_every": collect_every, "lr": lr, "batch_size": batch_size,
        "covariance": covariance, "scale": scale, "space": kind.value,
        "weight_decay": weight_decay, "seed": seed,
    }
    stats = {
        "steps": len(res.losses),
        "snapshots": snapshots,
        "dim": sp.dim,
        "mean_var": float(var.mean()),
        "deviation_norm": float(deviations.norm(dim=0).mean()),
        "distance_from_init": float((mean - init).norm()),
        "final_loss": float(sum(res.losses[-collect_every:]) / min(collect_every, len(res.losses))),
        "map_seconds": float(ctx.projected.seconds) if kind is SpaceKind.PROJECTED else 0.0,
    }
    def make(s: float) -> SwagPosterior:
        return SwagPosterior(fm, sp, mean, var, deviations, covariance=covariance, scale=s, options=options,
                             info=FitInfo(res.seconds, res.losses, stats))

    if dev is None:
        return make(float(scale))
    posts = [make(s) for s in DEV_SCALE_GRID]
    best, stats["dev_choice"] = choose_on_dev(posts, DEV_SCALE_GRID, dev, parameter="scale", prefer_low=True,
                                              reference=1.0, reference_name="default", seed=seed)
    return posts[best]
