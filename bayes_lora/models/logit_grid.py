"""The curve posterior over t from cached logits: a NumPyro model that needs no torch forward.

Along a fixed curve (no offset z), the likelihood depends on t only through the class logits
f_i(φ(t)) of the training examples. They are smooth in t, so we evaluate the transformer once at
G knots t_0 … t_{G−1} (G forward passes over the likelihood examples) and interpolate the logits
between knots with C¹ cubic Hermite (Catmull–Rom) splines. The potential
−log p(t) − (1/T) Σ_i log softmax(f̃_i(t))[y_i] then costs microseconds in JAX, so NUTS can run
thousands of iterations and several chains — the reason NumPyro is used here (a torch forward
pass cannot run inside NumPyro, cached logits can).

The interpolation error is measured, not assumed: :meth:`LogitGrid.check` compares the
interpolated log-likelihood with the exact one at points between the knots.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .curve import CurveModel


@dataclass
class LogitGrid:
    """Class logits of the likelihood examples at G equally spaced knots of t: [G, n, C]."""

    knots: np.ndarray  # [G]
    logits: np.ndarray  # [G, n, C]
    labels: np.ndarray  # [n]
    temperature: float
    prior: tuple[str, tuple[float, ...]]
    seconds: float = 0.0

    @classmethod
    @torch.no_grad()
    def build(cls, model: CurveModel, knots: int = 33) -> LogitGrid:
        prior = numpyro_t_prior(model.t_prior)  # refuses a prior it cannot honour, before any work
        if model.spec.offset.dim:
            raise ValueError("cached logits cover t alone: set offset.dim = 0 (or logit_cache = 0)")
        if knots < 4:
            raise ValueError(f"logit_cache needs at least 4 knots, got {knots}")
        lik = model.likelihood
        return cls.tabulate(lambda tk: lik.logits(model.theta(tk)), knots, lik.labels, model.spec.temperature, prior)

    @classmethod
    @torch.no_grad()
    def tabulate(cls, logits_at, knots: int, labels: Tensor, temperature: float,
                 prior: tuple[str, tuple[float, ...]]) -> LogitGrid:
        """``logits_at(t)`` ([n, C] class logits at a scalar t) at ``knots`` equally spaced t."""
        import time

        start = time.perf_counter()
        t = torch.linspace(0, 1, knots)
        logits = torch.stack([logits_at(tk) for tk in t])
        # logits of a GPU model come back to host memory for NumPyro
        return cls(t.numpy(), logits.double().cpu().numpy(), labels.cpu().numpy(), float(temperature), prior,
                   time.perf_counter() - start)

    # ------------------------------------------------------------------------------------------
    def interpolate(self, t):
        """Interpolated logits [n, C] at scalar t (JAX, differentiable; works on numpy too)."""
        import jax.numpy as jnp

        L = jnp.asarray(self.logits)
        G = L.shape[0]
        pos = jnp.clip(t, 0.0, 1.0) * (G - 1)
        i = jnp.clip(jnp.floor(pos).astype(jnp.int32), 0, G - 2)
        u = pos - i
        p0 = L[jnp.maximum(i - 1, 0)]
        p1 = L[i]
        p2 = L[i + 1]
        p3 = L[jnp.minimum(i + 2, G - 1)]
        # one-sided tangents at the ends, central (Catmull–Rom) inside
        m1 = jnp.where(i == 0, p2 - p1, (p2 - p0) / 2)
        m2 = jnp.where(i + 2 > G - 1, p2 - p1, (p3 - p1) / 2)
        u2, u3 = u * u, u * u * u
        h00, h10, h01, h11 = 2 * u3 - 3 * u2 + 1, u3 - 2 * u2 + u, -2 * u3 + 3 * u2, u3 - u2
        return h00 * p1 + h10 * m1 + h01 * p2 + h11 * m2

    def log_likelihood(self, t):
        """(1/T) Σ_i log p(y_i | f̃_i(t)) at scalar t (JAX)."""
        import jax
        import jax.numpy as jnp

        logp = jax.nn.log_softmax(self.interpolate(t), axis=-1)
        return jnp.take_along_axis(logp, jnp.asarray(self.labels)[:, None], axis=-1).sum() / self.temperature

    def numpyro_model(self):
        """A NumPyro model with one latent ``t`` and the interpolated likelihood as a factor."""
        import numpyro
        import numpyro.distributions as ndist

        name, params = self.prior
        prior = ndist.Uniform(0.0, 1.0) if name == "uniform" else ndist.Beta(*params)

        def model():
            t = numpyro.sample("t", prior)
            numpyro.factor("loglik", self.log_likelihood(t))

        return model

    @torch.no_grad()
    def check(self, exact_loglik, points: int = 4) -> dict:
        """Exact vs interpolated log-likelihood at ``points`` t between knots (the largest error).

        ``exact_loglik(ts)``: the tempered log-likelihood (1/T) Σ_i log p(y_i | θ(t)) at each t of
        ``ts`` [points], e.g. :meth:`CurveModel.log_likelihood_grid`."""
        G = len(self.knots)
        idx = np.linspace(0, G - 2, points).round().astype(int)
        ts = (self.knots[idx] + self.knots[idx + 1]) / 2
        exact = torch.as_tensor(exact_loglik(torch.tensor(ts, dtype=torch.float32))).double().numpy()
        approx = np.array([float(self.log_likelihood(float(t))) for t in ts])
        return {"t": ts.tolist(), "exact": exact.tolist(), "interpolated": approx.tolist(),
                "max_abs_error": float(np.max(np.abs(exact - approx)))}


def numpyro_t_prior(fn) -> tuple[str, tuple[float, ...]]:
    """The NumPyro equivalent of a torch / Pyro prior on t ∈ [0, 1]: ("uniform", ()) or
    ("beta", (a, b)); any other prior raises (the cached path never replaces a prior)."""
    import pyro.distributions as dist

    base = fn
    while isinstance(base, dist.Independent) and base.reinterpreted_batch_ndims == 0:
        base = base.base_dist
    if isinstance(base, torch.distributions.Uniform):
        lo, hi = float(base.low), float(base.high)
        if (lo, hi) == (0.0, 1.0):
            return "uniform", ()
        raise ValueError(f"the cached-logit path covers t ∈ [0, 1]; the prior is Uniform({lo}, {hi})")
    if isinstance(base, torch.distributions.Beta):
        a, b = float(base.concentration1), float(base.concentration0)
        return "beta", (a, b)
    raise ValueError(f"the cached-logit path honours Uniform(0, 1) and Beta(a, b) priors on t; the model's "
                     f"prior is {type(fn).__name__}: sample the model exactly instead (bayes_lora.mcmc for a model "
                     "you wrote, logit_cache = 0 for the built-in curve)")


def run_numpyro_nuts(grid: LogitGrid, *, num_samples: int, warmup: int, num_chains: int, seed: int,
                     max_tree_depth: int = 10, kind: str = "nuts") -> tuple[Tensor, dict]:
    """NUTS (or HMC) over t on the cached potential: t [chains, draws] and per-draw statistics."""
    import jax
    from numpyro.infer import HMC, MCMC, NUTS

    model = grid.numpyro_model()
    kernel = NUTS(model, max_tree_depth=max_tree_depth) if kind == "nuts" else HMC(model, num_steps=8)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(int(seed)), extra_fields=("diverging", "accept_prob", "num_steps", "energy",
                                                          "adapt_state.step_size"))
    t = np.asarray(mcmc.get_samples(group_by_chain=True)["t"]).reshape(num_chains, num_samples)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    div = np.asarray(extra["diverging"]).reshape(num_chains, num_samples)
    stats = {
        "diverging": div.tolist(),
        "divergences": div.sum(1).astype(int).tolist(),
        "num_divergences": int(div.sum()),
        "acceptance_rate": np.asarray(extra["accept_prob"]).mean(1).tolist(),
        "step_size": np.asarray(extra["adapt_state.step_size"])[:, -1].tolist(),
        "n_steps": np.asarray(extra["num_steps"]).reshape(num_chains, num_samples).tolist(),
        "energy": np.asarray(extra["energy"]).reshape(num_chains, num_samples).tolist(),
        "kernel": f"{kind}-numpyro-cached-logits",
    }
    return torch.tensor(t, dtype=torch.float32), stats


def run_numpyro_svi(grid: LogitGrid, *, steps: int, lr: float, num_samples: int, seed: int,
                    guide: str = "normal") -> tuple[Tensor, dict, list[float]]:
    """SVI with a NumPyro autoguide on the cached potential: draws t [1, S], stats, losses."""
    import jax
    from numpyro.infer import SVI, Trace_ELBO
    from numpyro.infer.autoguide import AutoLowRankMultivariateNormal, AutoNormal
    from numpyro.optim import Adam

    model = grid.numpyro_model()
    g = AutoNormal(model, init_scale=0.1) if guide == "normal" else AutoLowRankMultivariateNormal(model, init_scale=0.1)
    svi = SVI(model, g, Adam(lr), Trace_ELBO())
    res = svi.run(jax.random.PRNGKey(int(seed)), steps, progress_bar=False)
    losses = np.asarray(res.losses).tolist()
    if not np.all(np.isfinite(losses)):
        from ..lora.train import NumericalError

        bad = int(np.argmin(np.isfinite(losses)))
        raise NumericalError(f"curve SVI on cached logits: the ELBO became non-finite at step {bad} (lower svi_lr)",
                             step=bad)
    draws = g.sample_posterior(jax.random.PRNGKey(int(seed) + 1), res.params, sample_shape=(num_samples,))
    t = torch.tensor(np.asarray(draws["t"]), dtype=torch.float32).reshape(1, -1)
    return t, {"kernel": f"svi-{guide}-numpyro-cached-logits", "final_elbo": -float(losses[-1])}, losses


__all__ = ["LogitGrid", "numpyro_t_prior", "run_numpyro_nuts", "run_numpyro_svi"]
