"""The curve posterior's Pyro model: t (and z) are the only random variables.

    t ~ Uniform(0, 1) or Beta(a, b)
    z ~ Normal(0, σ_z² I_d)                      (optional)
    θ = g(φ(t) + P z)                            (φ the Bézier curve, g the space's map to θ)
    y_i ~ Categorical(logits = f(x_i; θ)),  i in plate("data", N, subsample_size=B), / T

The frozen transformer stays a plain ``nn.Module`` evaluated functionally; the curve's control
points are frozen buffers; only ``t`` and ``z`` are :class:`~pyro.nn.PyroSample` attributes.
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroSample
from torch import Tensor

from ..lora.curves import BezierCurve
from ..lora.spaces import ParameterSpace, orthonormal_span, random_basis
from .likelihood import TaskLogits
from .spec import CurvePosteriorSpec


def offset_basis(curve: BezierCurve, spec: CurvePosteriorSpec) -> Tensor | None:
    """P [d_latent, dim]: orthonormalised control-point differences, filled up with seeded random
    directions (or seeded random only); None when the offset is switched off."""
    k = spec.offset.dim
    if k == 0:
        return None
    n = curve.dim
    if spec.offset.basis == "control_points":
        cp = curve.control_points().detach()
        span = orthonormal_span(cp[1:] - cp[:1], k)
        if span.shape[1] < k:
            extra = random_basis(n, k - span.shape[1] + 2, spec.offset.seed)
            extra = extra - span @ (span.T @ extra)
            span = torch.cat([span, orthonormal_span(extra.T, k - span.shape[1])], dim=1)
        return span[:, :k].contiguous()
    return random_basis(n, k, spec.offset.seed)


class CurveModel(PyroModule):
    """Root Pyro model of a curve posterior.

    Parameters
    ----------
    spec: the declared posterior.
    curve: the trained curve (its control points are copied and frozen).
    space: maps the curve's latent coordinates to θ (a FullSpace for curves in LoRA space).
    likelihood: class logits of the training examples at θ.
    """

    def __init__(self, spec: CurvePosteriorSpec, curve: BezierCurve, space: ParameterSpace, likelihood: TaskLogits):
        if spec.temperature == "dev":
            raise ValueError("posterior temperature = 'dev' is chosen when the posterior is fitted (fit('curve', ...) "
                             "with a dev task); a CurveModel needs a number")
        super().__init__()
        self.spec = spec
        self.segments, self.degree = curve.segments, curve.degree
        self.register_buffer("control_points", curve.control_points().detach().clone())
        basis = offset_basis(curve, spec)
        self.register_buffer("basis", basis if basis is not None else torch.zeros(curve.dim, 0))
        self._space = (space,)  # not a submodule: never turned into Pyro parameters
        self._lik = (likelihood,)
        self.t = PyroSample(spec.t_prior.distribution())
        if spec.offset.dim:
            self.z = PyroSample(
                dist.Normal(torch.zeros(spec.offset.dim), spec.offset.scale).to_event(1)
            )

    @property
    def t_prior(self):
        """The prior on t the model samples from (``spec.t_prior`` unless ``model.t`` was set to
        another :class:`~pyro.nn.PyroSample`): what the grid and the cached-logit paths use."""
        return self._pyro_samples["t"]

    def t_log_prior(self, t: Tensor) -> Tensor:
        """log p(t) under :attr:`t_prior` (t clamped into (0, 1) for densities infinite at the ends)."""
        return self.t_prior.log_prob(t.clamp(1e-6, 1 - 1e-6))

    @property
    def space(self) -> ParameterSpace:
        return self._space[0]

    @property
    def likelihood(self) -> TaskLogits:
        return self._lik[0]

    def latent_point(self, t: Tensor, z: Tensor | None = None) -> Tensor:
        """φ(t) + P z in the space's latent coordinates ([d] for scalar t, [T, d] for t [T])."""
        from ..lora.curves import bernstein_matrix

        scalar = t.dim() == 0
        w = bernstein_matrix(t, self.segments, self.degree) @ self.control_points
        if z is not None and self.basis.shape[1]:
            w = w + z.reshape(-1, self.basis.shape[1]) @ self.basis.T
        return w[0] if scalar else w

    def theta(self, t: Tensor, z: Tensor | None = None) -> Tensor:
        return self.space.to_theta(self.latent_point(t, z))

    def forward(self) -> Tensor:
        t = self.t
        z = self.z if self.spec.offset.dim else None
        theta = self.theta(t, z)
        lik = self.likelihood
        n = lik.num_examples
        with pyro.plate("data", n, subsample_size=self.spec.subsample_size) as idx:
            full = self.spec.subsample_size is None or self.spec.subsample_size >= n
            logits = lik.logits(theta, None if full else idx)
            with pyro.poutine.scale(scale=1.0 / self.spec.temperature):
                pyro.sample("obs", dist.Categorical(logits=logits), obs=lik.labels[idx])
        return theta

    @torch.no_grad()
    def log_likelihood_grid(self, t: Tensor) -> Tensor:
        """Σ_i log p(y_i | x_i, φ(t_g)) / T for every grid point t_g (no offset): [G]."""
        lik = self.likelihood
        out = []
        for tg in t:
            logits = lik.logits(self.theta(tg))
            ll = torch.distributions.Categorical(logits=logits).log_prob(lik.labels).sum()
            out.append(ll / self.spec.temperature)
        return torch.stack(out)
