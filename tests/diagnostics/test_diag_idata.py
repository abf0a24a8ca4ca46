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


# --------------------------------------------------------------------------------------------
# ArviZ semantics: new groups, the schema check, PSIS-LOO against exact leave-one-out
# --------------------------------------------------------------------------------------------
def _normal_logpdf(y, mean, var):
    return -0.5 * (np.log(2 * np.pi * var) + (y - mean) ** 2 / var)


def _conjugate(temperature=1.0, n=30, chains=4, draws=2000, seed=0):
    """y_i ~ N(μ, σ² = 1), μ ~ N(0, s0² = 4); exact draws of the tempered posterior
    p_T(μ | y) ∝ p(μ) Π p(y_i | μ)^{1/T} and the untempered log p(y_i | μ_s)."""
    rng = np.random.default_rng(seed)
    sigma2, s02 = 1.0, 4.0
    y = rng.normal(0.7, 1.0, size=n)
    prec = 1 / s02 + n / (temperature * sigma2)
    mean = (y.sum() / (temperature * sigma2)) / prec
    mu = rng.normal(mean, prec ** -0.5, size=(chains, draws))
    ll = _normal_logpdf(y, mu[..., None], sigma2)
    return y, mu, ll, (sigma2, prec, mean)


def test_psis_loo_matches_exact_leave_one_out_on_a_conjugate_model():
    y, mu, ll, (sigma2, prec, mean) = _conjugate()
    # exact: removing y_i leaves N(m_-i, 1/τ_-i) with τ_-i = τ - 1/σ²; p(y_i | y_-i) = N(m_-i, σ² + 1/τ_-i)
    prec_i = prec - 1 / sigma2
    mean_i = (mean * prec - y / sigma2) / prec_i
    exact = _normal_logpdf(y, mean_i, sigma2 + 1 / prec_i)
    lppd = _normal_logpdf(y, mean, sigma2 + 1 / prec)  # the full-data predictive (no point left out)

    idata = di.to_inference_data(posterior={"mu": mu}, log_likelihood=ll, labels=np.zeros(len(y), int),
                                 method="exact", obs_id=np.arange(100, 100 + len(y)), temperature=1.0)
    res = di.loo(idata, pointwise=True)
    assert np.all(res.pareto_k.values < 0.5)
    # 8,000 exact draws: each loo_i within ~0.01 of its exact value; the sum within 0.05
    np.testing.assert_allclose(res.loo_i.values, exact, atol=0.02)
    assert res.elpd_loo == pytest.approx(exact.sum(), abs=0.05)
    assert exact.sum() - lppd.sum() < -0.5  # leaving points out costs visibly: the match is not trivial
    assert res.p_loo == pytest.approx(lppd.sum() - exact.sum(), abs=0.1)  # ≈ 1 parameter
    assert list(res.loo_i["obs_id"].values) == list(range(100, 130))


def test_psis_loo_of_a_tempered_posterior_removes_the_point_with_weight_one():
    """T = 2: with the untempered log p stored, PSIS-LOO estimates Σ log ∫ p(y_i|μ) q_-i(μ) dμ with
    q_-i ∝ p_T(μ | y) / p(y_i | μ) (the formula of di.loo's docstring), not the tempered LOO."""
    T = 2.0
    y, mu, ll, (sigma2, prec, mean) = _conjugate(temperature=T)
    prec_q = prec - 1 / sigma2
    mean_q = (mean * prec - y / sigma2) / prec_q
    expected = _normal_logpdf(y, mean_q, sigma2 + 1 / prec_q).sum()
    prec_t = prec - 1 / (T * sigma2)  # the tempered posterior's own leave-one-out
    tempered = _normal_logpdf(y, (mean * prec - y / (T * sigma2)) / prec_t, sigma2 + 1 / prec_t).sum()
    idata = di.to_inference_data(posterior={"mu": mu}, log_likelihood=ll, method="tempered", temperature=T)
    assert idata.log_likelihood.attrs["temperature"] == T
    res = di.loo(idata)
    assert res.elpd_loo == pytest.approx(expected, abs=0.05)
    assert expected < tempered - 0.2  # T > 1: conservative against the tempered LOO


def _semantic(a, **kw):
    """The groups posterior_idata writes, from the test arrays."""
    rng = np.random.default_rng(5)
    draws = rng.integers(0, CLASSES, size=(CHAINS, DRAWS, OBS))
    test_probs = _softmax(rng.normal(size=(CHAINS, DRAWS, 7, CLASSES)))
    args = {"posterior": {"t": a["t"]}, "sample_stats": a["stats"], "log_likelihood": a["loglik"],
            "posterior_predictive": draws, "labels": a["labels"], "predictions": test_probs,
            "prediction_labels": rng.integers(0, CLASSES, 7), "obs_id": np.arange(OBS) * 3 + 1,
            "temperature": 20.0, "method": "curve", "attrs": {"independent_draws": 0}}
    return di.to_inference_data(**{**args, **kw}), draws, test_probs


def test_semantic_groups_share_draws_and_pass_the_schema(arrays, tmp_path):
    idata, draws, test_probs = _semantic(arrays)
    assert set(idata.groups()) == {"posterior", "sample_stats", "log_likelihood", "posterior_predictive",
                                   "observed_data", "predictions", "predictions_constant_data"}
    assert di.check_idata_schema(idata) == (CHAINS, DRAWS)
    np.testing.assert_array_equal(idata.posterior_predictive["y"].values, draws)
    assert idata.posterior_predictive["y"].dims == ("chain", "draw", "obs_id")
    assert list(idata.log_likelihood["obs_id"].values[:3]) == [1, 4, 7]
    assert list(idata.observed_data["obs_id"].values[:3]) == [1, 4, 7]
    assert idata.predictions["y_prob"].dims == ("chain", "draw", "test_id", "class")
    np.testing.assert_allclose(idata.predictions["y_prob"].values, test_probs)
    assert idata.predictions_constant_data["y"].dims == ("test_id",)
    assert idata.log_likelihood.attrs["temperature"] == 20.0
    back = di.load_idata(di.save_idata(idata, tmp_path / "s.nc"))
    assert di.check_idata_schema(back) == (CHAINS, DRAWS)
    assert back.log_likelihood.attrs["temperature"] == 20.0 and int(back.attrs["independent_draws"]) == 0


def test_schema_check_catches_what_arviz_would_misread(arrays):
    import xarray as xr

    idata, _, _ = _semantic(arrays)
    # the old layout: test log-likelihood at 1 × 8 draws next to 2 × 50 draws of t
    old = di.to_inference_data(log_likelihood=arrays["loglik"][0, :8], labels=arrays["labels"], method="old")
    old.extend(di.to_inference_data(posterior={"t": arrays["t"]}, chains=CHAINS, method="old"))
    with pytest.raises(ValueError, match=r"disagree on \(chain, draw\)"):
        di.check_idata_schema(old)
    moved = idata.copy()
    moved.observed_data = moved.observed_data.assign_coords(obs_id=np.arange(OBS))
    with pytest.raises(ValueError, match="different obs_id"):
        di.check_idata_schema(moved)
    probs = idata.copy()
    probs.posterior_predictive["y"] = probs.posterior_predictive["y"].astype(float) / 2
    with pytest.raises(ValueError, match="integers"):
        di.check_idata_schema(probs)
    alone = di.to_inference_data(log_likelihood=arrays["loglik"], method="x")
    with pytest.raises(ValueError, match="observed_data"):
        di.check_idata_schema(alone)
    shifted = idata.copy()
    shifted.predictions_constant_data = xr.Dataset({"y": ("test_id", np.zeros(7, int))},
                                                   coords={"test_id": np.arange(1, 8)})
    with pytest.raises(ValueError, match="test_id"):
        di.check_idata_schema(shifted)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"posterior_predictive": np.full((CHAINS, DRAWS, OBS), 0.5)}, "integer draws"),
    ({"posterior_predictive": np.full((CHAINS, DRAWS, OBS), CLASSES), "probs": None}, None),
    ({"posterior_predictive": np.zeros((CHAINS, DRAWS, OBS - 1), int), "obs_id": None}, "number of observations"),
    ({"prediction_labels": np.zeros(6, int)}, "prediction_labels"),
    ({"prediction_labels": np.full(7, CLASSES)}, r"\[0, 3\)"),
    ({"predictions": np.full((CHAINS, DRAWS, 7, CLASSES), 0.5)}, "sum to 1"),
    ({"predictions": np.full((CHAINS, 3, 7, CLASSES), 1 / 3)}, r"\(chain, draw\)"),
    ({"obs_id": np.zeros(OBS, int)}, "distinct"),
    ({"obs_id": np.arange(OBS + 1)}, "shape"),
    ({"temperature": 0.0}, "temperature"),
])
def test_new_groups_are_validated(arrays, kwargs, match):
    if match is None:  # class indices ≥ 0 without probabilities to bound them: accepted
        _semantic(arrays, **kwargs)
        return
    with pytest.raises(ValueError, match=match):
        _semantic(arrays, **kwargs)


def test_pp_draws_beyond_the_classes_of_probs_are_refused(arrays):
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\)"):
        _semantic(arrays, probs=arrays["probs"], posterior_predictive=np.full((CHAINS, DRAWS, OBS), CLASSES))


def test_independent_draws_attr_sets_reff_to_one():
    rng = np.random.default_rng(6)
    ll = _benign_loglik(rng, chains=1, noise=0.3)
    member = np.tile(np.arange(4), 25)[None]  # an ensemble's cyclic member index: no chain to estimate ESS from
    kw = {"posterior": {"member": member}, "log_likelihood": ll, "method": "ensemble"}
    iid = di.to_inference_data(**kw, attrs={"independent_draws": 1})
    assert di._reff(iid) == 1.0 and di._reff(di.to_inference_data(**kw)) is None
    plain = di.to_inference_data(log_likelihood=ll, method="ensemble")
    assert di.loo(iid).elpd_loo == pytest.approx(di.loo(plain).elpd_loo, rel=1e-12)


def test_compare_loo_uses_the_rows_the_models_share():
    rng = np.random.default_rng(7)
    ll = _benign_loglik(rng, obs=30)
    a = di.to_inference_data(log_likelihood=ll, labels=np.zeros(30, int), obs_id=np.arange(30), method="a")
    b = di.to_inference_data(log_likelihood=ll[..., 10:] - 0.1, labels=np.zeros(20, int),
                             obs_id=np.arange(10, 30), method="b")
    table = di.compare_loo({"a": a, "b": b})
    # on rows 10..29 only: b is a shifted by −0.1 on each of 20 rows
    assert table.loc["b", "elpd_diff"] == pytest.approx(0.1 * 20, rel=1e-3)
    assert table.loc["a", "elpd_loo"] == pytest.approx(di.loo(a, pointwise=True).loo_i.values[10:].sum(), rel=1e-9)
    c = di.to_inference_data(log_likelihood=ll, obs_id=np.arange(100, 130), labels=np.zeros(30, int), method="c")
    with pytest.raises(ValueError, match="share no observation"):
        di.compare_loo({"a": a, "c": c})
