"""Bayesian comparison of methods over seeds and tasks (NumPyro NUTS).

One metric (e.g. NLL) measured for every method on several seeds and tasks is modelled as

.. math::

    y_{m,k,s} \\sim \\mathcal N(\\mu_k + \\delta_m,\\ \\sigma^2), \\qquad
    \\mu_k \\sim \\mathcal N(0, 1), \\qquad
    \\delta \\sim \\mathrm{ZeroSumNormal}(\\tau), \\qquad
    \\tau, \\sigma \\sim \\mathcal N^+(0, 1),

on standardised data: the values are centred per task and divided by one pooled standard
deviation ``scale``, so the priors are weakly informative whatever the metric's units. Method
m's effect ``δ_m`` is shared by all tasks and sums to zero over the methods (so it is
identified against the task intercepts ``μ_k``); ``τ`` partially pools the effects (the usual
hierarchical shrinkage, Gelman et al. 2013, *Bayesian Data Analysis*, ch. 5). Seeds are
exchangeable replicates with noise ``σ``. Reporting posterior probabilities that one method
beats another, rather than p-values, follows Benavoli et al. (2017), "Time for a change: a
tutorial for comparing multiple classifiers through Bayesian analysis" (JMLR 18).

Differences are reported on the original scale, ``effect_m = scale · δ_m``: for a pair (a, b),
``diff = effect_a − effect_b`` is the expected value of method a minus that of method b,
``P(a better than b)`` is ``P(diff < 0)`` when lower is better (NLL, ECE) and ``P(diff > 0)``
otherwise (accuracy), with a highest-density interval of ``diff``.

numpyro, jax and arviz are imported inside :func:`compare_methods`; this module imports numpy
and pandas.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import arviz as az

__all__ = ["CENTERED_MIN_F", "METHOD_DIM", "MethodComparison", "compare_methods"]

#: Name of the methods' dimension in the fit's InferenceData. Not "method": xarray's
#: ``Dataset.sel`` takes ``method=`` as its inexact-matching option (and arviz.summary breaks).
METHOD_DIM = "method_name"

#: ``parameterization="auto"`` samples the method effects centred when the one-way ANOVA F
#: statistic of the values by method is at least this (clearly separated methods), else
#: non-centred. Measured on 4 methods × 5 seeds × 2 tasks: centred diverges below F ≈ 10,
#: non-centred never diverged but needs 3-10× more leapfrog steps at large F.
CENTERED_MIN_F = 10.0


@dataclass(frozen=True, eq=False)
class MethodComparison:
    """Result of :func:`compare_methods`.

    Attributes
    ----------
    pairs : pandas.DataFrame
        One row per unordered pair of methods, ``method_a`` ranked above ``method_b`` (methods
        in the order of ``methods``). Columns: ``method_a``, ``method_b``, ``p_a_better``
        (posterior probability that a is better), ``mean_diff`` (posterior mean of
        ``value_a − value_b`` on the original scale), ``hdi_low``, ``hdi_high`` (its HDI).
    methods : pandas.DataFrame
        One row per method, best first. Columns: ``method``, ``effect`` (posterior mean of the
        method's offset from the average method, original scale), ``hdi_low``, ``hdi_high``,
        ``p_best`` (posterior probability of being the best method), ``n`` (observations).
    idata : arviz.InferenceData
        The NUTS fit (``az.from_numpyro``): posterior ``mu_task`` [task], ``tau``, ``sigma``,
        ``delta`` [method_name] (standardised; non-centred fits also hold ``delta_z``) and
        ``effect`` [method_name] (original scale), with sample stats, log-likelihood and
        observed data; ``attrs`` hold ``metric``, ``scale``, ``parameterization`` and the
        ``f_statistic`` that chose it.
    max_rhat : float
        Largest rank-normalised split R-hat over all posterior scalars (≈ 1 when converged).
    min_ess : float
        Smallest bulk effective sample size over all posterior scalars.
    num_divergences : int
        Divergent NUTS transitions after warmup (should be 0).
    metric : str
        Name of the compared metric.
    lower_is_better : bool
    hdi_prob : float
    """

    pairs: pd.DataFrame
    methods: pd.DataFrame
    idata: az.InferenceData
    max_rhat: float
    min_ess: float
    num_divergences: int
    metric: str
    lower_is_better: bool
    hdi_prob: float

    def pair(self, method_a: str, method_b: str) -> dict[str, float]:
        """``p_a_better``, ``mean_diff`` (of ``value_a − value_b``), ``hdi_low``, ``hdi_high``
        for any ordered pair of methods."""
        effect = self.idata.posterior["effect"]
        names = [str(m) for m in effect[METHOD_DIM].values]
        for m in (method_a, method_b):
            if m not in names:
                raise KeyError(f"unknown method {m!r}; known: {names}")
        diff = effect.sel({METHOD_DIM: method_a}) - effect.sel({METHOD_DIM: method_b})
        diff = diff.values.reshape(-1)
        return _pair_stats(diff, self.lower_is_better, self.hdi_prob)


def _pair_stats(diff: np.ndarray, lower_is_better: bool, hdi_prob: float) -> dict[str, float]:
    import arviz as az

    better = diff < 0 if lower_is_better else diff > 0
    low, high = az.hdi(diff, hdi_prob=hdi_prob)
    return {
        "p_a_better": float(better.mean()),
        "mean_diff": float(diff.mean()),
        "hdi_low": float(low),
        "hdi_high": float(high),
    }


def _model(
    task_idx, method_idx, n_task: int, n_method: int, scale: float, centered: bool, y=None
) -> None:
    import numpyro
    import numpyro.distributions as dist

    mu_task = numpyro.sample("mu_task", dist.Normal(0.0, 1.0).expand([n_task]).to_event(1))
    tau = numpyro.sample("tau", dist.HalfNormal(1.0))
    if centered:
        delta = numpyro.sample("delta", dist.ZeroSumNormal(tau, event_shape=(n_method,)))
    else:
        delta_z = numpyro.sample("delta_z", dist.ZeroSumNormal(1.0, event_shape=(n_method,)))
        delta = numpyro.deterministic("delta", tau * delta_z)
    numpyro.deterministic("effect", scale * delta)
    sigma = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("obs", task_idx.shape[0]):
        numpyro.sample("y", dist.Normal(mu_task[task_idx] + delta[method_idx], sigma), obs=y)


def _method_f_statistic(resid: np.ndarray, method_idx: np.ndarray) -> float:
    """One-way ANOVA F of the (task-centred) values by method: ≈ 1 when the methods do not
    differ, ≈ 1 + n·τ²/σ² when they do."""
    n_method = int(method_idx.max()) + 1
    counts = np.bincount(method_idx, minlength=n_method)
    means = np.bincount(method_idx, weights=resid, minlength=n_method) / counts
    dof = resid.shape[0] - n_method
    if dof < 1:
        return float("inf")
    within = float(np.sum((resid - means[method_idx]) ** 2) / dof)
    if within <= 0:
        return float("inf")
    return float(np.var(means, ddof=1) / np.mean(within / counts))


def _validate(df: pd.DataFrame, value: str) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in ("method", value) if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks column(s) {missing}; it has {list(df.columns)}")
    out = df.copy()
    if "task" not in out.columns:
        out["task"] = "task"
    out[value] = pd.to_numeric(out[value], errors="raise").astype(np.float64)
    if not np.all(np.isfinite(out[value].to_numpy())):
        raise ValueError(f"column {value!r} contains NaN/Inf")
    if out["method"].nunique() < 2:
        raise ValueError("need at least two methods to compare")
    return out


def compare_methods(
    df: pd.DataFrame,
    *,
    lower_is_better: bool = True,
    value: str = "value",
    metric: str | None = None,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 4,
    chain_method: str = "vectorized",
    parameterization: str = "auto",
    seed: int = 0,
    hdi_prob: float = 0.94,
) -> MethodComparison:
    """Compare methods on one metric with a hierarchical Bayesian model fitted by NUTS.

    Parameters
    ----------
    df : pandas.DataFrame
        Long format, one row per (method, task, seed) measurement: columns ``method``,
        ``value`` (the metric; see ``value``), optionally ``task`` (one task when absent) and
        ``seed`` (not modelled: seeds are exchangeable replicates). Unbalanced designs are fine.
    lower_is_better : bool, default True
        True for NLL, ECE, Brier; False for accuracy.
    value : str, default "value"
        Name of the column holding the metric.
    metric : str, optional
        Name of the metric for reports (defaults to ``value``).
    num_warmup, num_samples, num_chains : int
        NUTS settings (``num_samples`` draws per chain).
    chain_method : {"vectorized", "sequential"}
        ``"vectorized"`` (default) runs the chains in lockstep in one compiled loop; NumPyro's
        ``"sequential"`` recompiles the sampler for every chain, which on a CPU costs more than
        the sampling itself for a model this small.
    parameterization : {"auto", "centered", "noncentered"}
        How ``δ`` is sampled. Centred (``δ ~ ZSN(τ)``) is efficient when the data pin the
        method effects down and has a funnel (divergences) when they do not; non-centred
        (``δ = τ·z``, ``z ~ ZSN(1)``) the reverse (Betancourt & Girolami 2015, "Hamiltonian
        Monte Carlo for hierarchical models"). ``"auto"`` centres when the one-way ANOVA
        F statistic of the values by method is at least :data:`CENTERED_MIN_F`.
    seed : int
        Seed of the sampler's PRNG key; the result is deterministic given it.
    hdi_prob : float, default 0.94
        Mass of the highest-density intervals.

    Returns
    -------
    MethodComparison
        Check ``max_rhat < 1.01`` (or at least < 1.05), ``min_ess`` in the hundreds and
        ``num_divergences == 0`` before trusting the probabilities.
    """
    import arviz as az
    import jax
    import jax.numpy as jnp
    from numpyro.infer import MCMC, NUTS

    from .idata import convergence

    if not 0.0 < hdi_prob < 1.0:
        raise ValueError(f"hdi_prob must be in (0, 1), got {hdi_prob}")
    if chain_method not in ("vectorized", "sequential"):
        raise ValueError(f"chain_method must be 'vectorized' or 'sequential', got {chain_method!r}")
    if parameterization not in ("auto", "centered", "noncentered"):
        raise ValueError(
            f"parameterization must be 'auto', 'centered' or 'noncentered', got {parameterization!r}"
        )
    data = _validate(df, value)
    metric = value if metric is None else metric
    method_names = data["method"].astype(str)
    methods = list(pd.unique(method_names))
    tasks = list(pd.unique(data["task"].astype(str)))
    method_idx = np.asarray(pd.Categorical(method_names, categories=methods).codes, dtype=np.int64)
    task_idx = np.asarray(
        pd.Categorical(data["task"].astype(str), categories=tasks).codes, dtype=np.int64
    )

    # Standardise: centre within each task, one pooled scale (so effects share units).
    y = data[value].to_numpy()
    task_means = np.bincount(task_idx, weights=y) / np.bincount(task_idx)
    resid = y - task_means[task_idx]
    scale = float(np.sqrt(np.mean(resid**2)))
    if not scale > 0:
        scale = 1.0
    y_std = resid / scale

    f_stat = _method_f_statistic(y_std, method_idx)
    centered = f_stat >= CENTERED_MIN_F if parameterization == "auto" else (
        parameterization == "centered"
    )

    mcmc = MCMC(
        NUTS(_model, target_accept_prob=0.9),
        num_warmup=num_warmup,
        num_samples=num_samples,
        num_chains=num_chains,
        chain_method=chain_method,
        progress_bar=False,
    )
    mcmc.run(
        jax.random.PRNGKey(seed),
        jnp.asarray(task_idx, dtype=jnp.int32),
        jnp.asarray(method_idx, dtype=jnp.int32),
        len(tasks),
        len(methods),
        scale,
        centered,
        y=jnp.asarray(y_std, dtype=jnp.float32),
        extra_fields=("diverging",),
    )
    dims = {"delta": [METHOD_DIM], "effect": [METHOD_DIM], "mu_task": ["task"], "y": ["obs_id"]}
    if not centered:
        dims["delta_z"] = [METHOD_DIM]
    idata = az.from_numpyro(mcmc, coords={METHOD_DIM: methods, "task": tasks}, dims=dims)
    idata.attrs.update(
        {
            "method": "bayesian_method_comparison",
            "metric": metric,
            "lower_is_better": int(lower_is_better),
            "scale": scale,
            "parameterization": "centered" if centered else "noncentered",
            "f_statistic": f_stat,
        }
    )

    diag = convergence(idata)
    max_rhat, min_ess, num_div = diag["r_hat"], diag["ess_bulk"], diag["num_divergences"]

    effect = np.asarray(idata.posterior["effect"].values, dtype=np.float64)
    effect = effect.reshape(-1, len(methods))  # [chain * draw, method]
    signed = effect if lower_is_better else -effect  # lower signed = better
    order = np.argsort(signed.mean(0), kind="stable")
    p_best = np.bincount(signed.argmin(1), minlength=len(methods)) / effect.shape[0]
    counts = np.bincount(method_idx, minlength=len(methods))
    rows = []
    for i in order:
        low, high = az.hdi(effect[:, i], hdi_prob=hdi_prob)
        rows.append(
            {
                "method": methods[i],
                "effect": float(effect[:, i].mean()),
                "hdi_low": float(low),
                "hdi_high": float(high),
                "p_best": float(p_best[i]),
                "n": int(counts[i]),
            }
        )
    pair_rows = []
    for i, j in itertools.combinations(order, 2):
        stats = _pair_stats(effect[:, i] - effect[:, j], lower_is_better, hdi_prob)
        pair_rows.append({"method_a": methods[i], "method_b": methods[j], **stats})
    pairs = pd.DataFrame(
        pair_rows, columns=["method_a", "method_b", "p_a_better", "mean_diff", "hdi_low", "hdi_high"]
    )
    return MethodComparison(
        pairs=pairs,
        methods=pd.DataFrame(rows),
        idata=idata,
        max_rhat=max_rhat,
        min_ess=min_ess,
        num_divergences=num_div,
        metric=metric,
        lower_is_better=lower_is_better,
        hdi_prob=hdi_prob,
    )
