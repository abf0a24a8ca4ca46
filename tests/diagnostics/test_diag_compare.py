"""Bayesian comparison of methods (bayes_lora.diagnostics.compare), NumPyro NUTS on CPU.

Two fits, shared by the tests of this module: a planted one (4 methods x 5 seeds x 2 tasks,
clearly separated, sampled centred) and a null one (two methods whose values are the same
numbers in another seed order, sampled non-centred). Permuting seeds within a method leaves the
likelihood unchanged, so the posterior is exactly symmetric in the two methods and P(A better
than B) = 0.5 up to Monte Carlo error — a known answer, not a lucky seed.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from bayes_lora.diagnostics.compare import METHOD_DIM, compare_methods

pytestmark = pytest.mark.filterwarnings("error")

NOISE = 0.01
SEEDS = 5
TASKS = {"sst2": 0.45, "obqa": 1.10}  # task baselines differ; effects are shared


def _noise(rng: np.random.Generator) -> np.ndarray:
    """Seed noise of sd ``NOISE`` whose mean over the seeds is exactly 0, so that the method
    means are exactly the planted ones and the posterior must centre on them."""
    e = rng.normal(size=SEEDS)
    return NOISE * (e - e.mean()) / e.std()


@pytest.fixture(scope="module")
def planted():
    """A = C (the very same numbers), D = A + 0.05, B = A + 0.1 (NLL: lower is better)."""
    rng = np.random.default_rng(0)
    rows = []
    for task, base in TASKS.items():
        a = base + _noise(rng)
        for method, values in {
            "A": a,
            "B": base + 0.10 + _noise(rng),
            "C": a.copy(),
            "D": base + 0.05 + _noise(rng),
        }.items():
            rows += [
                {"method": method, "seed": s, "task": task, "value": v}
                for s, v in enumerate(values)
            ]
    df = pd.DataFrame(rows)
    return df, compare_methods(df, metric="nll", seed=0)


@pytest.fixture(scope="module")
def null():
    rng = np.random.default_rng(1)
    rows = []
    for task, base in TASKS.items():
        a = base + 0.05 * rng.normal(size=SEEDS)
        for method, values in {"A": a, "B": a[::-1]}.items():
            rows += [
                {"method": method, "seed": s, "task": task, "value": v}
                for s, v in enumerate(values)
            ]
    return compare_methods(pd.DataFrame(rows), seed=1)


def test_planted_difference_is_recovered(planted):
    _, res = planted
    ab = res.pair("A", "B")
    assert ab["p_a_better"] > 0.95
    ba = res.pair("B", "A")  # B − A: the planted +0.1
    assert ba["p_a_better"] < 0.05
    assert ba["hdi_low"] < 0.1 < ba["hdi_high"]
    assert ba["mean_diff"] == pytest.approx(0.1, abs=0.003)
    bd = res.pair("B", "D")
    assert bd["hdi_low"] < 0.05 < bd["hdi_high"]
    assert bd["mean_diff"] == pytest.approx(0.05, abs=0.003)
    assert res.pair("D", "B")["p_a_better"] > 0.95


def test_identical_methods_are_not_separated(planted):
    _, res = planted
    ac = res.pair("A", "C")
    assert 0.35 < ac["p_a_better"] < 0.65
    assert abs(ac["mean_diff"]) < 0.005
    assert ac["hdi_low"] < 0.0 < ac["hdi_high"]


def test_diagnostics_and_tables(planted):
    df, res = planted
    assert res.max_rhat < 1.05
    assert res.min_ess > 200
    assert res.num_divergences == 0
    assert res.idata.attrs["parameterization"] == "centered"
    assert res.idata.attrs["metric"] == "nll"

    # methods best first: A and C tie at the top, then D, then B
    assert set(res.methods["method"][:2]) == {"A", "C"}
    assert list(res.methods["method"][2:]) == ["D", "B"]
    assert res.methods["n"].tolist() == [10, 10, 10, 10]
    assert res.methods["p_best"].sum() == pytest.approx(1.0)
    assert res.methods.set_index("method").loc["B", "p_best"] == 0.0
    # effects are offsets from the average method, on the original scale
    means = df.groupby("method")["value"].mean()
    effects = res.methods.set_index("method")["effect"]
    np.testing.assert_allclose(effects[means.index], means - means.mean(), atol=0.003)

    assert len(res.pairs) == 6
    assert list(res.pairs.columns) == [
        "method_a", "method_b", "p_a_better", "mean_diff", "hdi_low", "hdi_high",
    ]
    assert (res.pairs["hdi_low"] <= res.pairs["hdi_high"]).all()
    row = res.pairs.set_index(["method_a", "method_b"]).loc[("D", "B")]
    assert row["p_a_better"] == pytest.approx(res.pair("D", "B")["p_a_better"])

    post = res.idata.posterior
    assert post["effect"].dims == ("chain", "draw", METHOD_DIM)
    assert post.sizes["chain"] == 4 and post.sizes["draw"] == 500
    assert list(post[METHOD_DIM].values) == ["A", "B", "C", "D"]
    with pytest.raises(KeyError):
        res.pair("A", "Z")


def test_higher_is_better_flips_the_probability(planted):
    _, res = planted
    flipped = dataclasses.replace(res, lower_is_better=False)
    assert flipped.pair("B", "A")["p_a_better"] == pytest.approx(
        1.0 - res.pair("B", "A")["p_a_better"]
    )
    assert flipped.pair("B", "A")["mean_diff"] == res.pair("B", "A")["mean_diff"]


def test_null_comparison_is_symmetric(null):
    assert null.idata.attrs["parameterization"] == "noncentered"
    ab = null.pair("A", "B")
    assert 0.35 < ab["p_a_better"] < 0.65
    assert ab["hdi_low"] < 0.0 < ab["hdi_high"]
    assert null.max_rhat < 1.05
    assert null.num_divergences == 0


@pytest.mark.parametrize(
    "df, match",
    [
        (pd.DataFrame({"method": ["A", "B"], "score": [1.0, 2.0]}), "lacks"),
        (pd.DataFrame({"method": ["A", "A"], "value": [1.0, 2.0]}), "two methods"),
        (pd.DataFrame({"method": ["A", "B"], "value": [1.0, np.nan]}), "NaN"),
    ],
)
def test_invalid_input(df, match):
    with pytest.raises(ValueError, match=match):
        compare_methods(df)


def test_invalid_options():
    df = pd.DataFrame({"method": ["A", "B"], "value": [1.0, 2.0]})
    with pytest.raises(ValueError, match="hdi_prob"):
        compare_methods(df, hdi_prob=1.5)
    with pytest.raises(ValueError, match="parameterization"):
        compare_methods(df, parameterization="partial")
