"""One contract every registered backend keeps (issue 4): shapes, normalisation, seeding and a
save/load round trip with identical predictions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bayes_lora.inference.registry import available_methods, fit, load

#: small options so every backend fits on the tiny model in seconds
OPTIONS = {
    "map": {},
    "ensemble": {},
    "mc_dropout": {"p": 0.2},
    "laplace": {"space": "projected", "subset": 32},
    "swag": {"snapshots": 3, "collect_every": 2},
    "vi": {"steps": 10},
    "curve": {"inference": "svi", "svi_steps": 10, "num_samples": 20},
}


def test_every_builtin_backend_is_covered():
    # "pyro" is a model written in Python (tests/models/test_user_models.py), not fitted from options;
    # "zero_shot" needs a model without a trained head (tests/inference/test_zero_shot.py)
    assert set(available_methods()) - {"pyro", "zero_shot"} == set(OPTIONS)


@pytest.fixture(scope="module")
def fitted(tiny_ctx):
    import dataclasses

    from bayes_lora.lora import FullSpace
    from bayes_lora.lora.curve_train import CurveConfig, train_curve

    ctx, _ = tiny_ctx
    curve = train_curve(ctx.fm, FullSpace(ctx.fm.layout), ctx.train, ctx.anchors,
                        CurveConfig(max_steps=20, lr=1e-2, js_weight=0.0)).curve
    ctx = dataclasses.replace(ctx, curve=curve)
    return {m: fit(m, ctx, **OPTIONS[m]) for m in OPTIONS}


def test_the_curve_posterior_never_trains_a_curve(tiny_ctx):
    ctx, _ = tiny_ctx
    with pytest.raises(ValueError, match="samples along a trained curve: pass curve="):
        fit("curve", ctx, inference="grid")


@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_backend_contract(method, fitted, tiny_ctx, tmp_path):
    ctx, test = tiny_ctx
    post = fitted[method]
    assert post.method == method and post.info.seconds >= 0
    pred = post.predict(test, num_samples=4, seed=3)
    S = pred.probs.shape[0]
    assert pred.probs.shape == (S, len(test), test.num_classes) and S >= 1
    assert torch.allclose(pred.probs.sum(-1), torch.ones(S, len(test)), atol=1e-5)
    assert (pred.probs >= 0).all()
    ll = pred.log_likelihood()
    assert ll.shape == (S, len(test)) and torch.isfinite(ll).all() and (ll <= 0).all()
    # same seed → same samples
    again = post.predict(test, num_samples=4, seed=3)
    torch.testing.assert_close(again.probs, pred.probs, atol=1e-6, rtol=0)
    # save / load → identical predictions
    post.save(tmp_path / method)
    loaded = load(tmp_path / method, ctx.fm, ctx)
    assert type(loaded) is type(post) and loaded.options == post.options
    torch.testing.assert_close(loaded.predict(test, num_samples=4, seed=3).probs, pred.probs, atol=1e-6, rtol=0)


# (laplace's default GLM probit predictive is deterministic: one closed-form sample)
@pytest.mark.parametrize("method", ["swag", "vi", "curve", "mc_dropout"])
def test_stochastic_methods_vary_with_the_seed(method, fitted, tiny_ctx):
    _, test = tiny_ctx
    a = fitted[method].predict(test, num_samples=4, seed=1).probs
    b = fitted[method].predict(test, num_samples=4, seed=2).probs
    assert not torch.allclose(a, b), f"{method}: different seeds gave the same samples"


# --- draws for InferenceData: the thinned() protocol and posterior_idata ----------------------
def _thetas_of_latents(post, lat: dict) -> torch.Tensor:
    """θ [n, D] rebuilt from ``latent_samples`` alone (what the posterior group claims)."""
    if post.method == "ensemble":
        return post.members[lat["member"]]
    if post.method == "curve":
        z = lat.get("z")
        return torch.stack([post.model.theta(t, None if z is None else z[i]) for i, t in enumerate(lat["t"])])
    w = torch.cat([v.reshape(v.shape[0], -1) for v in lat.values()], -1)  # core (+ head), w, lora_A
    return post.space.to_theta(w)


def _sampled_laplace(post):
    from bayes_lora.inference.laplace import LaplacePosterior

    return LaplacePosterior(post.fm, post.space, post.mean, post.factor, predictive="sampled")


@pytest.mark.parametrize("method", [*sorted(OPTIONS), "laplace_sampled"])
@torch.no_grad()
def test_predict_and_latent_samples_give_the_same_draws(method, fitted, tiny_ctx):
    """A sampled approximation is its own thinning (one chain); draw s of predict(n, seed) is the
    model at draw s of latent_samples(n, seed) — or the posterior says it is not."""
    from bayes_lora.inference.base import predict_probs

    _, test = tiny_ctx
    post = _sampled_laplace(fitted["laplace"]) if method == "laplace_sampled" else fitted[method]
    if method != "curve":
        assert post.thinned(8) is post and post.num_chains == 1 and dict(post.sample_stats) == {}
    probs = post.predict(test, num_samples=4, seed=3).probs
    lat = post.latent_samples(4, seed=3)
    if method == "laplace":  # the GLM predictive linearises around the mean: no latent draws behind it
        assert not post.predicts_at_latents
        torch.testing.assert_close(probs, probs[:1].expand_as(probs), rtol=0, atol=0)  # probit: one closed form
        return
    assert post.predicts_at_latents
    if method in ("map", "mc_dropout"):  # no latents: MAP's one atom, dropout masks on activations
        assert lat == {}
        return
    assert all(v.shape[0] == 4 for v in lat.values())
    for k, v in post.latent_samples(4, seed=3).items():  # same (n, seed) → same latents
        torch.testing.assert_close(v, lat[k], rtol=0, atol=0)
    expected = predict_probs(post.fm, test, _thetas_of_latents(post, lat))
    torch.testing.assert_close(probs, expected, atol=1e-6, rtol=0)


def test_curve_thinned_keeps_chains_and_predicts_at_its_draws(fitted, tiny_ctx):
    from bayes_lora.inference.base import predict_probs
    from bayes_lora.inference.curve import CurvePosterior
    from bayes_lora.types import FitInfo

    _, test = tiny_ctx
    svi = fitted["curve"]
    t = torch.linspace(0.05, 0.95, 30).reshape(3, 10)  # 3 chains × 10 draws
    div = torch.zeros(3, 10, dtype=torch.bool)
    div[1, 9] = True
    energy = torch.arange(30.0).reshape(3, 10)
    post = CurvePosterior(svi.fm, svi.model, t, info=FitInfo(1.0, (), {
        "diverging": div.tolist(), "energy": energy.tolist(), "step_size": [0.1, 0.2, 0.3],
        "divergences": [0, 1, 0], "kernel": "nuts"}))
    assert post.num_chains == 3 and set(post.sample_stats) == {"diverging", "energy"}

    thin = post.thinned(7)  # k = 7 // 3 = 2 per chain: draws 4 and 9 of each chain (the last kept)
    assert thin.num_chains == 3 and thin.t.shape == (3, 2) and thin.default_num_samples == 6
    torch.testing.assert_close(thin.t, t[:, [4, 9]])
    assert thin.info.stats["diverging"] == [[False, False], [False, True], [False, False]]
    assert thin.info.stats["energy"] == [[4.0, 9.0], [14.0, 19.0], [24.0, 29.0]]
    assert thin.info.stats["step_size"] == [0.1, 0.2, 0.3] and thin.info.stats["thinned_from"] == [3, 10]
    flat = t[:, [4, 9]].reshape(-1)  # chain-major
    for n in (None, 6):
        for seed in (0, 5):
            torch.testing.assert_close(thin.latent_samples(6, seed=seed)["t"], flat, rtol=0, atol=0)
            got = thin.predict(test, num_samples=n, seed=seed).probs
            with torch.no_grad():
                want = predict_probs(svi.fm, test, torch.stack([svi.model.theta(x) for x in flat]))
            torch.testing.assert_close(got, want, atol=1e-6, rtol=0)

    two = post.thinned(2)  # fewer draws than chains: one draw of each of the first two chains
    assert two.t.shape == (2, 1) and two.info.stats["step_size"] == [0.1, 0.2]
    torch.testing.assert_close(two.t, t[:2, [9]])
    every = post.thinned(10_000)
    assert every.t.shape == (3, 10) and every.default_num_samples == 30
    torch.testing.assert_close(every.t, t)
    one_chain = svi.thinned(8)  # SVI: one chain of 20 draws → 8 of them, evenly spaced
    torch.testing.assert_close(one_chain.t, svi.t[:, [1, 4, 6, 9, 11, 14, 16, 19]])
    with pytest.raises(ValueError, match="max_draws"):
        post.thinned(0)


def test_curve_likelihood_rows_and_temperature_are_those_of_its_likelihood(fitted, tiny_ctx):
    from types import SimpleNamespace

    from bayes_lora.inference.curve import CurvePosterior
    from bayes_lora.models import CurvePosteriorSpec, TaskLogits

    ctx, _ = tiny_ctx
    svi = fitted["curve"]
    assert svi.likelihood_rows(ctx.train, seed=7) is None and svi.temperature == svi.model.spec.temperature
    spec = CurvePosteriorSpec.from_dict({**svi.model.spec.to_dict(), "likelihood_examples": 20, "temperature": 4.0})
    post = CurvePosterior(svi.fm, SimpleNamespace(spec=spec), svi.t)
    rows = post.likelihood_rows(ctx.train, seed=7)
    lik = TaskLogits(ctx.fm, ctx.train, examples=20, seed=7)  # what fit_curve conditions on with ctx.seed = 7
    assert rows.shape == (20,) and post.temperature == 4.0
    sub = ctx.train.subset(rows)
    torch.testing.assert_close(sub.labels, lik.labels)
    torch.testing.assert_close(sub.example_lengths(), lik.task.example_lengths())


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")  # 4-6 draws: k is high
@pytest.mark.parametrize("method", sorted(OPTIONS))
def test_posterior_idata_groups_mean_what_arviz_means(method, fitted, tiny_ctx):
    from bayes_lora.diagnostics.idata import check_idata_schema, loo
    from bayes_lora.experiment.evaluate import draw_labels, evaluate, loo_rows, posterior_idata

    ctx, test = tiny_ctx
    post = fitted[method]
    ev = evaluate(post, test, num_samples=4, seed=3)
    idata = posterior_idata(post, ev, train=ctx.train, seed=0, max_draws=6, min_draws=4, loo_examples=16)
    chains, draws = check_idata_schema(idata)
    S = ev.prediction.probs.shape[0]
    assert (chains, draws) == ((1, 6) if method == "curve" else (1, S))  # curve SVI: 20 draws thinned to 6
    rows = loo_rows(None, len(ctx.train), 16, 0)
    assert rows.shape == (16,) and list(idata.log_likelihood["obs_id"].values) == rows.tolist()
    torch.testing.assert_close(torch.as_tensor(idata.observed_data["y"].values), ctx.train.labels[rows])
    # the log-likelihood is that of the training examples at the idata's own draws
    p = post.thinned(6)
    fit = p.predict(ctx.train.subset(rows), num_samples=None if p is not post else S, seed=3)
    ll = fit.log_likelihood().reshape(chains, draws, -1)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, ll.double().numpy(), atol=1e-6)
    assert idata.log_likelihood.attrs["temperature"] == 1.0
    # posterior predictive: one draw of y per draw and example, from the same probabilities (seeded)
    y = idata.posterior_predictive["y"].values
    assert y.dtype.kind == "i" and set(np.unique(y)) <= {0, 1}
    np.testing.assert_array_equal(y.reshape(chains * draws, -1), draw_labels(fit.probs, 0).numpy())
    # predictions: the test set at the same draws (the evaluation's own for i.i.d. draws)
    pred = idata.predictions["y_prob"].values.reshape(chains * draws, len(test), -1)
    if p is post:
        np.testing.assert_allclose(pred, ev.prediction.probs.numpy(), atol=1e-7)
        assert int(idata.attrs["independent_draws"]) == 1
    else:
        np.testing.assert_allclose(pred, p.predict(test, seed=11).probs.numpy(), atol=1e-6)
        np.testing.assert_allclose(idata.posterior["t"].values.reshape(-1), p.t.reshape(-1).numpy())
    np.testing.assert_array_equal(idata.predictions_constant_data["y"].values, test.labels.numpy())
    assert ("posterior" in idata.groups()) == (method in ("ensemble", "swag", "vi", "curve"))
    assert np.isfinite(loo(idata).elpd_loo)


@pytest.mark.parametrize("predictions", [True, False])
def test_too_few_evaluation_draws_are_drawn_again_for_psis(predictions, fitted, tiny_ctx):
    """An approximation evaluated with 4 draws gets an InferenceData of min_draws = 24 (PSIS fits
    its tail to ⌈S/5⌉ ≥ 5 ratios): finite Pareto k; the test predictions at those 24 draws, or
    none when asked not to predict the test set again; finite posteriors keep their atoms."""
    from bayes_lora.diagnostics.idata import check_idata_schema, loo
    from bayes_lora.experiment.evaluate import evaluate, posterior_idata

    ctx, test = tiny_ctx
    post = fitted["swag"]
    ev = evaluate(post, test, num_samples=4, seed=3)
    idata = posterior_idata(post, ev, train=ctx.train, seed=0, min_draws=24, loo_examples=16,
                            predictions=predictions)
    assert check_idata_schema(idata) == (1, 24)
    assert np.isfinite(loo(idata, pointwise=True).pareto_k.values).all()
    if predictions:
        np.testing.assert_allclose(idata.predictions["y_prob"].values[0],
                                   post.predict(test, num_samples=24, seed=3).probs.numpy(), atol=1e-6)
    else:
        assert "predictions" not in idata.groups()
    ens = fitted["ensemble"]
    e2 = evaluate(ens, test, seed=3)
    assert check_idata_schema(posterior_idata(ens, e2, train=ctx.train, min_draws=24, loo_examples=16)) == (1, 2)


@pytest.mark.parametrize("method,options,needs", [
    ("laplace", {}, {"projected_map"}),
    ("laplace", {"space": "full"}, {"anchors"}),
    ("swag", {"space": "adapter"}, {"anchors"}),
    ("vi", {}, {"projected_map"}),
    ("vi", {"kind": "blob"}, {"anchors"}),
    ("curve", {}, {"curve"}),
    ("map", {}, {"anchors"}),
    ("map", {"train": True}, set()),
    ("ensemble", {}, {"anchors"}),
])
def test_backends_declare_what_they_fit_from(method, options, needs):
    from bayes_lora.inference.registry import get_backend

    assert {n.value for n in get_backend(method).needs(options)} == needs


@pytest.mark.parametrize("method", ["laplace", "swag", "vi"])
def test_projected_methods_refuse_without_a_projected_map(tiny_ctx, method):
    """Nothing is trained that the caller did not ask for: no LoRA-XS MAP, no projected fit."""
    import dataclasses

    ctx, _ = tiny_ctx
    bare = dataclasses.replace(ctx, projected=None)
    with pytest.raises(ValueError, match=r"fit_projected_map\(\)"):
        fit(method, bare, **OPTIONS[method])


@pytest.mark.parametrize("method,options,refused", [
    ("laplace", {}, True), ("laplace", {"space": "adapter"}, True), ("laplace", {"space": "full"}, False),
    ("swag", {"space": "adapter"}, True), ("swag", {"space": "full"}, False),
    ("vi", {}, True), ("vi", {"kind": "blob"}, False), ("map", {}, False), ("curve", {}, False),
])
def test_backends_check_ranks_against_the_model_before_fitting(method, options, refused):
    """A core space (r×r between rank-r SVD factors) needs r ≤ each adapted weight's smaller side;
    ``Backend.check`` says so from shapes alone, naming the module and the largest rank allowed."""
    from scenarios import tiny_peft_model

    from bayes_lora.inference.registry import get_backend

    wide = tiny_peft_model(r=40)  # the tiny BERT is 32 wide
    check = lambda: get_backend(method).check(options, wide)
    if refused:
        with pytest.raises(ValueError, match=r"LoRA rank 40 exceeds .*query's weight \(32, 32\).*needs r ≤ 32"):
            check()
    else:
        check()
    get_backend(method).check(options, tiny_peft_model(r=32))  # at the limit: allowed
