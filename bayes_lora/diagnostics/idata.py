"""Every posterior ends as one ArviZ :class:`arviz.InferenceData`.

:func:`to_inference_data` turns the arrays of any method — MCMC chains over the curve position
``t`` and offset ``z``, sampled approximations (Laplace, SWAG, VI, MC dropout, ensembles, curve
grids) — into one InferenceData with explicit sample dimensions ``(chain, draw)``. Sampled
approximations give one chain of draws. One converter per group; groups whose inputs are
missing are skipped:

========================  ==========================================================  ===========
group                     variables                                                   dims
========================  ==========================================================  ===========
``posterior``             the latents (``t``, ``z``, cores, ...)                      chain, draw, ...
``sample_stats``          NUTS statistics under ArviZ's names (``diverging``,         chain, draw
                          ``energy``, ``step_size``, ``tree_depth``,
                          ``acceptance_rate``, ``n_steps``, ``lp``)
``log_likelihood``        ``y``: log p(y_i | x_i, θ_s) per observation                chain, draw, obs_id
``posterior_predictive``  ``y_prob``: p(· | x_i, θ_s)                                 chain, draw, obs_id, class
``observed_data``         ``y``: the labels                                           obs_id
========================  ==========================================================  ===========

The per-observation log-likelihood makes PSIS-LOO and WAIC available (Vehtari, Gelman & Gabry
2017, "Practical Bayesian model evaluation using leave-one-out cross-validation and WAIC"),
and the chains give R-hat and ESS (Vehtari et al. 2021, "Rank-normalization, folding, and
localization: an improved R-hat").

arviz (0.x line) is imported inside the functions only; this module imports numpy and json.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import arviz as az
    import pandas as pd

__all__ = [
    "SAMPLE_STAT_NAMES",
    "compare_loo",
    "load_idata",
    "loo",
    "save_idata",
    "summary",
    "to_inference_data",
    "waic",
]

#: Accepted spellings of sampler statistics (Pyro, NumPyro, Stan, BlackJAX) → ArviZ's names.
#: Keys not listed here are stored under their own name. ``potential_energy`` is the one
#: conversion that changes values: ArviZ's ``lp`` is the log density, ``-potential_energy``.
SAMPLE_STAT_NAMES: dict[str, str] = {
    "diverging": "diverging",
    "divergent": "diverging",
    "divergences": "diverging",
    "divergent__": "diverging",
    "energy": "energy",
    "energy__": "energy",
    "step_size": "step_size",
    "stepsize": "step_size",
    "stepsize__": "step_size",
    "adapt_state.step_size": "step_size",
    "tree_depth": "tree_depth",
    "treedepth": "tree_depth",
    "treedepth__": "tree_depth",
    "depth": "tree_depth",
    "acceptance_rate": "acceptance_rate",
    "acceptance": "acceptance_rate",
    "accept_prob": "acceptance_rate",
    "mean_accept_prob": "acceptance_rate",
    "accept_stat__": "acceptance_rate",
    "n_steps": "n_steps",
    "num_steps": "n_steps",
    "n_leapfrog__": "n_steps",
    "lp": "lp",
    "lp__": "lp",
    "potential_energy": "lp",
}

#: Largest allowed |Σ_c p_c − 1| of a probability row in ``probs``.
PROB_SUM_TOL = 1e-3


# --------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------
def _to_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` (numpy, torch, jax, lists) as a numpy array, without importing torch or jax."""
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a numeric array, got dtype object")
    return arr


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "value") and hasattr(obj, "name"):  # enum members
        return obj.value
    return str(obj)


def _encode_options(options: Mapping[str, Any] | None) -> str:
    """Options as a JSON string: netCDF attributes must be strings or numbers."""
    return json.dumps(dict(options or {}), sort_keys=True, default=_json_default)


class _Layout:
    """Sample dims of one call: every array is brought to [n_chain, n_draw, ...]."""

    def __init__(self, has_chain_axis: bool, chains: int | None) -> None:
        self.has_chain_axis = has_chain_axis
        self.chains = chains
        self.shape: tuple[int, int] | None = None
        self.first: str | None = None

    def sample_shaped(self, arr: np.ndarray, name: str, event_ndim: int | None = None) -> np.ndarray:
        """Add the chain axis when absent and check the sample shape agrees with earlier arrays."""
        lead = 2 if self.has_chain_axis else 1
        if arr.ndim < lead:
            want = "[chain, draw, ...]" if self.has_chain_axis else "[draw, ...]"
            raise ValueError(f"{name} must be {want}, got shape {arr.shape}")
        if event_ndim is not None and arr.ndim != lead + event_ndim:
            raise ValueError(
                f"{name} has shape {arr.shape}: expected {lead} sample dim(s) "
                f"({'chain, draw' if self.has_chain_axis else 'draw'}) and {event_ndim} more"
            )
        if self.has_chain_axis and self.chains is not None and arr.shape[0] != self.chains:
            raise ValueError(
                f"{name} has {arr.shape[0]} chain(s) on its leading axis but chains={self.chains}"
            )
        if not self.has_chain_axis:
            arr = arr[None]
        if self.shape is None:
            self.shape, self.first = (arr.shape[0], arr.shape[1]), name
        elif arr.shape[:2] != self.shape:
            raise ValueError(
                f"{name} has (chain, draw) = {arr.shape[:2]} but {self.first} has {self.shape}"
            )
        return arr


def _has_chain_axis(chains: int | None, log_likelihood: Any, probs: Any) -> bool:
    if chains is not None:
        if isinstance(chains, bool) or not isinstance(chains, (int, np.integer)) or chains < 1:
            raise ValueError(f"chains must be a positive integer or None, got {chains!r}")
        return True
    if log_likelihood is not None:
        ndim = _to_numpy(log_likelihood, "log_likelihood").ndim
        if ndim not in (2, 3):
            raise ValueError(
                f"log_likelihood must be [chain, draw, obs] or [draw, obs], got {ndim} dim(s)"
            )
        return ndim == 3
    if probs is not None:
        ndim = _to_numpy(probs, "probs").ndim
        if ndim not in (3, 4):
            raise ValueError(
                f"probs must be [chain, draw, obs, class] or [draw, obs, class], got {ndim} dim(s)"
            )
        return ndim == 4
    return False


def _truncate(arr: np.ndarray, max_coords: int | None) -> tuple[np.ndarray, bool]:
    """Keep the first ``max_coords`` entries of the (flattened) event dims of [chain, draw, ...]."""
    event = arr.shape[2:]
    if max_coords is None or math.prod(event) <= max_coords:
        return arr, False
    flat = arr.reshape(arr.shape[:2] + (-1,))
    return np.ascontiguousarray(flat[..., :max_coords]), True  # a copy: the rest can be freed


# --------------------------------------------------------------------------------------------
# One converter per group
# --------------------------------------------------------------------------------------------
def _posterior_group(posterior, layout, max_coords, attrs):
    import arviz as az

    data, dims, truncated = {}, {}, {}
    for name, value in posterior.items():
        label = f"posterior[{name!r}]"
        arr = layout.sample_shaped(_to_numpy(value, label), label)
        event = list(arr.shape[2:])
        arr, cut = _truncate(arr, max_coords)
        if cut:
            truncated[name] = event
            dims[name] = [f"{name}_dim_0" if len(event) == 1 else f"{name}_flat"]
        data[name] = arr
    return az.dict_to_dataset(data, attrs=attrs, dims=dims), truncated


def _sample_stats_group(sample_stats, layout, attrs):
    import arviz as az

    data: dict[str, np.ndarray] = {}
    for key, value in sample_stats.items():
        name = SAMPLE_STAT_NAMES.get(key, key)
        if name in data:
            raise ValueError(f"sample_stats gives {name!r} twice (as {key!r} and another alias)")
        arr = _to_numpy(value, f"sample_stats[{key!r}]")
        if layout.shape is not None and arr.ndim <= 1 and arr.size in (1, layout.shape[0]):
            # a scalar, or one value per chain (e.g. the adapted step size): broadcast over draws
            arr = np.broadcast_to(arr.reshape(-1, 1), layout.shape).copy()
        else:
            arr = layout.sample_shaped(arr, f"sample_stats[{key!r}]")
        if key == "potential_energy":
            arr = -arr
        if name == "diverging":
            if arr.dtype != np.bool_ and not np.isin(arr, (0, 1)).all():
                raise ValueError(
                    f"sample_stats[{key!r}] must be a per-draw 0/1 mask; Pyro's "
                    "mcmc.diagnostics()['divergences'] lists indices per chain — convert first"
                )
            arr = arr.astype(bool)
        data[name] = arr
    return az.dict_to_dataset(data, attrs=attrs)


def _log_likelihood_group(log_likelihood, layout, attrs):
    import arviz as az

    arr = layout.sample_shaped(
        _to_numpy(log_likelihood, "log_likelihood"), "log_likelihood", event_ndim=1
    ).astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(
            "log_likelihood contains NaN/Inf; clamp probabilities before taking the log "
            "(PSIS-LOO and WAIC need finite values)"
        )
    ds = az.dict_to_dataset(
        {"y": arr},
        attrs=attrs,
        dims={"y": ["obs_id"]},
        coords={"obs_id": np.arange(arr.shape[2])},
    )
    return ds, arr.shape[2]


def _posterior_predictive_group(probs, layout, attrs):
    import arviz as az

    arr = layout.sample_shaped(_to_numpy(probs, "probs"), "probs", event_ndim=2).astype(np.float64)
    if not np.all(np.isfinite(arr)) or arr.min() < -1e-6:
        raise ValueError("probs must be finite and non-negative")
    worst = float(np.abs(arr.sum(-1) - 1.0).max())
    if worst > PROB_SUM_TOL:
        raise ValueError(f"probs rows must sum to 1 over the class axis (worst is off by {worst:.3g})")
    ds = az.dict_to_dataset(
        {"y_prob": arr},
        attrs=attrs,
        dims={"y_prob": ["obs_id", "class"]},
        coords={"obs_id": np.arange(arr.shape[2]), "class": np.arange(arr.shape[3])},
    )
    return ds, arr.shape[2], arr.shape[3]


def _observed_data_group(labels, attrs):
    import arviz as az

    y = _to_numpy(labels, "labels")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D [obs], got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    ds = az.dict_to_dataset(
        {"y": y.astype(np.int64)},
        attrs=attrs,
        default_dims=[],
        dims={"y": ["obs_id"]},
        coords={"obs_id": np.arange(y.shape[0])},
    )
    return ds, y.shape[0]


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------
def to_inference_data(
    *,
    posterior: Mapping[str, Any] | None = None,
    log_likelihood: Any = None,
    probs: Any = None,
    labels: Any = None,
    sample_stats: Mapping[str, Any] | None = None,
    method: str,
    options: Mapping[str, Any] | None = None,
    chains: int | None = None,
    max_coords: int | None = None,
) -> az.InferenceData:
    """Build one :class:`arviz.InferenceData` from the arrays of a posterior.

    Arrays may be numpy, torch or jax arrays (or nested lists).

    **Sample dims.** Every sampled array carries either both sample dims ``[chain, draw, ...]``
    or only ``[draw, ...]`` (then it is one chain, stored with a chain dim of size 1). Which one
    is decided once per call:

    1. ``chains`` given → every array has a leading chain axis of that length;
    2. else ``log_likelihood`` given → 3-D means ``[chain, draw, obs]``, 2-D ``[draw, obs]``;
    3. else ``probs`` given → 4-D means ``[chain, draw, obs, class]``, 3-D ``[draw, obs, class]``;
    4. else (only ``posterior``) → ``[draw, ...]``, one chain. Multi-chain latents alone need
       ``chains``.

    All arrays must then agree on ``(chain, draw)``.

    Parameters
    ----------
    posterior : dict of str to array, optional
        Latents, e.g. ``{"t": [chain, draw], "z": [chain, draw, d]}``. Event dims are named
        ``{name}_dim_0, ...`` by ArviZ.
    log_likelihood : array, shape [chain, draw, obs] or [draw, obs], optional
        ``log p(y_i | x_i, θ_s)`` (after any likelihood temperature); must be finite. Stored as
        variable ``"y"`` with dims ``(chain, draw, obs_id)``.
    probs : array, shape [chain, draw, obs, class] or [draw, obs, class], optional
        Per-draw predictive probabilities; stored as ``posterior_predictive["y_prob"]``.
    labels : integer array, shape [obs], optional
        Observed labels; stored as ``observed_data["y"]``.
    sample_stats : dict of str to array, optional
        Sampler statistics of shape [chain, draw] (or [draw]); a scalar or one value per chain
        (e.g. an adapted step size) is broadcast over the draws. Divergences must be a per-draw
        boolean (or 0/1) mask. Keys are renamed to ArviZ's
        names by :data:`SAMPLE_STAT_NAMES` (``divergences`` → ``diverging`` (bool),
        ``accept_prob`` → ``acceptance_rate``, ``potential_energy`` → ``lp`` negated, ...).
    method : str
        Name of the inference method, stored in ``idata.attrs["method"]`` and in every group's
        attrs.
    options : dict, optional
        The method's options, stored JSON-encoded in ``idata.attrs["options"]`` (netCDF
        attributes must be strings or numbers); non-JSON values are stored as ``str``.
    chains : int, optional
        Number of chains when the arrays carry a leading chain axis (see above).
    max_coords : int, optional
        Keep only the first ``max_coords`` coordinates of each posterior variable. A variable
        whose event (non-sample) part has more entries is cut to its first ``max_coords``
        entries — along ``{name}_dim_0`` for a vector, or, for an array, after flattening its
        event dims (C order) into one dim ``{name}_flat`` — so that, e.g.,
        1,500 core coordinates can be passed without storing or summarising all of them; the
        original event shapes are recorded in ``idata.attrs["truncated"]`` (JSON). Only
        ``posterior`` is affected; log-likelihoods and predictives are never cut.

    Returns
    -------
    arviz.InferenceData
        With the groups whose inputs were given; ``attrs`` holds ``method``, ``options`` and,
        when something was cut, ``truncated``.
    """
    import arviz as az

    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty string, got {method!r}")
    if max_coords is not None and (
        isinstance(max_coords, bool) or not isinstance(max_coords, (int, np.integer)) or max_coords < 1
    ):
        raise ValueError(f"max_coords must be a positive integer or None, got {max_coords!r}")

    layout = _Layout(_has_chain_axis(chains, log_likelihood, probs), chains)
    group_attrs = {"method": method}
    groups: dict[str, Any] = {}
    n_obs: dict[str, int] = {}

    # Groups with sample dims first, so that per-chain sample stats can be broadcast.
    if log_likelihood is not None:
        groups["log_likelihood"], n_obs["log_likelihood"] = _log_likelihood_group(
            log_likelihood, layout, group_attrs
        )
    n_class = None
    if probs is not None:
        groups["posterior_predictive"], n_obs["probs"], n_class = _posterior_predictive_group(
            probs, layout, group_attrs
        )
    truncated: dict[str, list[int]] = {}
    if posterior:
        groups["posterior"], truncated = _posterior_group(posterior, layout, max_coords, group_attrs)
    if sample_stats:
        groups["sample_stats"] = _sample_stats_group(sample_stats, layout, group_attrs)
    if labels is not None:
        groups["observed_data"], n_obs["labels"] = _observed_data_group(labels, group_attrs)
        if n_class is not None:
            y = groups["observed_data"]["y"].values
            if y.size and (y.min() < 0 or y.max() >= n_class):
                raise ValueError(f"labels must lie in [0, {n_class}) (the classes of probs)")

    if len(set(n_obs.values())) > 1:
        raise ValueError(f"inputs disagree on the number of observations: {n_obs}")

    attrs = {"method": method, "options": _encode_options(options)}
    if truncated:
        attrs["truncated"] = json.dumps(truncated, sort_keys=True)
    return az.InferenceData(attrs=attrs, **groups)


def save_idata(idata: az.InferenceData, path: Any) -> str:
    """Write ``idata`` (all groups and attrs) to a netCDF-4 file through h5netcdf.

    Returns
    -------
    str
        The path written.
    """
    return idata.to_netcdf(str(path))


def load_idata(path: Any) -> az.InferenceData:
    """Read an InferenceData written by :func:`save_idata`, fully into memory.

    The data are loaded eagerly and the file is closed, so it can be overwritten or deleted
    right away (ArviZ's default is lazy loading that keeps the file open).
    """
    import arviz as az

    with az.rc_context({"data.load": "eager"}):
        return az.from_netcdf(str(path))


def summary(
    idata: az.InferenceData, var_names: Sequence[str] | None = None, **kwargs: Any
) -> pd.DataFrame:
    """Posterior summary with convergence diagnostics (:func:`arviz.summary`).

    Columns: ``mean, sd, hdi_3%, hdi_97%, mcse_mean, mcse_sd, ess_bulk, ess_tail, r_hat``; one
    row per scalar coordinate of the posterior variables. R-hat is the rank-normalised split
    R-hat (Vehtari et al. 2021): near 1 for converged chains; > 1.01 calls for a closer look.
    ``kwargs`` go to :func:`arviz.summary` (e.g. ``kind="diagnostics"``, ``hdi_prob``).
    """
    import arviz as az

    if "posterior" not in idata.groups():
        raise ValueError("idata has no posterior group to summarise")
    names = None if var_names is None else list(var_names)
    return az.summary(idata, var_names=names, **kwargs)


def convergence(idata: az.InferenceData, var_names: Sequence[str] | None = None) -> dict[str, float]:
    """The worst convergence numbers over the scalars of ``var_names``: largest R-hat, smallest
    bulk and tail ESS, and (with a ``diverging`` sample statistic) the number of divergent
    transitions."""
    diag = summary(idata, var_names, kind="diagnostics", round_to="none")  # default rounds to 0.01
    out = {"r_hat": float(np.nanmax(diag["r_hat"].to_numpy())),
           "ess_bulk": float(np.nanmin(diag["ess_bulk"].to_numpy())),
           "ess_tail": float(np.nanmin(diag["ess_tail"].to_numpy()))}
    stats = getattr(idata, "sample_stats", None)
    if stats is not None and "diverging" in stats:
        out["num_divergences"] = int(stats["diverging"].values.sum())
    return out


def _reff(idata: az.InferenceData) -> float | None:
    # ArviZ estimates the relative efficiency from the posterior group and refuses without one;
    # draws of sampled approximations (ensembles, grids, Laplace samples) are independent.
    return None if "posterior" in idata.groups() else 1.0


def loo(idata: az.InferenceData, *, pointwise: bool = False, reff: float | None = None) -> Any:
    """PSIS-LOO estimate of the expected log pointwise predictive density (:func:`arviz.loo`).

    .. math:: \\widehat{\\mathrm{elpd}}_{\\mathrm{loo}} = \\sum_i \\log
              \\frac{\\sum_s w_{is}\\, p(y_i | \\theta_s)}{\\sum_s w_{is}}

    with Pareto-smoothed importance weights ``w_is ∝ 1 / p(y_i | θ_s)`` (Vehtari et al. 2017).
    Uses ``log_likelihood["y"]``. Without a posterior group the draws are taken as independent
    (``reff = 1``), which ArviZ would otherwise refuse. Pareto k > 0.7 (ArviZ warns) means the
    estimate for that observation is unreliable.

    Returns
    -------
    arviz.ELPDData
        ``elpd_loo``, ``se``, ``p_loo``, ``pareto_k`` (with ``pointwise=True`` also ``loo_i``).
    """
    import arviz as az

    ll = idata.log_likelihood["y"]
    if ll.sizes.get("chain", 1) * ll.sizes.get("draw", 1) == 1:
        return _single_draw_loo(ll, pointwise)
    return az.loo(idata, pointwise=pointwise, reff=_reff(idata) if reff is None else reff)


def _single_draw_loo(ll, pointwise: bool):
    """A point predictive (MAP, closed-form GLM): nothing to leave out, elpd = lppd, p_loo = 0.

    Importance sampling over one draw is undefined (ArviZ raises); the honest value is the plain
    log predictive density, with Pareto k undefined (NaN).
    """
    import arviz as az

    elpd_i = ll.isel(chain=0, draw=0)
    n = int(elpd_i.size)
    values = elpd_i.values.astype(float)
    se = float(np.sqrt(n * np.var(values)))
    head = [float(values.sum()), se, 0.0, 1, n, False]
    names = ["elpd_loo", "se", "p_loo", "n_samples", "n_data_points", "warning"]
    if pointwise:
        head += [elpd_i.rename("loo_i"), elpd_i.copy(data=np.full(n, np.nan)).rename("pareto_shape")]
        names += ["loo_i", "pareto_k"]
    return az.ELPDData(data=[*head, "log", 0.7], index=[*names, "scale", "good_k"])


def waic(idata: az.InferenceData, *, pointwise: bool = False) -> Any:
    """Widely applicable information criterion on the log scale (:func:`arviz.waic`).

    .. math:: \\widehat{\\mathrm{elpd}}_{\\mathrm{waic}} = \\sum_i \\log \\bar p(y_i)
              - \\sum_i \\mathrm{Var}_s \\log p(y_i | \\theta_s)

    Returns
    -------
    arviz.ELPDData
        ``elpd_waic``, ``se``, ``p_waic`` (with ``pointwise=True`` also ``waic_i``).
    """
    import arviz as az

    # arviz 0.23 labels the non-pointwise result "waic" instead of "elpd_waic" (its own repr and
    # az.compare then fail), so the pointwise result is always computed and cut down here.
    result = az.waic(idata, pointwise=True)
    return result if pointwise else type(result)(result.drop("waic_i"))


def compare_loo(
    models: Mapping[str, az.InferenceData], *, ic: str = "loo", method: str = "stacking"
) -> pd.DataFrame:
    """Rank methods by their estimated predictive density (:func:`arviz.compare`).

    The pointwise ELPDs are computed here first (:func:`loo` or :func:`waic`), so methods
    without a posterior group can be compared too. All models must share the observations.

    Parameters
    ----------
    models : dict of name to InferenceData
    ic : {"loo", "waic"}
    method : {"stacking", "BB-pseudo-BMA", "pseudo-BMA"}
        How the model weights are computed.

    Returns
    -------
    pandas.DataFrame
        One row per model, best first: ``rank, elpd_{ic}, p_{ic}, elpd_diff, weight, se, dse,
        warning, scale``.
    """
    import arviz as az

    if len(models) < 2:
        raise ValueError("compare_loo needs at least two models")
    if ic not in ("loo", "waic"):
        raise ValueError(f"ic must be 'loo' or 'waic', got {ic!r}")
    fn = loo if ic == "loo" else waic
    elpds = {name: fn(idata, pointwise=True) for name, idata in models.items()}
    with warnings.catch_warnings():
        # arviz 0.23 sorts with ``inplace=True``, which pandas >= 3.1 deprecates; not ours to fix
        warnings.filterwarnings("ignore", message="The inplace keyword")
        return az.compare(elpds, ic=ic, method=method)
