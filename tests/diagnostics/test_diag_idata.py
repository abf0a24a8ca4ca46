"""ArviZ conversion (bayes_lora.diagnostics.idata): groups, dims, netCDF, LOO / WAIC, R-hat."""
from __future__ import annotations

import json

import arviz as az
import numpy as np
import pytest

from bayes_lora.diagnostics import idata as di

pytestmark = pytest.mark.filterwarnings("error")

CHAINS, DRAWS, OBS, CLASSES = 2, 50, 30, 3


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def arrays():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(OBS, CLASSES)) + 0.1 * rng.normal(size=(CHAINS, DRAWS, OBS, CLASSES))
    probs = _softmax(logits)
    labels = rng.integers(0, CLASSES, OBS)
    loglik = np.log(np.take_along_axis(probs, labels[None, None, :, None], -1)[..., 0])
    return {
        "t": rng.uniform(size=(CHAINS, DRAWS)),
        "z": rng.normal(size=(CHAINS, DRAWS, 4)),
        "cores": rng.normal(size=(CHAINS, DRAWS, 1500)),
        "probs": probs,
        "labels": labels,
        "loglik": loglik,
        "stats": {
            "divergences": rng.uniform(size=(CHAINS, DRAWS)) < 0.1,
            "energy": rng.normal(size=(CHAINS, DRAWS)),
            "step_size": np.array([0.1, 0.2]),  # one per chain
            "tree_depth": np.full((CHAINS, DRAWS), 3),
            "accept_prob": rng.uniform(size=(CHAINS, DRAWS)),
        },
    }


def _full(a, **kw):
    return di.to_inference_data(
        posterior={"t": a["t"], "z": a["z"], "cores": a["cores"]},
        log_likelihood=a["loglik"],
        probs=a["probs"],
        labels=a["labels"],
        sample_stats=a["stats"],
        method="nuts",
        options={"num_warmup": 100, "target_accept": 0.8, "dtype": np.float32(1.5)},
        **kw,
    )


def test_groups_dims_and_names(arrays):
    idata = _full(arrays)
    assert set(idata.groups()) == {
        "posterior", "sample_stats", "log_likelihood", "posterior_predictive", "observed_data",
    }
    post = idata.posterior
    assert post["t"].dims == ("chain", "draw") and post["t"].shape == (CHAINS, DRAWS)
    assert post["z"].dims == ("chain", "draw", "z_dim_0")
    assert post["cores"].shape == (CHAINS, DRAWS, 1500)
    np.testing.assert_array_equal(post["z"].values, arrays["z"])

    ll = idata.log_likelihood["y"]
    assert ll.dims == ("chain", "draw", "obs_id") and ll.shape == (CHAINS, DRAWS, OBS)
    np.testing.assert_allclose(ll.values, arrays["loglik"])
    pp = idata.posterior_predictive["y_prob"]
    assert pp.dims == ("chain", "draw", "obs_id", "class")
    assert pp.shape == (CHAINS, DRAWS, OBS, CLASSES)
    obs = idata.observed_data["y"]
    assert obs.dims == ("obs_id",)
    np.testing.assert_array_equal(obs.values, arrays["labels"])

    ss = idata.sample_stats
    assert set(ss.data_vars) == {"diverging", "energy", "step_size", "tree_depth", "acceptance_rate"}
    assert ss["diverging"].dtype == bool
    np.testing.assert_array_equal(ss["diverging"].values, arrays["stats"]["divergences"])
    np.testing.assert_array_equal(ss["step_size"].values[:, 0], [0.1, 0.2])
    np.testing.assert_array_equal(ss["step_size"].values[1], np.full(DRAWS, 0.2))
    np.testing.assert_array_equal(ss["acceptance_rate"].values, arrays["stats"]["accept_prob"])

    assert idata.attrs["method"] == "nuts"
    assert json.loads(idata.attrs["options"]) == {
        "num_warmup": 100, "target_accept": 0.8, "dtype": 1.5,
    }
    assert post.attrs["method"] == "nuts"


def test_potential_energy_becomes_lp():
    pe = np.arange(6.0).reshape(1, 6)
    idata = di.to_inference_data(
        sample_stats={"potential_energy": pe}, method="nuts", chains=1
    )
    np.testing.assert_array_equal(idata.sample_stats["lp"].values, -pe)


def test_divergence_indices_are_rejected():
    with pytest.raises(ValueError, match="mask"):  # Pyro lists divergent draw indices
        di.to_inference_data(
            sample_stats={"divergences": np.array([[3, 17]])}, method="nuts", chains=1
        )
    with pytest.raises(ValueError, match="twice"):
        di.to_inference_data(
            sample_stats={"accept_prob": np.ones((1, 4)), "acceptance": np.ones((1, 4))},
            method="nuts",
            chains=1,
        )


def test_max_coords_keeps_first_coordinates(arrays):
    cores4d = arrays["cores"].reshape(CHAINS, DRAWS, 15, 10, 10)
    idata = di.to_inference_data(
        posterior={"t": arrays["t"], "z": arrays["z"], "cores": arrays["cores"], "c4": cores4d},
        log_likelihood=arrays["loglik"],
        method="curve",
        max_coords=10,
    )
    post = idata.posterior
    assert post["cores"].dims == ("chain", "draw", "cores_dim_0")
    np.testing.assert_array_equal(post["cores"].values, arrays["cores"][..., :10])
    assert post["c4"].dims == ("chain", "draw", "c4_flat")
    np.testing.assert_array_equal(post["c4"].values, cores4d.reshape(CHAINS, DRAWS, -1)[..., :10])
    np.testing.assert_array_equal(post["z"].values, arrays["z"])  # 4 <= 10: untouched
    assert json.loads(idata.attrs["truncated"]) == {"cores": [1500], "c4": [15, 10, 10]}


def test_missing_groups_are_skipped(arrays):
    idata = di.to_inference_data(log_likelihood=arrays["loglik"], method="ensemble")
    assert list(idata.groups()) == ["log_likelihood"]
    assert json.loads(idata.attrs["options"]) == {}


def test_one_chain_input_gets_chain_dim_of_one(arrays):
    ll = arrays["loglik"][0]  # [draw, obs]
    idata = di.to_inference_data(
        posterior={"t": arrays["t"][0]}, log_likelihood=ll, probs=arrays["probs"][0],
        labels=arrays["labels"], method="laplace",
    )
    assert idata.posterior["t"].shape == (1, DRAWS)
    assert idata.log_likelihood["y"].shape == (1, DRAWS, OBS)
    assert idata.posterior_predictive["y_prob"].shape == (1, DRAWS, OBS, CLASSES)
    only_latents = di.to_inference_data(posterior={"z": arrays["z"][0]}, method="swag")
    assert only_latents.posterior["z"].shape == (1, DRAWS, 4)


def test_torch_inputs_are_accepted(arrays):
    torch = pytest.importorskip("torch")
    idata = di.to_inference_data(
        posterior={"t": torch.from_numpy(arrays["t"])},
        log_likelihood=torch.from_numpy(arrays["loglik"]),
        labels=torch.from_numpy(arrays["labels"]),
        method="nuts",
    )
    np.testing.assert_allclose(idata.log_likelihood["y"].values, arrays["loglik"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"chains": 3}, "chain"),
        ({"labels": np.zeros(OBS + 1, dtype=int)}, "observations"),
        ({"labels": np.full(OBS, 0.5)}, "integers"),
        ({"log_likelihood": np.full((CHAINS, DRAWS, OBS), -np.inf)}, "NaN/Inf"),
        ({"probs": np.full((CHAINS, DRAWS, OBS, CLASSES), 0.5)}, "sum to 1"),
        ({"posterior": {"t": np.zeros((CHAINS, DRAWS + 1))}}, "chain, draw"),
        ({"method": ""}, "method"),
        ({"max_coords": 0}, "max_coords"),
    ],
)
def test_invalid_inputs_raise(arrays, kwargs, match):
    base = {"log_likelihood": arrays["loglik"], "probs": arrays["probs"], "method": "nuts"}
    with pytest.raises(ValueError, match=match):
        di.to_inference_data(**{**base, **kwargs})


def test_netcdf_round_trip(arrays, tmp_path):
    idata = _full(arrays, max_coords=20)
    path = tmp_path / "posterior.nc"
    assert di.save_idata(idata, path) == str(path)
    back = di.load_idata(path)
    path.unlink()  # loaded eagerly: the file is no longer needed
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        a, b = idata[group], back[group]
        assert set(a.data_vars) == set(b.data_vars)
        for name in a.data_vars:
            assert a[name].dims == b[name].dims
            assert a[name].dtype == b[name].dtype
            np.testing.assert_array_equal(a[name].values, b[name].values)
    assert back.attrs["method"] == "nuts"
    assert json.loads(back.attrs["options"]) == json.loads(idata.attrs["options"])
    assert json.loads(back.attrs["truncated"]) == {"cores": [1500]}


def _benign_loglik(rng, chains=2, draws=100, obs=30, noise=0.01):
    """Draws that barely differ: importance weights are near uniform (Pareto k small)."""
    base = np.log(rng.uniform(0.2, 0.9, size=obs))
    return base + noise * rng.normal(size=(chains, draws, obs))


def test_loo_and_waic_match_their_formulas():
    rng = np.random.default_rng(1)
    ll = _benign_loglik(rng)
    idata = di.to_inference_data(
        posterior={"t": rng.uniform(size=ll.shape[:2])}, log_likelihood=ll, method="nuts"
    )
    flat = ll.reshape(-1, ll.shape[-1])
    lppd_i = np.log(np.mean(np.exp(flat), axis=0))
    lppd = lppd_i.sum()

    loo = di.loo(idata, pointwise=True)
    assert np.all(loo.pareto_k.values < 0.5)
    assert loo.elpd_loo == pytest.approx(lppd, abs=0.02)
    assert loo.elpd_loo <= lppd + 1e-9  # leaving an observation out never helps it
    assert loo.loo_i.shape == (ll.shape[-1],)

    waic = di.waic(idata)
    expected = lppd - flat.var(axis=0).sum()  # arviz: population variance (ddof=0)
    assert waic.elpd_waic == pytest.approx(expected, rel=1e-9)
    assert "elpd_waic" in str(waic)  # arviz's non-pointwise label would break its repr
    assert "waic_i" not in waic.index
    assert "waic_i" in di.waic(idata, pointwise=True).index


def test_loo_without_posterior_group_uses_independent_draws():
    rng = np.random.default_rng(2)
    ll = _benign_loglik(rng, chains=1)[0]  # [draw, obs] of, e.g., an ensemble
    idata = di.to_inference_data(log_likelihood=ll, method="ensemble")
    with pytest.raises(TypeError, match="posterior"):
        az.loo(idata)  # what the wrapper works around
    res = di.loo(idata)
    assert np.isfinite(res.elpd_loo)


def test_compare_loo_ranks_the_better_model_first():
    rng = np.random.default_rng(3)
    ll = _benign_loglik(rng)
    good = di.to_inference_data(log_likelihood=ll, method="good")
    bad = di.to_inference_data(log_likelihood=ll - 0.2, method="bad")
    table = di.compare_loo({"bad": bad, "good": good})
    assert list(table.index) == ["good", "bad"]
    assert table.loc["bad", "elpd_diff"] == pytest.approx(0.2 * ll.shape[-1], rel=1e-3)
    assert {"rank", "elpd_loo", "weight", "se", "dse"} <= set(table.columns)
    with pytest.raises(ValueError, match="two"):
        di.compare_loo({"good": good})


def test_summary_rhat_and_ess():
    rng = np.random.default_rng(4)
    iid = di.to_inference_data(
        posterior={"t": rng.normal(size=(4, 500)), "z": rng.normal(size=(4, 500, 2))},
        method="iid",
        chains=4,
    )
    table = di.summary(iid)
    assert {"r_hat", "ess_bulk", "ess_tail", "mean", "sd"} <= set(table.columns)
    assert list(table.index) == ["t", "z[0]", "z[1]"]
    assert (table["r_hat"] < 1.02).all()
    assert (table["ess_bulk"] > 1000).all()

    apart = np.stack([rng.normal(0.0, 1.0, 500), rng.normal(5.0, 1.0, 500)])
    stuck = di.to_inference_data(posterior={"t": apart}, method="nuts", chains=2)
    assert di.summary(stuck, var_names=["t"]).loc["t", "r_hat"] > 1.1
    with pytest.raises(ValueError, match="posterior"):
        di.summary(di.to_inference_data(log_likelihood=apart[..., None], method="x"))
