"""Figures (bayes_lora.diagnostics.plots) and path barriers (bayes_lora.diagnostics.paths)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

from bayes_lora.diagnostics import metrics, plots
from bayes_lora.diagnostics.idata import to_inference_data
from bayes_lora.diagnostics.paths import PathResult, barrier

pytestmark = pytest.mark.filterwarnings("error")

GRID = np.linspace(0.0, 1.0, 21)  # includes t = 0.5


# --------------------------------------------------------------------------------------------
# paths
# --------------------------------------------------------------------------------------------
def test_barrier_of_a_symmetric_bump():
    loss = 0.45 + 0.12 * np.sin(np.pi * GRID)  # height 0.12 at t = 0.5, equal ends
    assert barrier(loss) == pytest.approx(0.12, abs=1e-12)


def test_barrier_is_measured_from_the_worse_end():
    assert barrier([0.4, 0.6, 0.75, 0.6, 0.5]) == pytest.approx(0.75 - 0.5, abs=1e-12)
    assert barrier([0.5, 0.6, 0.75, 0.6, 0.4]) == pytest.approx(0.75 - 0.5, abs=1e-12)
    assert barrier(0.4 + 0.1 * GRID) == 0.0  # monotone: no barrier
    assert barrier([0.5, 0.3, 0.45]) == 0.0  # a valley is no barrier


def test_path_result():
    loss = 0.45 + 0.12 * np.sin(np.pi * GRID)
    res = PathResult.from_grid(GRID, loss, 0.79 - 0.017 * np.sin(np.pi * GRID))
    assert res.barrier == pytest.approx(0.12)
    assert res.t_max == pytest.approx(0.5)
    d = res.to_dict()
    assert set(d) == {"t", "loss", "accuracy", "barrier"}
    assert json.loads(json.dumps(d)) == d
    assert PathResult.from_grid(GRID, loss).to_dict()["accuracy"] is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.barrier = 0.0


@pytest.mark.parametrize(
    "t, loss, match",
    [
        (np.linspace(0.1, 1.0, 5), np.zeros(5), "both ends"),
        (np.linspace(0.0, 0.9, 5), np.zeros(5), "both ends"),
        ([0.0, 0.6, 0.4, 1.0], np.zeros(4), "increasing"),
        (GRID, np.zeros(3), "shape"),
        ([0.0], [1.0], "endpoints"),
        (GRID, np.full(GRID.shape, np.nan), "NaN"),
    ],
)
def test_path_result_rejects_bad_grids(t, loss, match):
    with pytest.raises(ValueError, match=match):
        PathResult.from_grid(t, loss)


# --------------------------------------------------------------------------------------------
# plots
# --------------------------------------------------------------------------------------------
def _check_png(path, min_kb=5, min_px=200):
    import matplotlib.image as mpimg

    assert path.exists() and path.stat().st_size > min_kb * 1024
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > min_px and img.shape[1] > min_px
    assert img[..., :3].std() > 0.05  # not a blank canvas


@pytest.fixture
def predictive():
    rng = np.random.default_rng(0)
    s, n, c = 8, 400, 2
    logits = rng.normal(size=(n, c)) * 2 + 0.3 * rng.normal(size=(s, n, c))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = (rng.uniform(size=n) < probs.mean(0)[:, 1]).astype(np.int64)
    return probs, labels


@pytest.fixture(autouse=True)
def _no_pyplot_figures_left():
    yield
    import matplotlib.pyplot as plt

    assert plt.get_fignums() == []  # figures are built without pyplot


def test_reliability_diagram(predictive, tmp_path):
    probs, labels = predictive
    fig = plots.reliability_diagram(probs, labels, title="MAP", path=tmp_path / "rel.png")
    title = fig.axes[0].get_title()
    assert "ECE" in title and title.startswith("MAP")
    assert f"{metrics.ece(probs, labels):.2f} %" in title
    _check_png(tmp_path / "rel.png")
    # a single predictor may pass [N, C]
    fig1 = plots.reliability_diagram(probs[0], labels)
    assert f"{metrics.ece(probs[:1], labels):.2f}" in fig1.axes[0].get_title()


def test_path_plot(tmp_path):
    line = PathResult.from_grid(GRID, 0.45 + 0.12 * np.sin(np.pi * GRID), 0.79 - 0.02 * GRID)
    curve = {"t": GRID, "loss": 0.45 + 0.005 * np.sin(np.pi * GRID), "accuracy": 0.79 + 0 * GRID}
    fig = plots.path_plot({"line": line, "curve": curve}, path=tmp_path / "path.png")
    loss_ax, acc_ax = fig.axes
    legend = [t.get_text() for t in loss_ax.get_legend().get_texts()]
    assert legend == ["line (barrier 0.120)", "curve (barrier 0.005)"]  # computed when missing
    assert acc_ax.get_ylabel() == "accuracy (%)"
    _check_png(tmp_path / "path.png")
    only_loss = plots.path_plot({"line": {"t": GRID, "loss": GRID * (1 - GRID)}})
    assert len(only_loss.axes) == 1


def test_mi_histogram(tmp_path):
    rng = np.random.default_rng(1)
    mi_in, mi_out = rng.gamma(1.0, 0.001, 500), rng.gamma(1.0, 0.003, 400)
    fig = plots.mi_histogram(mi_in, mi_out, ("SST-2", "ARC"), path=tmp_path / "mi.png")
    ax = fig.axes[0]
    assert f"AUROC {metrics.ood_auroc(mi_in, mi_out):.3f}" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["SST-2 (n=500)", "ARC (n=400)"]
    _check_png(tmp_path / "mi.png")
    log_fig = plots.mi_histogram(mi_in, mi_out, log_x=True, path=tmp_path / "mi_log.png")
    assert log_fig.axes[0].get_xscale() == "log"
    _check_png(tmp_path / "mi_log.png")


def test_risk_coverage_plot(predictive, tmp_path):
    probs, labels = predictive
    _, _, mi = metrics.uncertainty_decomposition(probs)
    fig = plots.risk_coverage_plot(
        {"MAP": (probs[0], labels), "ensemble": (probs, labels), "ensemble, MI": (probs, labels, mi)},
        path=tmp_path / "rc.png",
    )
    texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert texts[1] == f"ensemble (AURC {metrics.aurc(probs, labels):.4f})"
    assert all("AURC" in t for t in texts)
    _check_png(tmp_path / "rc.png")


@pytest.fixture
def posterior_idata():
    rng = np.random.default_rng(2)
    return to_inference_data(
        posterior={
            "t": rng.uniform(size=(2, 100)),
            "z": rng.normal(size=(2, 100, 3)),
            "cores": rng.normal(size=(2, 100, 4, 8, 8)),
        },
        sample_stats={"diverging": rng.uniform(size=(2, 100)) < 0.02},
        method="nuts",
        chains=2,
    )


def test_trace_plot(posterior_idata, tmp_path):
    fig = plots.trace_plot(posterior_idata, max_coords=3, path=tmp_path / "trace.png")
    assert len(fig.axes) == 2 * 3  # one row per variable, density and draws
    assert "nuts" in fig.get_suptitle() and "first 3" in fig.get_suptitle()
    _check_png(tmp_path / "trace.png")
    one = plots.trace_plot(posterior_idata, var_names=["t"])
    assert len(one.axes) == 2
    with pytest.raises(KeyError):
        plots.trace_plot(posterior_idata, var_names=["nope"])


def test_rank_plot(posterior_idata, tmp_path):
    fig = plots.rank_plot(posterior_idata, max_coords=2, path=tmp_path / "rank.png")
    visible = [ax for ax in fig.axes if ax.axison]
    assert len(visible) == 1 + 2 + 2  # t, first 2 of z, first 2 of the flattened cores
    _check_png(tmp_path / "rank.png")


def test_comparison_plot_wide_and_long(tmp_path):
    rng = np.random.default_rng(3)
    wide = pd.DataFrame(
        [
            {"method": m, "seed": s, "nll": 0.45 + 0.01 * i + 0.005 * rng.normal(),
             "ece": 4 + 0.3 * i + 0.2 * rng.normal(), "accuracy": 0.79 + 0.004 * rng.normal()}
            for i, m in enumerate(["MAP", "ensemble", "laplace", "curve"])
            for s in range(3)
        ]
    )
    fig = plots.comparison_plot(wide, path=tmp_path / "cmp.png")
    assert [ax.get_title() for ax in fig.axes] == [
        "nll (lower is better)", "ece (lower is better)", "accuracy (higher is better)",
    ]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == [
        "MAP", "ensemble", "laplace", "curve",
    ]
    _check_png(tmp_path / "cmp.png")
    long = wide.melt(id_vars=["method", "seed"], var_name="metric", value_name="value")
    fig_long = plots.comparison_plot(long, metrics=["nll"], path=tmp_path / "cmp_long.png")
    assert len(fig_long.axes) == 1
    # the big dot of each method sits at its mean over seeds
    means = wide.groupby("method", sort=False)["nll"].mean().to_numpy()
    dots = [line.get_xdata()[0] for line in fig_long.axes[0].lines if line.get_markersize() == 7]
    np.testing.assert_allclose(dots, means)
    _check_png(tmp_path / "cmp_long.png")
    with pytest.raises(ValueError, match="no column"):
        plots.comparison_plot(wide, metrics=["brier"])
