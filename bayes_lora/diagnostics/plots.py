"""Figures of the diagnostics, readable at a glance.

Every function builds a :class:`matplotlib.figure.Figure` directly — no pyplot, so no global
figure registry, no backend switch and nothing left open — returns it, and when ``path`` is
given also writes it as a PNG (``dpi`` 120 by default). Titles carry the headline number (ECE,
AURC, barrier, AUROC) so a figure can be read without its caption.

=========================  =================================================================
function                   shows
=========================  =================================================================
:func:`reliability_diagram`  accuracy against confidence per bin, ECE in the title
:func:`path_plot`          loss and accuracy along straight lines and curves, barriers in the legend
:func:`mi_histogram`       mutual information in- vs out-of-distribution, AUROC in the title
:func:`spectrum_plot`      a covariance's eigenvalues: share of the variance per direction, cumulative
:func:`risk_coverage_plot`  selective-prediction risk against coverage, AURC in the legend
:func:`trace_plot`         ``arviz.plot_trace`` of the posterior (first coordinates only)
:func:`rank_plot`          ``arviz.plot_rank`` (rank histograms per chain)
:func:`comparison_plot`    methods' metrics side by side (mean ± sd over seeds, seeds as dots)
=========================  =================================================================

matplotlib and arviz are imported inside the functions.
"""
from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import arviz as az
    import pandas as pd
    from matplotlib.figure import Figure

__all__ = [
    "LOWER_IS_BETTER",
    "comparison_plot",
    "mi_histogram",
    "path_plot",
    "rank_plot",
    "reliability_diagram",
    "risk_coverage_plot",
    "spectrum_plot",
    "trace_plot",
]

#: Metrics for which a lower value is better (the others, e.g. accuracy, are higher-better).
LOWER_IS_BETTER = frozenset({"nll", "ece", "brier", "aurc", "loss", "barrier"})

#: Default resolution of written PNGs.
DPI = 120


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _finish(fig: Figure, path: Any, dpi: int) -> Figure:
    if path is not None:
        fig.savefig(str(path), dpi=dpi, format="png")
    return fig


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _with_sample_axis(probs: Any) -> Any:
    """[N, C] → [1, N, C] (one deterministic predictor); [S, N, C] unchanged."""
    return probs[None] if np.ndim(probs) == 2 else probs


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------
def reliability_diagram(
    probs: Any,
    labels: Any,
    *,
    n_bins: int = 15,
    title: str = "Reliability diagram",
    path: Any = None,
    dpi: int = DPI,
) -> Figure:
    """Accuracy against confidence of the model average, per equal-width confidence bin.

    Bars are the accuracy of each non-empty bin, the red segments the gap to its mean
    confidence, the dashed diagonal perfect calibration; the lower panel counts the examples
    per bin. The title ends with the ECE in percent (:func:`metrics.ece`, same bins).

    Parameters
    ----------
    probs : array or Tensor, shape [S, N, C] or [N, C]
        Per-sample predictive probabilities (a single predictor may pass [N, C]).
    labels : integer array, shape [N]
    n_bins : int, default 15
    title : str
    path : str or Path, optional
        Where to write the PNG.
    """
    from bayes_lora.diagnostics.metrics import reliability_bins

    rb = reliability_bins(_with_sample_axis(probs), labels, n_bins=n_bins)
    fig = _figure((5.5, 6.0))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = np.diff(rb.edges)
    centers = rb.edges[:-1] + width / 2
    filled = rb.counts > 0
    ax.bar(
        centers[filled], rb.accuracy[filled], width=width[filled], color="C0", alpha=0.8,
        edgecolor="white", label="accuracy",
    )
    ax.vlines(
        rb.confidence[filled], rb.accuracy[filled], rb.confidence[filled], color="C3", lw=2,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], ls="--", color="0.4", label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), ylabel="accuracy")
    ax.set_title(f"{title} — ECE {rb.ece:.2f} %")
    ax.legend(loc="upper left", fontsize="small")
    ax_n.bar(centers, rb.counts, width=width, color="0.5", edgecolor="white")
    ax_n.set(xlabel="confidence (max class probability of the model average)", ylabel="examples")
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# Paths between optima
# --------------------------------------------------------------------------------------------
def _path_fields(item: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float]:
    from bayes_lora.diagnostics.paths import barrier

    d = item.to_dict() if hasattr(item, "to_dict") else item
    t = _as_numpy(d["t"]).astype(np.float64)
    loss = _as_numpy(d["loss"]).astype(np.float64)
    acc = d.get("accuracy")
    acc = None if acc is None else _as_numpy(acc).astype(np.float64)
    b = d.get("barrier")
    return t, loss, acc, float(barrier(loss) if b is None else b)


def path_plot(
    paths: Mapping[str, Any],
    *,
    title: str = "Loss and accuracy along paths between optima",
    path: Any = None,
    dpi: int = DPI,
) -> Figure:
    """Loss (left) and accuracy (right) along each path, e.g. the straight line vs the curve.

    Parameters
    ----------
    paths : dict of name to PathResult or mapping
        Each with ``"t"``, ``"loss"``, optionally ``"accuracy"`` (fraction; plotted in %) and
        ``"barrier"`` (computed from the loss when missing). The legend shows every barrier.
    title : str
    path : str or Path, optional
    """
    if not paths:
        raise ValueError("paths is empty")
    fields = {name: _path_fields(item) for name, item in paths.items()}
    with_acc = any(acc is not None for _, _, acc, _ in fields.values())
    fig = _figure((11.0, 4.2) if with_acc else (6.0, 4.2))
    axes = fig.subplots(1, 2 if with_acc else 1, squeeze=False)[0]
    for i, (name, (t, loss, acc, b)) in enumerate(fields.items()):
        style = {"color": f"C{i}", "marker": "o", "ms": 3}
        axes[0].plot(t, loss, label=f"{name} (barrier {b:.3f})", **style)
        if with_acc and acc is not None:
            axes[1].plot(t, 100 * acc, label=name, **style)
    axes[0].set(xlabel="t (position on the path)", ylabel="loss (NLL, nats)", title="Loss")
    axes[0].legend(fontsize="small")
    if with_acc:
        axes[1].set(xlabel="t (position on the path)", ylabel="accuracy (%)", title="Accuracy")
        axes[1].legend(fontsize="small")
    fig.suptitle(title)
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# Uncertainty
# --------------------------------------------------------------------------------------------
def mi_histogram(
    mi_in: Any,
    mi_out: Any,
    labels: Sequence[str] = ("in-distribution", "out-of-distribution"),
    *,
    bins: int = 30,
    log_x: bool = False,
    title: str = "Epistemic uncertainty (mutual information)",
    path: Any = None,
    dpi: int = DPI,
) -> Figure:
    """Histograms of per-example mutual information, in- vs out-of-distribution.

    Both histograms share their bins and are normalised to densities, so sets of different
    sizes compare. The title adds the OOD AUROC with MI as the score
    (:func:`metrics.ood_auroc`; 0.5 = chance).

    Parameters
    ----------
    mi_in, mi_out : array, shape [N_in], [N_out]
        Mutual information (nats) per example, e.g. the third output of
        :func:`metrics.uncertainty_decomposition`.
    labels : (str, str)
        Names of the two sets.
    bins : int
    log_x : bool
        Logarithmic bins and axis (MI often spans orders of magnitude); values are floored
        at 1e-12 for it.
    """
    from bayes_lora.diagnostics.metrics import ood_auroc

    a = _as_numpy(mi_in).astype(np.float64).ravel()
    b = _as_numpy(mi_out).astype(np.float64).ravel()
    if len(labels) != 2:
        raise ValueError(f"labels needs two names, got {labels!r}")
    auroc = ood_auroc(a, b)
    both = np.concatenate([a, b])
    if log_x:
        a, b, both = (np.maximum(x, 1e-12) for x in (a, b, both))
        lo, hi = both.min(), both.max()
        edges = np.geomspace(lo, hi if hi > lo else lo * 10, bins + 1)
    else:
        edges = np.histogram_bin_edges(both, bins=bins)
    fig = _figure((6.5, 4.2))
    ax = fig.subplots()
    for x, name, color in ((a, labels[0], "C0"), (b, labels[1], "C3")):
        ax.hist(x, bins=edges, density=True, alpha=0.45, color=color, label=f"{name} (n={len(x)})")
        ax.hist(x, bins=edges, density=True, histtype="step", color=color, lw=1.5)
    if log_x:
        ax.set_xscale("log")
    ax.set(xlabel="mutual information (nats)", ylabel="density")
    ax.set_title(f"{title} — OOD AUROC {auroc:.3f}")
    ax.legend()
    return _finish(fig, path, dpi)


def spectrum_plot(
    spectrum: Mapping[str, Any],
    *,
    title: str = "Covariance spectrum",
    path: Any = None,
    dpi: int = DPI,
) -> Figure:
    """A covariance's largest eigenvalues as shares of its trace (bars) and their cumulative share
    (line): how few directions hold the variance.

    Parameters
    ----------
    spectrum : mapping
        ``eigenvalues`` (descending), ``trace``, ``dim`` and ``exact``, as returned by a
        posterior's ``covariance_spectrum()``.
    """
    from bayes_lora.diagnostics.metrics import variance_shares

    eig = np.asarray(spectrum["eigenvalues"], dtype=np.float64)
    share = eig / float(spectrum["trace"])
    k = np.arange(1, len(eig) + 1)
    fig = _figure((6.5, 4.2))
    ax = fig.subplots()
    ax.bar(k, share, color="C0", alpha=0.6, label="share of the variance")
    ax.plot(k, np.cumsum(share), "o-", color="C3", ms=3, label="cumulative")
    ax.set(xlabel="eigen-direction (largest first)", ylabel="share of the trace", ylim=(0, 1.02))
    bound = "" if spectrum.get("exact", True) else " (low-rank part: lower bounds)"
    top3 = variance_shares(spectrum, (3,))[3]
    ax.set_title(f"{title}: d = {spectrum['dim']}, top {min(3, len(eig))} hold {top3:.0%}{bound}")
    ax.legend()
    return _finish(fig, path, dpi)


def risk_coverage_plot(
    predictions: Mapping[str, Sequence[Any]],
    *,
    title: str = "Selective prediction",
    path: Any = None,
    dpi: int = DPI,
) -> Figure:
    """Risk–coverage curves of several methods, AURC in the legend (lower is better).

    Parameters
    ----------
    predictions : dict of name to (probs, labels) or (probs, labels, score)
        ``probs`` [S, N, C] or [N, C]; optional ``score`` [N] ranks by uncertainty instead of
        confidence (see :func:`metrics.risk_coverage`).
    """
    from bayes_lora.diagnostics.metrics import risk_coverage

    if not predictions:
        raise ValueError("predictions is empty")
    fig = _figure((6.5, 4.5))
    ax = fig.subplots()
    for i, (name, item) in enumerate(predictions.items()):
        if len(item) not in (2, 3):
            raise ValueError(f"{name}: expected (probs, labels) or (probs, labels, score)")
        score = item[2] if len(item) == 3 else None
        rc = risk_coverage(_with_sample_axis(item[0]), item[1], score)
        ax.plot(rc.coverage, rc.risk, color=f"C{i}", label=f"{name} (AURC {rc.aurc:.4f})")
    ax.set(xlim=(0, 1), xlabel="coverage (fraction of examples kept)",
           ylabel="risk (error rate among kept)", title=title)
    ax.set_ylim(bottom=0)
    ax.legend()
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# MCMC diagnostics (ArviZ)
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _arviz_mpl_warnings():
    """Silence the one deprecation arviz 0.23 triggers in matplotlib >= 3.11 (its kwarg
    de-aliasing passes a dict to ``normalize_kwargs``); not ours to fix, harmless until 3.13."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Passing a dict or None as alias_mapping")
        yield


def _first_coords(idata: az.InferenceData, var_names: Sequence[str] | None, max_coords: int):
    """Posterior cut to the first ``max_coords`` coordinates of each variable, with the
    sample stats kept (for divergence marks). Returns (InferenceData, names, n_panels)."""
    import arviz as az
    import xarray as xr

    if "posterior" not in idata.groups():
        raise ValueError("idata has no posterior group")
    post = idata.posterior
    names = list(post.data_vars) if var_names is None else list(var_names)
    missing = [n for n in names if n not in post.data_vars]
    if missing:
        raise KeyError(f"unknown posterior variable(s) {missing}; have {list(post.data_vars)}")
    if not names:
        raise ValueError("the posterior has no variables to plot")
    data, n_panels, cut = {}, 0, False
    for name in names:
        da = post[name]
        event = [d for d in da.dims if d not in ("chain", "draw")]
        cut = cut or int(np.prod([da.sizes[d] for d in event])) > max_coords
        if len(event) == 1:
            da = da.isel({event[0]: slice(0, max_coords)})
        elif len(event) > 1:
            flat = da.values.reshape(da.shape[:2] + (-1,))[..., :max_coords]
            da = az.dict_to_dataset({name: flat}, dims={name: [f"{name}_flat"]})[name]
        data[name] = da
        n_panels += int(np.prod([da.sizes[d] for d in da.dims if d not in ("chain", "draw")]))
    groups = {"posterior": xr.Dataset(data, attrs=post.attrs)}
    if "sample_stats" in idata.groups():
        groups["sample_stats"] = idata.sample_stats
    return az.InferenceData(**groups), names, n_panels, cut


def _suptitle(fig: Figure, title: str | None, kind: str, idata: Any, max_coords: int, cut: bool):
    if title is None:
        method = idata.attrs.get("method") if hasattr(idata, "attrs") else None
        title = kind + (f" — {method}" if method else "")
        if cut:
            title += f" (first {max_coords} coordinates of each variable)"
    fig.suptitle(title)


def trace_plot(
    idata: az.InferenceData,
    var_names: Sequence[str] | None = None,
    *,
    max_coords: int = 4,
    title: str | None = None,
    path: Any = None,
    dpi: int = DPI,
) -> Figure:
    """``arviz.plot_trace``: per variable, the marginal density per chain (left) and the draws
    (right), divergences marked when ``sample_stats`` has them.

    Parameters
    ----------
    idata : arviz.InferenceData
        With a posterior group.
    var_names : list of str, optional
        Variables to show (all by default), one row each.
    max_coords : int, default 4
        Only the first coordinates of a vector (or flattened array) variable are drawn, so
        that 1,500 core coordinates do not become 1,500 lines.
    """
    import arviz as az

    small, names, _, cut = _first_coords(idata, var_names, max_coords)
    fig = _figure((11.0, 2.3 * len(names) + 0.6))
    axes = fig.subplots(len(names), 2, squeeze=False)
    with _arviz_mpl_warnings():
        az.plot_trace(small, var_names=names, compact=True, axes=axes, show=False)
    for ax in axes[:, 1]:
        ax.set_xlabel("draw")
    _suptitle(fig, title, "Trace plot", idata, max_coords, cut)
    return _finish(fig, path, dpi)


def rank_plot(
    idata: az.InferenceData,
    var_names: Sequence[str] | None = None,
    *,
    max_coords: int = 4,
    title: str | None = None,
    path: Any = None,
    dpi: int = DPI,
) -> Figure:
    """``arviz.plot_rank``: histograms of the ranks of each chain's draws among all chains.

    Well-mixed chains give flat, overlapping histograms (Vehtari et al. 2021); a chain stuck
    elsewhere piles up at one end. One panel per scalar coordinate, the first ``max_coords``
    of each variable.
    """
    import arviz as az
    from arviz.plots.plot_utils import default_grid

    small, names, n_panels, cut = _first_coords(idata, var_names, max_coords)
    rows, cols = default_grid(n_panels)
    figsize = (3.6 * cols, 2.8 * rows + 0.6)
    fig = _figure(figsize)
    axes = fig.subplots(int(rows), int(cols), squeeze=False)
    for ax in axes.ravel()[n_panels:]:
        ax.set_axis_off()
    with _arviz_mpl_warnings():
        # plot_rank takes ``ax=`` where plot_trace takes ``axes=`` (arviz 0.x); the figsize
        # only scales its fonts to our figure
        az.plot_rank(
            small, var_names=names, ax=axes.ravel()[:n_panels], figsize=figsize, show=False
        )
    _suptitle(fig, title, "Rank plot", idata, max_coords, cut)
    return _finish(fig, path, dpi)


# --------------------------------------------------------------------------------------------
# Methods side by side
# --------------------------------------------------------------------------------------------
def comparison_plot(
    df: pd.DataFrame,
    metrics: Sequence[str] | None = None,
    *,
    method: str = "method",
    title: str = "Methods compared",
    path: Any = None,
    dpi: int = DPI,
) -> Figure:
    """Dot plot of methods' metrics: one panel per metric, one row per method.

    Each seed is a small grey dot; the large dot and bar are the mean ± one standard deviation
    over seeds. Panel titles say which direction is better.

    Parameters
    ----------
    df : pandas.DataFrame
        Either *wide* — a ``method`` column and one column per metric, one row per run — or
        *long* — columns ``method``, ``metric``, ``value``.
    metrics : list of str, optional
        Metrics to show, in order; by default ``nll, ece, accuracy`` when present, else every
        numeric column except ``seed``.
    method : str, default "method"
        Name of the column with the method names.
    """
    import pandas as pd

    if method not in df.columns:
        raise ValueError(f"df has no {method!r} column; it has {list(df.columns)}")
    names = list(pd.unique(df[method].astype(str)))
    wide = df
    if {"metric", "value"} <= set(df.columns):
        wide = df.assign(_run=df.groupby([method, "metric"]).cumcount()).pivot_table(
            index=[method, "_run"], columns="metric", values="value"
        ).reset_index()
    if metrics is None:
        preferred = [m for m in ("nll", "ece", "accuracy") if m in wide.columns]
        numeric = [
            c for c in wide.columns
            if c not in (method, "seed", "_run", "task") and pd.api.types.is_numeric_dtype(wide[c])
        ]
        metrics = preferred or numeric
    metrics = list(metrics)
    missing = [m for m in metrics if m not in wide.columns]
    if missing or not metrics:
        raise ValueError(f"no column(s) {missing or metrics} in df; it has {list(wide.columns)}")

    ypos = {name: i for i, name in enumerate(names)}
    fig = _figure((3.6 * len(metrics) + 1.2, 0.45 * len(names) + 1.8))
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        keys = wide[method].astype(str)
        for name in names:
            values = wide.loc[keys == name, metric].dropna().to_numpy(dtype=np.float64)
            if values.size == 0:
                continue
            y = ypos[name]
            ax.plot(values, np.full(values.size, y), "o", color="0.6", ms=3, zorder=1)
            sd = values.std(ddof=1) if values.size > 1 else 0.0
            ax.errorbar(values.mean(), y, xerr=sd, fmt="o", color="C0", ms=7, capsize=3, zorder=2)
        key = metric.lower()
        direction = "lower is better" if key in LOWER_IS_BETTER else (
            "higher is better" if key in ("accuracy", "acc", "auroc", "ood_auroc") else ""
        )
        ax.set_title(f"{metric}{f' ({direction})' if direction else ''}")
        ax.set_xlabel(metric)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(range(len(names)), names)
    axes[0].set_ylim(-0.6, len(names) - 0.4)
    axes[0].invert_yaxis()
    fig.suptitle(f"{title} (mean ± sd over runs; dots: runs)")
    return _finish(fig, path, dpi)
