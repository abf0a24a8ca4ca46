"""Variational inference with Pyro SVI over a few LoRA latents.

Two variants (``kind``):

* **projected** (default): a Gaussian q(w) over the LoRA-XS latent w (cores + head; Bałazy et al.
  2024, B-LoRA-XS) — mean-field (``AutoNormal``) or diagonal + low rank
  (``AutoLowRankMultivariateNormal``), initialised at the projected MAP ``ctx.projected``.
* **blob**: BLoB-like (Wang et al. 2024, "BLoB: Bayesian Low-Rank Adaptation by
  Backpropagation"): a mean-field Gaussian over the entries of every LoRA ``A`` factor, with the
  ``B`` factors and the head held deterministic at the anchor ``ctx.anchors[0]`` (BLoB trains B
  jointly as a point estimate; here it stays at the fine-tuned value). Initialised at the anchor's A.

The Pyro model is small: the latent w is its only sample site, with a zero-centred prior
N(0, prior_scale² I); the transformer stays a plain module evaluated functionally at
θ = space.to_theta(w)::

    w ~ N(0, σ_p² I_d)
    y_i ~ Categorical(logits = f(x_i; θ(w)))      i in pyro.plate("data", N, subsample=idx)

fitted by maximising the Monte Carlo ELBO (``Trace_ELBO``; Pyro's autoguides sample an auxiliary
site and a Delta, so ``TraceMeanField_ELBO`` would give the same estimate) with
``ClippedAdam`` on minibatches; the plate rescales the minibatch log-likelihood by N/B.
After fitting, q is kept as plain tensors — loc μ, diagonal scale s and, for the low-rank guide,
the factor L — with covariance diag(s²) + L Lᵀ, so a saved posterior is rebuilt and sampled
(w = μ + s ⊙ ε₁ + L ε₂, seeded) without Pyro or pickle.

Functional core: :func:`latent_model` (prior × likelihood), :func:`run_svi` (guide + SVI loop →
:class:`GaussianQ`); :func:`fit_vi` is the registered driver.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import Tensor

from ..lora.params import FunctionalModel
from ..lora.rng import seeded
from ..lora.spaces import MaskedSpace, ParameterSpace, ProjectedSpace
from ..lora.train import NumericalError
from ..types import EncodedTask, FitInfo
from .base import (
    DEV_SCALE_GRID,
    FitContext,
    Posterior,
    check_scale,
    check_space,
    choose_on_dev,
    needs_for_space,
)
from .registry import register


class Kind(str, Enum):
    """Which latent the variational Gaussian is over."""

    PROJECTED = "projected"
    """LoRA-XS cores + head, initialised at the projected MAP."""
    BLOB = "blob"
    """The entries of every LoRA A factor; B and head fixed at the anchor (BLoB-like)."""


class Guide(str, Enum):
    """The variational family."""

    MEAN_FIELD = "mean_field"
    """Diagonal Gaussian (Pyro ``AutoNormal``)."""
    LOW_RANK = "low_rank"
    """Diagonal + rank-k Gaussian (Pyro ``AutoLowRankMultivariateNormal``, k = ``guide_rank``)."""


#: defaults per kind (prior scale σ_p, ClippedAdam lr of q's mean and ``scale_lr`` of its scales,
#: initial std of q). Projected: a weak prior on the LoRA-XS cores. Blob: chosen on the SST-2
#: *dev* split (``benchmarks/vi_dev.py``; the numbers are in docs/tuning.md): with Adam each
#: coordinate of the mean moves by about lr per step whatever its gradient, so one large step for
#: mean and scales lets the mean of the A entries random-walk away from the anchor; a small step
#: for the mean, a large one for the scales and a prior of the A entries' own size keep it there.
DEFAULTS = {
    Kind.PROJECTED: {"prior_scale": 1.0, "lr": 3e-3, "init_scale": 5e-2},
    Kind.BLOB: {"prior_scale": 0.05, "lr": 1e-4, "scale_lr": 3e-2, "init_scale": 1e-2},
}


# --- the variational Gaussian ----------------------------------------------------------------
@dataclass(frozen=True)
class GaussianQ:
    """A fitted Gaussian q(w) = N(loc, diag(scale²) + cov_factor cov_factorᵀ).

    Attributes
    ----------
    loc: μ [d].
    scale: the diagonal standard deviations s [d].
    cov_factor: L [d, k] of the low-rank guide, or None (mean field).
    """

    loc: Tensor
    scale: Tensor
    cov_factor: Tensor | None = None

    @property
    def dim(self) -> int:
        return self.loc.shape[0]

    def sample(self, n: int, *, seed: int = 0) -> Tensor:
        """``n`` draws [n, d], seeded (same seed → same draws)."""
        g = torch.Generator().manual_seed(int(seed))
        out = self.loc + torch.randn(n, self.dim, generator=g) * self.scale
        if self.cov_factor is not None:
            out = out + torch.randn(n, self.cov_factor.shape[1], generator=g) @ self.cov_factor.T
        return out

    def covariance(self) -> Tensor:
        """The dense covariance [d, d]."""
        cov = torch.diag(self.scale.pow(2))
        if self.cov_factor is not None:
            cov = cov + self.cov_factor @ self.cov_factor.T
        return cov

    def tensors(self) -> dict[str, Tensor]:
        out = {"loc": self.loc, "scale": self.scale}
        if self.cov_factor is not None:
            out["cov_factor"] = self.cov_factor
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> GaussianQ:
        return cls(tensors["loc"], tensors["scale"], tensors.get("cov_factor"))


# --- functional core: model and SVI ----------------------------------------------------------
#: ``likelihood(w, idx) -> (distribution over the observations idx, observed values)``
Likelihood = Callable[[Tensor, Tensor], tuple[Any, Tensor]]


def latent_model(
    dim: int, prior_scale: float | Tensor, n: int, likelihood: Likelihood, *, temperature: float = 1.0
):
    """The Pyro model ``model(idx)``: w ~ N(0, σ_p² I_d); y_idx ~ likelihood(w, idx) in a
    ``pyro.plate("data", n, subsample=idx)`` (log-likelihood scaled by n/|idx|), divided by the
    likelihood temperature T (T < 1 is the same as weighting the KL term of the ELBO by T)."""
    import pyro
    import pyro.distributions as dist

    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scale = torch.as_tensor(prior_scale, dtype=torch.float32).expand(dim)

    def model(idx: Tensor):
        w = pyro.sample("w", dist.Normal(torch.zeros(dim), scale).to_event(1))
        with pyro.plate("data", n, subsample=idx), pyro.poutine.scale(scale=1.0 / temperature):
            d, y = likelihood(w, idx)
            pyro.sample("y", d, obs=y)

    return model


def classifier_likelihood(fm: FunctionalModel, space: ParameterSpace, task: EncodedTask) -> Likelihood:
    """Categorical likelihood of the task's labels at θ = space.to_theta(w)."""
    import pyro.distributions as dist

    def likelihood(w: Tensor, idx: Tensor):
        batch = next(iter(task.subset(idx).batches(len(idx))))
        logits = task.class_logits(fm.forward_at(space.to_theta(w)), batch)
        return dist.Categorical(logits=logits), batch["labels"]

    return likelihood


def _index_stream(n: int, batch_size: int, g: torch.Generator):
    """Minibatch indices: shuffled epochs without replacement (full batch if batch_size ≥ n)."""
    while True:
        if batch_size >= n:
            yield torch.arange(n)
            continue
        perm = torch.randperm(n, generator=g)
        for lo in range(0, n - batch_size + 1, batch_size):
            yield perm[lo : lo + batch_size]


def _per_param_steps(lr: float, scale_lr: float, lr_decay: float, clip_norm: float):
    """ClippedAdam's per-parameter options: ``scale_lr`` for the guide's scales and low-rank
    factor (Pyro names them ``…scales…`` / ``…scale`` / ``…cov_factor``), ``lr`` for its mean."""

    def options(name: str) -> dict:
        spread = "scale" in name or "cov_factor" in name
        return {"lr": scale_lr if spread else lr, "lrd": lr_decay, "clip_norm": clip_norm}

    return options


def run_svi(
    model,
    init: Tensor,
    n: int,
    *,
    steps: int,
    batch_size: int,
    guide: Guide | str = Guide.MEAN_FIELD,
    guide_rank: int = 4,
    init_scale: float = 1e-2,
    lr: float = 1e-2,
    scale_lr: float | None = None,
    lr_decay: float = 1.0,
    clip_norm: float = 10.0,
    num_particles: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> tuple[GaussianQ, list[float]]:
    """Fit an autoguide to ``model(idx)`` (whose one latent site is ``"w"``) by SVI.

    The guide's mean starts at ``init`` and its scales at ``init_scale``. Minibatch indices come
    from a generator seeded by ``seed``, the guide's noise from the global RNGs seeded by ``seed``
    inside :func:`~bayes_lora.lora.rng.seeded` (the caller's RNG state is left untouched), and the
    parameters live in a scoped Pyro param store (the caller's store is left untouched).
    ``lr_decay`` is ClippedAdam's per-step factor ``lrd``; ``scale_lr`` (default ``lr``) is the
    step of the guide's scale (and low-rank factor) parameters, ``lr`` that of its mean. Returns
    q and the loss (−ELBO estimate) of every step.
    """
    from pyro.infer import SVI, Trace_ELBO
    from pyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal, init_to_value
    from pyro.optim import ClippedAdam
    from tqdm.auto import tqdm

    guide = Guide(guide)
    init_fn = init_to_value(values={"w": init.detach().clone().float()})
    g = torch.Generator().manual_seed(int(seed))
    losses: list[float] = []
    with seeded(seed, pyro_params=True):
        if guide is Guide.MEAN_FIELD:
            q_fn = AutoNormal(model, init_loc_fn=init_fn, init_scale=float(init_scale))
        else:
            q_fn = AutoLowRankMultivariateNormal(
                model, init_loc_fn=init_fn, init_scale=float(init_scale), rank=int(guide_rank)
            )
        svi = SVI(
            model, q_fn,
            ClippedAdam(_per_param_steps(lr, lr if scale_lr is None else scale_lr, lr_decay, clip_norm)),
            Trace_ELBO(num_particles=num_particles),
        )
        stream = _index_stream(n, batch_size, g)
        bar = tqdm(total=steps, desc="svi", disable=not progress, leave=False)
        for step in range(steps):
            loss = svi.step(next(stream))
            if not math.isfinite(loss):
                bar.close()
                raise NumericalError(
                    f"vi: the loss became {loss} at step {step} (lower lr or init_scale)", step=step
                )
            losses.append(loss)
            bar.update(1)
        bar.close()
        with torch.no_grad():
            if guide is Guide.MEAN_FIELD:
                loc, scale = q_fn._get_loc_and_scale("w")
                q = GaussianQ(loc.detach().clone(), scale.detach().clone())
            else:
                scale = q_fn.scale.detach().clone()
                factor = (q_fn.cov_factor * scale.unsqueeze(-1)).detach().clone()
                q = GaussianQ(q_fn.loc.detach().clone(), scale, factor)
    return q, losses


# --- posterior -------------------------------------------------------------------------------
class VIPosterior(Posterior):
    """q(w) mapped to θ by a space (projected LoRA-XS, or the A entries of θ for blob).

    Attributes
    ----------
    space: the latent's space.
    q: the fitted :class:`GaussianQ`.
    kind: :class:`Kind`.
    scale: multiplies q's covariance at sampling time (1: q itself).
    """

    method = "vi"

    def __init__(self, fm: FunctionalModel, space: ParameterSpace, q: GaussianQ, *, kind: Kind | str,
                 scale: float = 1.0, **kw):
        super().__init__(fm, **kw)
        if q.dim != space.dim:
            raise ValueError(f"q has {q.dim} coordinates, the space {space.dim}")
        check_scale(scale, "vi", allow_dev=False)
        self.space = space
        self.q = q
        self.kind = Kind(kind)
        self.scale = float(scale)

    def sample_latents(self, n: int, *, seed: int = 0) -> Tensor:
        """Draws w ~ q [n, d], their spread about q's mean times √scale (the same noise for every
        scale with one seed)."""
        w = self.q.sample(n, seed=seed)
        return w if self.scale == 1.0 else self.q.loc + math.sqrt(self.scale) * (w - self.q.loc)

    def sample_thetas(self, n: int, *, seed: int = 0) -> Tensor:
        with torch.no_grad():
            return self.space.to_theta(self.sample_latents(n, seed=seed))

    def latent_samples(self, n: int, *, seed: int = 0) -> dict[str, Tensor]:
        w = self.sample_latents(n, seed=seed)
        if isinstance(self.space, ProjectedSpace):
            out = {"core": w[..., : self.space.core_dim]}
            if self.space.dim > self.space.core_dim:
                out["head"] = w[..., self.space.core_dim :]
            return out
        return {"lora_A": w}

    def state(self):
        tensors = dict(self.q.tensors())
        meta = {"kind": self.kind.value, "scale": self.scale}
        if self.kind is Kind.BLOB:
            tensors["base"] = self.space.base
            tensors["index"] = self.space.index
        else:
            meta["include_other"] = self.space.include_other
        return tensors, meta

    @classmethod
    def from_state(cls, fm, tensors, meta, ctx=None):
        kind = Kind(meta["kind"])
        if kind is Kind.BLOB:
            space: ParameterSpace = MaskedSpace(fm.layout, tensors["base"], tensors["index"])
        else:
            include_other = meta.get("include_other", True)
            if ctx is not None and ctx.fm.model is fm.model and include_other \
                    and ctx.projected_space().layout == fm.layout:
                space = ctx.projected_space()
            else:
                space = ProjectedSpace(fm.model, fm.layout, include_other=include_other)
        return cls(fm, space, GaussianQ.from_tensors(tensors), kind=kind, scale=meta.get("scale", 1.0))


def _check(options, model) -> None:
    check_scale(options["scale"], "vi")
    check_space("kind")(options, model)


@register("vi", VIPosterior, choices={"kind": Kind, "guide": Guide}, needs=needs_for_space("kind", dev="scale"),
          check=_check)
def fit_vi(
    ctx: FitContext,
    *,
    kind: str = Kind.PROJECTED.value,
    guide: str = Guide.MEAN_FIELD.value,
    guide_rank: int = 8,
    prior_scale: float | None = None,
    temperature: float = 1.0,
    init_scale: float | None = None,
    steps: int = 500,
    lr: float | None = None,
    scale_lr: float | None = None,
    lr_decay: float = 1.0,
    batch_size: int | None = None,
    num_particles: int = 1,
    anchor: int = 0,
    scale: float | str = 1.0,
    seed: int | None = None,
) -> VIPosterior:
    """Pyro SVI over the LoRA-XS latent (``kind="projected"``) or the LoRA A entries (``"blob"``).

    Parameters
    ----------
    kind: "projected" (cores + head, from ``ctx.projected``) or "blob" (A entries, B and
        head fixed at anchor ``anchor``).
    guide: "mean_field" (AutoNormal) or "low_rank" (AutoLowRankMultivariateNormal of rank
        ``guide_rank``).
    prior_scale: σ_p of the zero-centred prior N(0, σ_p²); default 1.0 (projected), 0.05 (blob).
    temperature: likelihood temperature T (log-likelihood / T); T < 1 down-weights the KL term
        (with d ≈ 1,500 cores and N = 2,000 sentences the KL dominates the ELBO at T = 1).
    init_scale: initial standard deviation of q; default 0.05 (projected), 0.01 (blob).
    steps, lr, lr_decay, batch_size: the SVI loop (ClippedAdam; lr, the step of q's mean, default
        3e-3 (projected), 1e-4 (blob); batch default: the context's).
    scale_lr: ClippedAdam's step for q's scales; default ``lr`` (projected), 3e-2 (blob).
    num_particles: Monte Carlo samples of the ELBO per step.
    scale: multiplies q's covariance at sampling time; "dev": the multiplier of
        :data:`~bayes_lora.inference.base.DEV_SCALE_GRID` whose predictive has the lowest NLL on
        ``ctx.dev`` (the task's dev split; 1/64 is nearly q's mean).
    seed: guide noise and minibatch order (default ``ctx.seed``).

    ``info.losses`` holds the loss −ELBO of every step (a one-minibatch estimate, scaled to the
    N examples; it decreases); ``info.stats["elbo"]`` is the mean ELBO of the last 50 steps.
    """
    kind_ = Kind(kind)
    guide_ = Guide(guide)
    check_scale(scale, "vi")
    dev = ctx.require_dev("vi: scale='dev'") if scale == "dev" else None  # before the SVI loop
    seed = ctx.seed if seed is None else int(seed)
    batch_size = batch_size or ctx.train_config.batch_size
    defaults = DEFAULTS[kind_]
    prior_scale = defaults["prior_scale"] if prior_scale is None else float(prior_scale)
    lr = defaults["lr"] if lr is None else float(lr)
    scale_lr = defaults.get("scale_lr", lr) if scale_lr is None else float(scale_lr)
    init_scale = defaults["init_scale"] if init_scale is None else float(init_scale)
    if kind_ is Kind.PROJECTED:
        pm = ctx.require_projected()
        space: ParameterSpace = pm.space
        init = pm.core
    else:
        space = MaskedSpace.lora_a(ctx.fm.layout, ctx.require_anchors(anchor + 1)[anchor])
        init = space.initial()
    fm = ctx.fm.with_layout(space.layout)  # LoRA-XS cores of their own rank: a rank-k θ
    n = len(ctx.train)
    model = latent_model(space.dim, prior_scale, n, classifier_likelihood(fm, space, ctx.train),
                         temperature=temperature)
    start = time.perf_counter()
    q, losses = run_svi(
        model, init, n, steps=steps, batch_size=batch_size, guide=guide_, guide_rank=guide_rank,
        init_scale=init_scale, lr=lr, scale_lr=scale_lr, lr_decay=lr_decay, num_particles=num_particles,
        seed=seed, progress=ctx.progress,
    )
    seconds = time.perf_counter() - start
    tail = losses[-min(50, len(losses)):]
    options = {
        "kind": kind_.value, "guide": guide_.value, "guide_rank": guide_rank, "prior_scale": prior_scale,
        "temperature": temperature, "init_scale": init_scale, "steps": steps, "lr": lr, "scale_lr": scale_lr,
        "lr_decay": lr_decay, "batch_size": batch_size, "num_particles": num_particles,
        "anchor": anchor, "scale": scale, "seed": seed,
    }
    stats = {
        "elbo": -sum(tail) / len(tail),
        "steps": steps,
        "guide": guide_.value,
        "dim": space.dim,
        "mean_scale": float(q.scale.mean()),
        "loc_shift": float((q.loc - init).norm()),
        "map_seconds": float(ctx.projected.seconds) if kind_ is Kind.PROJECTED else 0.0,
    }
    info = FitInfo(seconds, tuple(losses), stats)
    if dev is None:
        return VIPosterior(fm, space, q, kind=kind_, scale=float(scale), options=options, info=info)
    posts = [VIPosterior(fm, space, q, kind=kind_, scale=s, options=options, info=info) for s in DEV_SCALE_GRID]
    best, stats["dev_choice"] = choose_on_dev(posts, DEV_SCALE_GRID, dev, parameter="scale", prefer_low=True,
                                              reference=1.0, reference_name="q", seed=seed)
    return posts[best]
