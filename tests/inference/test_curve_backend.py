"""The curve posterior: samplers against exact grid quadrature, barriers, JS diversity."""
from __future__ import annotations

import pytest
import torch

from bayes_lora.inference import fit, load
from bayes_lora.inference.curve import grid_posterior
from bayes_lora.lora import FullSpace
from bayes_lora.lora.curve_train import (
    CurveConfig,
    curve_objective,
    linear_and_curve_paths,
    train_curve,
)
from bayes_lora.lora.curves import BezierCurve
from bayes_lora.models import CurveModel, CurvePosteriorSpec, TaskLogits


def _rotated(ctx, seed=0):
    """A second optimum related to the first by LoRA's symmetry: B·R, Rᵀ·A (R a rotation)."""
    layout = ctx.fm.layout
    parts = layout.unflatten(ctx.anchors[0].clone())
    r = next(s[0] for n, s in zip(layout.names, layout.shapes) if ".lora_A." in n)
    R = torch.linalg.qr(torch.randn(r, r, generator=torch.Generator().manual_seed(seed)))[0]
    for n in layout.names:
        if ".lora_B." in n:
            parts[n] = parts[n] @ R
        elif ".lora_A." in n:
            parts[n] = R.T @ parts[n]
    return torch.stack([ctx.anchors[0], layout.flatten(parts)])


@pytest.fixture(scope="module")
def curve_ctx(tiny_ctx):
    """A small context whose curve is trained once; likelihood on 32 examples keeps NUTS quick."""
    import dataclasses

    ctx, test = tiny_ctx
    res = train_curve(ctx.fm, FullSpace(ctx.fm.layout), ctx.train, ctx.anchors,
                      CurveConfig(degree=2, epochs=100, max_steps=100, lr=1e-2, js_weight=0.0, seed=0))
    return dataclasses.replace(ctx, curve=res.curve), test  # (a fresh memo)


SPEC = {"temperature": 0.5}


def test_symmetric_optima_have_a_linear_barrier_that_the_curve_removes(tiny_ctx):
    ctx, _ = tiny_ctx
    fm, space = ctx.fm, FullSpace(ctx.fm.layout)
    anchors = _rotated(ctx)
    # same function at both ends: LoRA's factorisation symmetry
    x = next(ctx.train.batches(8))
    torch.testing.assert_close(ctx.train.class_logits(fm.forward_at(anchors[0]), x),
                               ctx.train.class_logits(fm.forward_at(anchors[1]), x), atol=1e-5, rtol=1e-5)
    res = train_curve(fm, space, ctx.train, anchors, CurveConfig(degree=2, epochs=100, max_steps=120, lr=1e-2, js_weight=0.0))
    paths = linear_and_curve_paths(fm, space, ctx.train, res.curve, grid=9)
    assert paths["linear"].barrier > 0.15, paths["linear"].loss
    assert paths["curve"].barrier < 0.25 * paths["linear"].barrier, (paths["curve"].loss, paths["linear"].loss)
    # the curve still passes through its anchors exactly
    torch.testing.assert_close(res.curve(torch.tensor([0.0, 1.0])).detach(), anchors, atol=1e-6, rtol=0)


def test_js_weight_raises_mutual_information_along_the_curve(tiny_ctx):
    from bayes_lora.diagnostics import uncertainty_decomposition
    from bayes_lora.inference.base import predict_probs

    ctx, _test = tiny_ctx
    fm, space = ctx.fm, FullSpace(fm_layout := ctx.fm.layout)
    mis, accs = [], []
    for lam in (0.0, 2.0):
        res = train_curve(fm, space, ctx.train, ctx.anchors,
                          CurveConfig(degree=2, epochs=100, max_steps=80, lr=1e-2, js_weight=lam, js_batch=16, seed=1))
        thetas = space.to_theta(res.curve(torch.linspace(0, 1, 9)).detach())
        probs = predict_probs(fm, ctx.train, thetas)  # the examples the JS term sees
        mis.append(uncertainty_decomposition(probs)[2].mean().item())
        accs.append((probs.mean(0).argmax(-1) == ctx.train.labels).float().mean().item())
    assert fm_layout.dim > 0
    assert mis[1] > 1.4 * mis[0], mis
    assert accs[1] >= accs[0] - 0.05, accs


def test_js_grad_first_has_the_same_expected_gradient_as_backpropagating_every_point(tiny_ctx):
    """js_grad="first" backpropagates JS through the loss point only, weighted by M. JS is
    symmetric, so averaging it over the two orders of (t_1, t_2) gives the full gradient exactly."""
    ctx, _ = tiny_ctx
    fm, space = ctx.fm, FullSpace(ctx.fm.layout)
    curve = BezierCurve(ctx.anchors, degree=3, init_noise=0.05, seed=0)
    batch = next(ctx.train.batches(8))

    def js_grad(ts, how):
        cfg = CurveConfig(js_weight=1.0, js_grad=how, js_batch=8, perturbation="none")
        loss, js, objective = curve_objective(fm, space, ctx.train, curve, batch, torch.tensor(ts), cfg)
        (g,) = torch.autograd.grad(loss - objective, [curve.bends])  # the JS part: λ·JS or λ·M·JS
        return js.detach(), g

    js_all, g_all = js_grad((0.2, 0.7), "all")
    js_1, g_12 = js_grad((0.2, 0.7), "first")
    js_2, g_21 = js_grad((0.7, 0.2), "first")
    assert js_all > 1e-4  # the two points do disagree
    torch.testing.assert_close(js_1, js_all)
    torch.testing.assert_close(js_2, js_all, atol=1e-6, rtol=1e-4)
    torch.testing.assert_close((g_12 + g_21) / 2, g_all, atol=1e-6, rtol=1e-3)
    # but one order alone is not the full gradient (the check above is not vacuous)
    assert (g_12 - g_all).norm() > 0.05 * g_all.norm()


def test_per_example_t_equals_per_step_t_when_every_example_has_the_same_t(tiny_ctx):
    """t_sampling="example": [M, B] positions through per-example adapters. With every example at
    the same t it is the per-step objective (loss, JS and their gradients); with different t each
    example's loss is its own point's (checked against one forward pass per example)."""
    import torch.nn.functional as F

    ctx, _ = tiny_ctx
    fm, space = ctx.fm, FullSpace(ctx.fm.layout)
    curve = BezierCurve(ctx.anchors, degree=3, init_noise=0.05, seed=0)
    batch = next(ctx.train.batches(6))
    cfg = CurveConfig(js_weight=1.0, js_batch=4, perturbation="none")
    step = curve_objective(fm, space, ctx.train, curve, batch, torch.tensor([0.3, 0.8]), cfg)
    per_ex = curve_objective(fm, space, ctx.train, curve, batch, torch.tensor([[0.3] * 6, [0.8] * 6]), cfg)
    for a, b in zip(step, per_ex):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    g_step = torch.autograd.grad(step[2], [curve.bends])[0]
    g_ex = torch.autograd.grad(per_ex[2], [curve.bends])[0]
    torch.testing.assert_close(g_ex, g_step, atol=1e-6, rtol=1e-4)

    ts = torch.linspace(0.05, 0.95, 6)
    loss, _, _ = curve_objective(fm, space, ctx.train, curve, batch, ts[None], cfg)
    with torch.no_grad():
        thetas = curve(ts)
        one = [F.cross_entropy(ctx.train.class_logits(fm.forward_at(thetas[i]), ctx.train.subset(batch["index"][i:i + 1])
                                                      .full_batch()), batch["labels"][i:i + 1]) for i in range(6)]
    torch.testing.assert_close(loss.detach(), torch.stack(one).mean(), atol=1e-5, rtol=1e-5)


def test_per_example_t_needs_a_foldable_model():
    """A θ outside nn.Linear layers cannot get per-example adapters: a clear error, and "step" works."""
    from torch import nn

    from bayes_lora.data import EncodedClassification
    from bayes_lora.lora import FunctionalModel

    class Scaled(nn.Module):  # logits = w · x: θ is a bare parameter, not a linear layer's weight
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2))

        def forward(self, input_ids, attention_mask=None):
            return input_ids[:, :2].float() * self.w

    fm = FunctionalModel(Scaled())
    task = EncodedClassification(torch.randint(0, 3, (8, 2)), torch.ones(8, 2, dtype=torch.long),
                                 torch.randint(0, 2, (8,)), name="toy", num_classes=2)
    anchors = torch.stack([torch.ones(2), -torch.ones(2)])
    with pytest.raises(ValueError, match="t_sampling='step'"):
        train_curve(fm, FullSpace(fm.layout), task, anchors, CurveConfig(max_steps=2, js_weight=0.0, t_sampling="example"))
    res = train_curve(fm, FullSpace(fm.layout), task, anchors,
                      CurveConfig(max_steps=2, js_weight=0.0, t_sampling="step"))
    assert len(res.losses) == 2


def test_grid_posterior_is_normalised_and_matches_direct_density(curve_ctx):
    ctx, _ = curve_ctx
    spec = CurvePosteriorSpec.from_dict(SPEC)
    model = CurveModel(spec, ctx.curve, FullSpace(ctx.fm.layout), TaskLogits(ctx.fm, ctx.train))
    t, dens = grid_posterior(model, 51)
    assert torch.trapezoid(dens, t).item() == pytest.approx(1.0, abs=1e-6)
    ll = model.log_likelihood_grid(t[[10, 40]])
    assert torch.log(dens[10] / dens[40]).item() == pytest.approx((ll[0] - ll[1]).item(), abs=1e-3)


@pytest.mark.parametrize("inference,kw", [
    ("nuts", {"num_samples": 120, "warmup": 60, "num_chains": 2}),
    ("svi", {"svi_steps": 250, "num_samples": 400, "guide": "normal"}),
])
def test_samplers_match_grid_posterior_on_t(curve_ctx, inference, kw):
    ctx, _ = curve_ctx
    grid = fit("curve", ctx, posterior=SPEC, inference="grid", num_samples=2000, grid_points=101)
    mean, std = grid.info.stats["mean"], grid.info.stats["std"]
    assert 0.02 < std < 0.25, "the test needs an informative, non-degenerate posterior"
    post = fit("curve", ctx, posterior=SPEC, inference=inference, **kw)
    t = post.t.reshape(-1)
    # NUTS: mean within ~4 Monte-Carlo standard errors (ESS ≥ ~60); SVI (a Gaussian in logit
    # space): a looser match of a skewed posterior.
    tol = 4 * std / 60**0.5 if inference == "nuts" else 0.35 * std + 0.02
    assert abs(t.mean().item() - mean) < tol, (t.mean().item(), mean, std)
    assert t.std().item() == pytest.approx(std, rel=0.35)
    if inference == "nuts":
        assert post.t.shape == (2, 120)
        stats = post.info.stats
        assert len(stats["step_size"]) == 2 and all(s > 0 for s in stats["step_size"])
        assert stats["num_divergences"] == sum(stats["divergences"])


def test_predictive_draws_are_one_per_stratum_of_t(curve_ctx):
    """The n draws a predictive uses are stratified by t: one from each of n equal-mass strata
    of the sorted draws, so their mean of t is far closer to the posterior's than n thinned
    draws of a chain (error ~σ/√n) would be."""
    from bayes_lora.inference.curve import CurvePosterior

    ctx, _ = curve_ctx
    model = CurveModel(CurvePosteriorSpec.from_dict(SPEC), ctx.curve, FullSpace(ctx.fm.layout), None)
    t = torch.distributions.Beta(2.0, 5.0).sample((2, 2000))  # two "chains", skewed
    post = CurvePosterior(ctx.fm, model, t)
    flat = t.reshape(-1)
    rank = torch.empty(flat.numel(), dtype=torch.long)
    rank[torch.argsort(flat, stable=True)] = torch.arange(flat.numel())
    errors = []
    for seed in range(10):
        sel = post.latent_samples(8, seed=seed)["t"]
        idx = [int((flat == v).nonzero()[0]) for v in sel]
        assert sorted(int(rank[i]) // 500 for i in idx) == list(range(8))  # one per stratum
        errors.append(abs(sel.mean() - flat.mean()).item())
    # 8 independent draws: error ~ N(0, σ²/8), below 0.2σ for all ten seeds with probability < 1e-3
    assert max(errors) < 0.2 * flat.std().item(), errors
    assert len({tuple(post.latent_samples(8, seed=s)["t"].tolist()) for s in range(4)}) == 4
    torch.testing.assert_close(post.latent_samples(8, seed=2)["t"], post.latent_samples(8, seed=2)["t"])
    assert post.latent_samples(5000, seed=0)["t"].numel() == 5000  # more than the draws: cycles


@pytest.mark.slow
def test_slice_sampler_matches_grid(curve_ctx):
    ctx, _ = curve_ctx
    grid = fit("curve", ctx, posterior=SPEC, inference="grid", num_samples=2000, grid_points=101)
    post = fit("curve", ctx, posterior=SPEC, inference="slice", num_samples=80, warmup=20, num_chains=2)
    t = post.t.reshape(-1)
    assert abs(t.mean().item() - grid.info.stats["mean"]) < 4 * grid.info.stats["std"] / 40**0.5


def test_offset_posterior_and_save_load_roundtrip(curve_ctx, tmp_path):
    ctx, test = curve_ctx
    spec = {**SPEC, "offset": {"dim": 2, "scale": 0.01}}
    post = fit("curve", ctx, posterior=spec, inference="svi", svi_steps=60, num_samples=50)
    assert post.z.shape == (1, 50, 2)
    pred = post.predict(test, num_samples=6, seed=3)
    assert pred.probs.shape == (6, len(test), 2)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(6, len(test)))
    post.save(tmp_path / "curve")
    back = load(tmp_path / "curve", ctx.fm, ctx)
    torch.testing.assert_close(back.predict(test, num_samples=6, seed=3).probs, pred.probs, rtol=0, atol=0)
    with pytest.raises(ValueError, match="grid quadrature is exact for t alone"):
        fit("curve", ctx, posterior=spec, inference="grid")


def test_cached_logit_nuts_matches_grid_and_converges(curve_ctx):
    """NUTS in NumPyro on logits cached at 33 knots: the same posterior as exact quadrature on
    the model itself, R-hat < 1.01 and ESS ≥ 400 — for 33 forward passes in all."""
    import arviz as az

    ctx, _ = curve_ctx
    grid = fit("curve", ctx, posterior=SPEC, inference="grid", num_samples=2000, grid_points=201)
    mean, std = grid.info.stats["mean"], grid.info.stats["std"]
    post = fit("curve", ctx, posterior=SPEC, inference="nuts", logit_cache=33, num_samples=1000, warmup=300,
               num_chains=2)
    stats = post.info.stats
    assert stats["kernel"] == "nuts-numpyro-cached-logits" and post.t.shape == (2, 1000)
    assert stats["interpolation_check"]["max_abs_error"] < 0.05, stats["interpolation_check"]
    t = post.t.numpy()
    ess = float(az.ess(t))
    assert float(az.rhat(t)) < 1.01 and ess > 400
    assert abs(t.mean() - mean) < 4 * std / ess**0.5 + 0.01, (t.mean(), mean, std)
    assert t.std() == pytest.approx(std, rel=0.1)
    assert stats["num_divergences"] == sum(stats["divergences"]) == 0
    svi = fit("curve", ctx, posterior=SPEC, inference="svi", logit_cache=33, svi_steps=500, num_samples=500)
    assert abs(svi.t.mean().item() - mean) < 0.35 * std + 0.02


def test_cached_logits_refuse_an_offset(curve_ctx):
    ctx, _ = curve_ctx
    with pytest.raises(ValueError, match="logit_cache covers the curve position t alone"):
        fit("curve", ctx, posterior={**SPEC, "offset": {"dim": 2}}, inference="nuts", logit_cache=9)


def _global_state():
    """The caller's global random state and Pyro param store, in comparable form."""
    import random

    import numpy as np
    import pyro

    np_state = np.random.get_state()
    store = pyro.get_param_store()
    return {"torch": torch.get_rng_state(), "numpy": (np_state[0], np_state[1].copy(), *np_state[2:]),
            "random": random.getstate(), "params": {k: v.detach().clone() for k, v in store.items()},
            "constraints": dict(store._constraints)}


def _assert_same_state(before, after):
    assert torch.equal(before["torch"], after["torch"])
    assert before["numpy"][0] == after["numpy"][0] and (before["numpy"][1] == after["numpy"][1]).all()
    assert before["numpy"][2:] == after["numpy"][2:]
    assert before["random"] == after["random"]
    assert before["params"].keys() == after["params"].keys()
    for k in before["params"]:
        assert torch.equal(before["params"][k], after["params"][k]), k
    assert before["constraints"] == after["constraints"]


@pytest.mark.parametrize("inference,kw", [
    ("nuts", {"num_samples": 8, "warmup": 4, "num_chains": 2}),
    ("hmc", {"num_samples": 6, "warmup": 3, "num_chains": 1}),
    ("svi", {"svi_steps": 10, "num_samples": 8, "posterior": {**SPEC, "offset": {"dim": 2, "scale": 0.01}}}),
    ("slice", {"num_samples": 4, "warmup": 2, "num_chains": 2}),
    ("grid", {"num_samples": 16, "grid_points": 21}),
])
def test_curve_fit_leaves_global_rng_and_param_store_alone_and_is_seeded(curve_ctx, inference, kw):
    """A fit neither reseeds torch / numpy / random nor clears Pyro's param store (a notebook's
    own state survives), and the same seed gives bit-identical draws whatever the caller's RNG."""
    import dataclasses
    import random

    import numpy as np
    import pyro
    from pyro.distributions import constraints

    ctx, _ = curve_ctx
    kw = {"posterior": SPEC, **kw}
    pyro.get_param_store().clear()
    pyro.param("users_own", torch.tensor([0.5, 2.0]), constraint=constraints.positive)
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    before = _global_state()
    first = fit("curve", ctx, inference=inference, **kw)
    _assert_same_state(before, _global_state())
    torch.testing.assert_close(pyro.param("users_own"), torch.tensor([0.5, 2.0]))
    # a different caller state: the same draws (they come from the fit's seed alone)
    torch.manual_seed(99)
    np.random.seed(98)
    random.seed(97)
    torch.rand(5)
    second = fit("curve", ctx, inference=inference, **kw)
    assert torch.equal(first.t, second.t) and torch.equal(first.z, second.z)
    other = fit("curve", dataclasses.replace(ctx, seed=ctx.seed + 1), inference=inference, **kw)
    assert not torch.equal(first.t, other.t)  # the draws do depend on the seed


def test_dev_temperature_is_the_t_posterior_of_lowest_dev_nll(curve_ctx):
    """``temperature = "dev"``: for each candidate T, the dev NLL of the model average under
    p(t | D) ∝ p(t) p(D | t)^{1/T} — recomputed here with exact forward passes at 201 values of t
    (the fit interpolates logits cached at knots) — and the fit runs at the T of lowest dev NLL."""
    import dataclasses
    import math

    from scenarios import tiny_task

    from bayes_lora.inference.base import Needs, predictive_nll
    from bayes_lora.inference.curve import DEV_TEMPERATURE_GRID
    from bayes_lora.inference.registry import get_backend

    ctx, _ = curve_ctx
    dev = tiny_task(24, seed=11)
    dctx = dataclasses.replace(ctx, dev=dev)
    spec = {"temperature": "dev", "likelihood_examples": 32}
    post = fit("curve", dctx, posterior=spec, inference="svi", logit_cache=17, svi_steps=50, num_samples=50)
    ch = post.info.stats["dev_choice"]
    assert ch["grid"] == list(DEV_TEMPERATURE_GRID) and ch["examples"] == 24
    assert post.temperature == ch["chosen"] == DEV_TEMPERATURE_GRID[ch["index"]]
    assert ch["dev_nll"][ch["index"]] == min(ch["dev_nll"])
    assert post.options["posterior"]["temperature"] == "dev"  # what was declared; the model holds the number
    ts = torch.linspace(0, 1, 201)
    dev_lik = TaskLogits(ctx.fm, dev)
    fixed = CurveModel(CurvePosteriorSpec.from_dict({**spec, "temperature": 1.0}), ctx.curve, FullSpace(ctx.fm.layout),
                       TaskLogits(ctx.fm, ctx.train, examples=32, seed=ctx.seed))
    with torch.no_grad():
        probs = torch.stack([dev_lik.logits(fixed.theta(t)).softmax(-1) for t in ts])  # [201, n, C]
        ll = fixed.log_likelihood_grid(ts)
    for temp, want in zip(DEV_TEMPERATURE_GRID, ch["dev_nll"]):
        w = torch.softmax(ll / temp + fixed.t_log_prior(ts), 0) * torch.cat([torch.ones(1), 2 * torch.ones(199),
                                                                                torch.ones(1)])
        w = w / w.sum()
        assert predictive_nll(torch.einsum("g,gnc->nc", w, probs), dev.labels) == pytest.approx(want, abs=2e-3)
    assert math.isfinite(post.info.stats["interpolation_check"]["max_abs_error"])
    assert get_backend("curve").needs({"posterior": spec}) == {Needs.CURVE, Needs.DEV}
    with pytest.raises(ValueError, match="temperature = 'dev' chooses its value on held-out data"):
        fit("curve", ctx, posterior=spec, inference="grid")
    with pytest.raises(ValueError, match="temperature must be a number > 0 or 'dev'"):
        CurvePosteriorSpec.from_dict({"temperature": "validation"})
