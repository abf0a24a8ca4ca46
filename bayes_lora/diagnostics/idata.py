"""Every posterior ends as one ArviZ :class:`arviz.InferenceData`.

:func:`to_inference_data` turns the arrays of any method — MCMC chains over the curve position
``t`` and offset ``z``, sampled approximations (Laplace, SWAG, VI, MC dropout, ensembles, curve
grids) — into one InferenceData with explicit sample dimensions ``(chain, draw)``. Sampled
approximations give one chain of draws. One converter per group; groups whose inputs are
missing are skipped:

=============================  =====================================================  ===========
group                          variables                                              dims
=============================  =====================================================  ===========
``posterior``                  the latents (``t``, ``z``, cores, ...)                 chain, draw, ...
``sample_stats``               NUTS statistics under ArviZ's names (``diverging``,    chain, draw
                               ``energy``, ``step_size``, ``tree_depth``,
                               ``acceptance_rate``, ``n_steps``, ``lp``)
``log_likelihood``             ``y``: log p(y_i | x_i, θ_s) per observation (attrs:   chain, draw, obs_id
                               the likelihood ``temperature``)
``posterior_predictive``       ``y``: draws of y_i ~ p(· | x_i, θ_s);                 chain, draw, obs_id
                               ``y_prob``: p(· | x_i, θ_s)                            (+ class)
``observed_data``              ``y``: the labels                                      obs_id
``predictions``                ``y_prob``: p(· | x_j, θ_s) on held-out examples       chain, draw, test_id, class
``predictions_constant_data``  ``y``: their labels                                    test_id
=============================  =====================================================  ===========

The groups are meant as ArviZ means them (what
:func:`~bayes_lora.experiment.evaluate.posterior_idata` writes): ``log_likelihood``,
``posterior_predictive`` and ``observed_data`` are about the data the posterior conditioned on
(``obs_id`` = their rows), ``predictions`` about new data, and every sampled group shares the
same ``(chain, draw)`` — draw s of each is the same posterior draw (:func:`check_idata_schema`).
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
    "SAMPLED_GROUPS",
    "SAMPLE_STAT_NAMES",
    "check_idata_schema",
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

#: The groups with sample dims ``(chain, draw)``: all of them share the same draws.
SAMPLED_GROUPS = ("posterior", "sample_stats", "log_likelihood", "posterior_predictive", "predictions")


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


def _has_chain_axis(chains: int | None, log_likelihood: Any, probs: Any, posterior_predictive: Any = None,
                    predictions: Any = None) -> bool:
    if chains is not None:
        if isinstance(chains, bool) or not isinstance(chains, (int, np.integer)) or chains < 1:
            raise ValueError(f"chains must be a positive integer or None, got {chains!r}")
        return True
    # the first given of these decides: (name, array, its event dims, how they read)
    for name, value, event, what in (
        ("log_likelihood", log_likelihood, 1, "obs"),
        ("probs", probs, 2, "obs, class"),
        ("posterior_predictive", posterior_predictive, 1, "obs"),
        ("predictions", predictions, 2, "obs, class"),
    ):
        if value is None:
            continue
        ndim = _to_numpy(value, name).ndim
        if ndim not in (event + 1, event + 2):
            raise ValueError(f"{name} must be [chain, draw, {what}] or [draw, {what}], got {ndim} dim(s)")
        return ndim == event + 2
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


def _obs_coord(obs_id, n: int, dim: str = "obs_id") -> np.ndarray:
    """The coordinate values of ``dim``: ``obs_id`` (e.g. the training rows) or 0..n-1."""
    if obs_id is None:
        return np.arange(n)
    ids = _to_numpy(obs_id, dim)
    if ids.shape != (n,):
        raise ValueError(f"{dim} has shape {ids.shape} but the observations number {n}")
    if len(np.unique(ids)) != n:
        raise ValueError(f"{dim} values must be distinct")
    return ids


def _log_likelihood_group(log_likelihood, layout, attrs, obs_id=None):
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
        coords={"obs_id": _obs_coord(obs_id, arr.shape[2])},
    )
    return ds, arr.shape[2]


def _probs_array(probs, layout, name: str) -> np.ndarray:
    arr = layout.sample_shaped(_to_numpy(probs, name), name, event_ndim=2).astype(np.float64)
    if not np.all(np.isfinite(arr)) or arr.min() < -1e-6:
        raise ValueError(f"{name} must be finite and non-negative")
    worst = float(np.abs(arr.sum(-1) - 1.0).max())
    if worst > PROB_SUM_TOL:
        raise ValueError(f"{name} rows must sum to 1 over the class axis (worst is off by {worst:.3g})")
    return arr


def _posterior_predictive_group(probs, draws, layout, attrs, obs_id=None):
    """``y`` (draws of y, [chain, draw, obs]) and/or ``y_prob`` ([chain, draw, obs, class])."""
    import arviz as az

    data, dims, n_obs, n_class = {}, {}, {}, None
    if probs is not None:
        arr = _probs_array(probs, layout, "probs")
        data["y_prob"], dims["y_prob"] = arr, ["obs_id", "class"]
        n_obs["probs"], n_class = arr.shape[2], arr.shape[3]
    if draws is not None:
        y = layout.sample_shaped(_to_numpy(draws, "posterior_predictive"), "posterior_predictive", event_ndim=1)
        if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"posterior_predictive must hold integer draws of y, got dtype {y.dtype}")
        if y.size and (y.min() < 0 or (n_class is not None and y.max() >= n_class)):
            raise ValueError("posterior_predictive draws must be class indices"
                             + (f" in [0, {n_class})" if n_class is not None else " (≥ 0)"))
        data["y"], dims["y"] = y.astype(np.int64), ["obs_id"]
        n_obs["posterior_predictive"] = y.shape[2]
    if len(set(n_obs.values())) > 1:
        raise ValueError(f"inputs disagree on the number of observations: {n_obs}")
    n = next(iter(n_obs.values()))
    coords = {"obs_id": _obs_coord(obs_id, n)}
    if n_class is not None:
        coords["class"] = np.arange(n_class)
    return az.dict_to_dataset(data, attrs=attrs, dims=dims, coords=coords), n_obs, n_class


def _predictions_group(predictions, layout, attrs):
    import arviz as az

    arr = _probs_array(predictions, layout, "predictions")
    ds = az.dict_to_dataset(
        {"y_prob": arr},
        attrs=attrs,
        dims={"y_prob": ["test_id", "class"]},
        coords={"test_id": np.arange(arr.shape[2]), "class": np.arange(arr.shape[3])},
    )
    return ds, arr.shape[2], arr.shape[3]


def _labels_array(labels, name: str) -> np.ndarray:
    y = _to_numpy(labels, name)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D [obs], got shape {y.shape}")
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}")
    return y.astype(np.int64)


def _observed_data_group(labels, attrs, obs_id=None):
    import arviz as az

    y = _labels_array(labels, "labels")
    ds = az.dict_to_dataset(
        {"y": y},
        attrs=attrs,
        default_dims=[],
        dims={"y": ["obs_id"]},
        coords={"obs_id": _obs_coord(obs_id, y.shape[0])},
    )
    return ds, y.shape[0]


def _predictions_constant_data_group(labels, attrs):
    import arviz as az

    y = _labels_array(labels, "prediction_labels")
    ds = az.dict_to_dataset(
        {"y": y}, attrs=attrs, default_dims=[], dims={"y": ["test_id"]}, coords={"test_id": np.arange(y.shape[0])}
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
    posterior_predictive: Any = None,
    predictions: Any = None,
    prediction_labels: Any = None,
    obs_id: Any = None,
    temperature: float | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> az.InferenceData:
    """Build one :class:`arviz.InferenceData` from the arrays of a posterior.

    Arrays may be numpy, torch or jax arrays (or nested lists).

    **Sample dims.** Every sampled array carries either both sample dims ``[chain, draw, ...]``
    or only ``[draw, ...]`` (then it is one chain, stored with a chain dim of size 1). Which one
    is decided once per call:

    1. ``chains`` given → every array has a leading chain axis of that length;
    2. else the first given of ``log_likelihood`` (3-D means ``[chain, draw, obs]``, 2-D
       ``[draw, obs]``), ``probs`` (4-D / 3-D), ``posterior_predictive`` (3-D / 2-D),
       ``predictions`` (4-D / 3-D) decides;
    3. else (only ``posterior``) → ``[draw, ...]``, one chain. Multi-chain latents alone need
       ``chains``.

    All arrays must then agree on ``(chain, draw)``: draw s of every sampled group is the same
    posterior draw.

    Parameters
    ----------
    posterior : dict of str to array, optional
        Latents, e.g. ``{"t": [chain, draw], "z": [chain, draw, d]}``. Event dims are named
        ``{name}_dim_0, ...`` by ArviZ.
    log_likelihood : array, shape [chain, draw, obs] or [draw, obs], optional
        ``log p(y_i | x_i, θ_s)`` of the observations the posterior conditioned on; must be
        finite. Stored as variable ``"y"`` with dims ``(chain, draw, obs_id)``.
    probs : array, shape [chain, draw, obs, class] or [draw, obs, class], optional
        Per-draw predictive probabilities of those observations; stored as
        ``posterior_predictive["y_prob"]``.
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
    posterior_predictive : integer array, shape [chain, draw, obs] or [draw, obs], optional
        Draws of y_i ~ p(· | x_i, θ_s) (class indices); stored as ``posterior_predictive["y"]``.
    predictions : array, shape [chain, draw, test, class] or [draw, test, class], optional
        Per-draw predictive probabilities on held-out examples; stored as
        ``predictions["y_prob"]`` with dims ``(chain, draw, test_id, class)``.
    prediction_labels : integer array, shape [test], optional
        Their labels; stored as ``predictions_constant_data["y"]`` (dim ``test_id``).
    obs_id : array, shape [obs], optional
        Coordinate values of ``obs_id`` (e.g. the rows of the training set); default 0..obs-1.
    temperature : float, optional
        The likelihood temperature of the posterior, stored in ``log_likelihood.attrs`` (the
        log-likelihood itself is stored as given).
    attrs : dict, optional
        More attributes of the InferenceData (strings or numbers).

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
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not temperature > 0):
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")

    layout = _Layout(_has_chain_axis(chains, log_likelihood, probs, posterior_predictive, predictions), chains)
    group_attrs = {"method": method}
    groups: dict[str, Any] = {}
    n_obs: dict[str, int] = {}

    # Groups with sample dims first, so that per-chain sample stats can be broadcast.
    if log_likelihood is not None:
        ll_attrs = group_attrs if temperature is None else {**group_attrs, "temperature": float(temperature)}
        groups["log_likelihood"], n_obs["log_likelihood"] = _log_likelihood_group(
            log_likelihood, layout, ll_attrs, obs_id
        )
    n_class = n_test_class = None
    if predictions is not None:
        groups["predictions"], n_test, n_test_class = _predictions_group(predictions, layout, group_attrs)
    if probs is not None or posterior_predictive is not None:
        groups["posterior_predictive"], pp_obs, n_class = _posterior_predictive_group(
            probs, posterior_predictive, layout, group_attrs, obs_id
        )
        n_obs.update(pp_obs)
    truncated: dict[str, list[int]] = {}
    if posterior:
        groups["posterior"], truncated = _posterior_group(posterior, layout, max_coords, group_attrs)
    if sample_stats:
        groups["sample_stats"] = _sample_stats_group(sample_stats, layout, group_attrs)
    if labels is not None:
        groups["observed_data"], n_obs["labels"] = _observed_data_group(labels, group_attrs, obs_id)
        if n_class is not None:
            y = groups["observed_data"]["y"].values
            if y.size and (y.min() < 0 or y.max() >= n_class):
                raise ValueError(f"labels must lie in [0, {n_class}) (the classes of probs)")
    if prediction_labels is not None:
        groups["predictions_constant_data"], n_labels = _predictions_constant_data_group(
            prediction_labels, group_attrs
        )
        if predictions is not None:
            if n_labels != n_test:
                raise ValueError(f"predictions cover {n_test} examples but prediction_labels {n_labels}")
            y = groups["predictions_constant_data"]["y"].values
            if y.size and (y.min() < 0 or y.max() >= n_test_class):
                raise ValueError(f"prediction_labels must lie in [0, {n_test_class}) (the classes of predictions)")

    if len(set(n_obs.values())) > 1:
        raise ValueError(f"inputs disagree on the number of observations: {n_obs}")
    if obs_id is not None and not n_obs:
        raise ValueError("obs_id names the observations of log_likelihood / probs / labels: none were given")

    out_attrs = {**dict(attrs or {}), "method": method, "options": _encode_options(options)}
    if truncated:
        out_attrs["truncated"] = json.dumps(truncated, sort_keys=True)
    return az.InferenceData(attrs=out_attrs, **groups)


def check_idata_schema(idata: az.InferenceData) -> tuple[int, int]:
    """Check that ``idata``'s groups mean what ArviZ means; return its ``(chains, draws)``.

    * every group of :data:`SAMPLED_GROUPS` present has dims ``chain`` and ``draw`` of the same
      sizes and coordinates (draw s of each is the same posterior draw);
    * ``log_likelihood["y"]`` is finite over ``(chain, draw, obs_id)``, and ``observed_data["y"]``
      exists over the same ``obs_id`` coordinates (the data the log-likelihood is of), its
      temperature (when recorded) > 0;
    * ``posterior_predictive["y"]`` (when present) holds integer draws over the same ``obs_id``;
    * ``predictions["y_prob"]`` (when present) holds probabilities over ``(test_id, class)`` and
      ``predictions_constant_data["y"]``, when present, the same ``test_id``.

    Raises
    ------
    ValueError
        Listing every problem found.
    """
    problems: list[str] = []
    sizes: dict[str, tuple[int, int]] = {}
    draws_coord: dict[str, tuple] = {}
    groups = set(idata.groups())
    for name in SAMPLED_GROUPS:
        if name not in groups:
            continue
        ds = idata[name]
        if "chain" not in ds.dims or "draw" not in ds.dims:
            problems.append(f"{name} lacks the sample dims chain and draw (dims {dict(ds.sizes)})")
            continue
        sizes[name] = (int(ds.sizes["chain"]), int(ds.sizes["draw"]))
        draws_coord[name] = (tuple(ds["chain"].values.tolist()), tuple(ds["draw"].values.tolist()))
    if len(set(sizes.values())) > 1:
        problems.append(f"the sampled groups disagree on (chain, draw): {sizes}")
    elif len(set(draws_coord.values())) > 1:
        problems.append("the sampled groups have the same (chain, draw) sizes but different coordinates")

    def obs_ids(group: str, var: str, dim: str = "obs_id"):
        ds = idata[group]
        if var not in ds:
            problems.append(f"{group} has no variable {var!r}")
            return None
        if dim not in ds[var].dims:
            problems.append(f"{group}[{var!r}] has dims {ds[var].dims}, no {dim!r}")
            return None
        return ds[dim].values

    observed = obs_ids("observed_data", "y") if "observed_data" in groups else None
    if "log_likelihood" in groups:
        ll_ids = obs_ids("log_likelihood", "y")
        if ll_ids is not None:
            if not np.all(np.isfinite(idata.log_likelihood["y"].values)):
                problems.append("log_likelihood['y'] is not finite")
            if observed is None:
                problems.append("log_likelihood without observed_data['y']: whose likelihood is it?")
            elif not np.array_equal(ll_ids, observed):
                problems.append("log_likelihood and observed_data have different obs_id")
        temp = idata.log_likelihood.attrs.get("temperature")
        if temp is not None and not float(temp) > 0:
            problems.append(f"log_likelihood temperature must be > 0, got {temp}")
    if "posterior_predictive" in groups and "y" in idata.posterior_predictive:
        pp_ids = obs_ids("posterior_predictive", "y")
        y = idata.posterior_predictive["y"].values
        if not np.issubdtype(y.dtype, np.integer):
            problems.append(f"posterior_predictive['y'] must hold draws of y (integers), got {y.dtype}")
        if pp_ids is not None and observed is not None and not np.array_equal(pp_ids, observed):
            problems.append("posterior_predictive and observed_data have different obs_id")
    if "predictions" in groups:
        test_ids = obs_ids("predictions", "y_prob", "test_id")
        if test_ids is not None:
            prob = idata.predictions["y_prob"].values
            if prob.size and float(np.abs(prob.sum(-1) - 1).max()) > PROB_SUM_TOL:
                problems.append("predictions['y_prob'] rows do not sum to 1")
            if "predictions_constant_data" in groups:
                const = obs_ids("predictions_constant_data", "y", "test_id")
                if const is not None and not np.array_equal(const, test_ids):
                    problems.append("predictions and predictions_constant_data have different test_id")
    if problems:
        raise ValueError("InferenceData schema: " + "; ".join(problems))
    return next(iter(sizes.values()), (0, 0))


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
    # draws of sampled approximations (ensembles, grids, Laplace samples) are independent, and
    # posterior_idata says so in attrs["independent_draws"].
    if "posterior" not in idata.groups() or int(idata.attrs.get("independent_draws", 0)) == 1:
        return 1.0
    return None


def loo(idata: az.InferenceData, *, pointwise: bool = False, reff: float | None = None) -> Any:
    """PSIS-LOO estimate of the expected log pointwise predictive density (:func:`arviz.loo`).

    .. math:: \\widehat{\\mathrm{elpd}}_{\\mathrm{loo}} = \\sum_i \\log
              \\frac{\\sum_s w_{is}\\, p(y_i | \\theta_s)}{\\sum_s w_{is}}

    with Pareto-smoothed importance weights ``w_is ∝ 1 / p(y_i | θ_s)`` (Vehtari et al. 2017).
    Uses ``log_likelihood["y"]``, which must be the likelihood of the observations the posterior
    conditioned on (leaving one out of a posterior that never contained it estimates nothing).
    Without a posterior group, or with ``attrs["independent_draws"] == 1``, the draws are taken
    as independent (``reff = 1``), which ArviZ would otherwise refuse or estimate. Pareto k > 0.7
    (ArviZ warns) means the estimate for that observation is unreliable.

    With a likelihood temperature T (``log_likelihood.attrs["temperature"]``, the posterior
    ∝ p(θ) Π_j p(y_j | θ)^{1/T}) and the untempered log p stored, the weights 1/p remove a
    factor p(y_i | θ) of weight 1 where the posterior held weight 1/T: the estimate is
    Σ_i log ∫ p(y_i | θ) q_{-i}(θ) dθ with q_{-i} ∝ p(θ) p(y_i | θ)^{1/T − 1} Π_{j≠i} p(y_j | θ)^{1/T}.
    T = 1 is exact leave-one-out; T > 1 pushes the posterior away from y_i (a conservative
    elpd), T < 1 keeps part of y_i in (an optimistic one).

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
    without a posterior group can be compared too. The models are compared on the observations
    they share: when their ``obs_id`` coordinates differ (posteriors conditioned on different
    training rows), each log-likelihood is restricted to the ``obs_id`` common to all of them
    (none in common raises).

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
    models = _common_observations(models)
    elpds = {name: fn(idata, pointwise=True) for name, idata in models.items()}
    with warnings.catch_warnings():
        # arviz 0.23 sorts with ``inplace=True``, which pandas >= 3.1 deprecates; not ours to fix
        warnings.filterwarnings("ignore", message="The inplace keyword")
        return az.compare(elpds, ic=ic, method=method)


def _common_observations(models: Mapping[str, az.InferenceData]) -> dict[str, az.InferenceData]:
    """The models with their log-likelihoods restricted to the ``obs_id`` all of them share."""
    ids = {name: idata.log_likelihood["y"]["obs_id"].values for name, idata in models.items()}
    first = next(iter(ids.values()))
    if all(len(v) == len(first) and np.array_equal(v, first) for v in ids.values()):
        return dict(models)
    common = first
    for v in ids.values():
        common = np.intersect1d(common, v)
    if common.size == 0:
        raise ValueError("the models' log-likelihoods share no observation (obs_id): nothing to compare")
    return {name: idata.sel(obs_id=common, groups="log_likelihood") for name, idata in models.items()}
