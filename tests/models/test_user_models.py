"""User-written Pyro models over LoRA subspaces: the same posterior as the built-in curve model,
every sample site kept, the cached-logit path honouring (or refusing) the prior, save/load."""
from __future__ import annotations

import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from bayes_lora.inference import load
from bayes_lora.inference.curve import grid_posterior
from bayes_lora.inference.pyro_model import PyroPosterior, cached_t_posterior, mcmc
from bayes_lora.lora import FullSpace, ProjectedSpace
from bayes_lora.lora.curve_train import CurveConfig, train_curve
from bayes_lora.models import CurveModel, CurvePosteriorSpec, LoRALikelihood, TaskLogits

T = 0.5  # a likelihood temperature that keeps the tiny task's posterior on t informative


@pytest.fixture(scope="module")
def curve_setup(tiny_ctx):
    ctx, test = tiny_ctx
    res = train_curve(ctx.fm, FullSpace(ctx.fm.layout), ctx.train, ctx.anchors,
                      CurveConfig(degree=2, epochs=100, max_steps=100, lr=1e-2, js_weight=0.0, seed=0))
    return ctx, test, res.curve


def beta_curve_model(curve, lik, a=2.0, b=2.0):
    """The README's example: a Beta(a, b) prior on the curve position."""

    def model():
        t = pyro.sample("t", dist.Beta(a, b))
        lik(curve(t))

    return model


def _frozen(curve):
    """The curve as a function of t with its control points frozen (no Pyro parameters)."""
    from bayes_lora.lora.curves import bernstein_matrix

    cp = curve.control_points().detach()
    return lambda t: (bernstein_matrix(t.reshape(1), curve.segments, curve.degree) @ cp)[0]


def exact(ctx, curve, a=2.0, b=2.0):
    spec = CurvePosteriorSpec.from_dict({"temperature": T, "t_prior": {"beta": [a, b]}})
    model = CurveModel(spec, curve, FullSpace(ctx.fm.layout), TaskLogits(ctx.fm, ctx.train))
    t, dens = grid_posterior(model, 201)
    mean = torch.trapezoid(t * dens, t).item()
    std = torch.trapezoid((t - mean) ** 2 * dens, t).sqrt().item()
    return mean, std


def test_user_model_equal_to_the_builtin_has_the_grid_posterior(curve_setup):
    """A Beta(2, 2) curve model written by hand: NUTS on it (torch) and the cached-logit path
    (NumPyro) agree with exact quadrature of the built-in model with the same prior."""
    ctx, _, curve = curve_setup
    mean, std = exact(ctx, curve)
    assert 0.02 < std < 0.25
    lik = LoRALikelihood(ctx.fm, ctx.train, temperature=T)
    model = beta_curve_model(_frozen(curve), lik)
    fast = cached_t_posterior(model, lik, knots=33, num_samples=1000, warmup=300, num_chains=2)
    t = fast.samples["t"]
    assert t.shape == (2, 1000) and fast.info.stats["interpolation_check"]["max_abs_error"] < 0.05
    assert abs(t.mean().item() - mean) < 4 * std / 400**0.5 + 0.01, (t.mean().item(), mean, std)
    assert t.std().item() == pytest.approx(std, rel=0.1)
    slow = mcmc(model, lik, num_samples=120, warmup=60, num_chains=2)
    ts = slow.samples["t"]
    assert ts.shape == (2, 120) and slow.sample_stats["diverging"].shape == (2, 120)
    assert abs(ts.mean().item() - mean) < 4 * std / 60**0.5, (ts.mean().item(), mean, std)
    assert ts.std().item() == pytest.approx(std, rel=0.35)


def test_a_prior_the_cached_path_cannot_honour_is_refused(curve_setup):
    ctx, _, curve = curve_setup
    lik = LoRALikelihood(ctx.fm, ctx.train, temperature=T)
    phi = _frozen(curve)

    def kumaraswamy():
        lik(phi(pyro.sample("t", dist.Kumaraswamy(2.0, 3.0))))

    with pytest.raises(ValueError, match="honours Uniform\\(0, 1\\) and Beta\\(a, b\\).*Kumaraswamy"):
        cached_t_posterior(kumaraswamy, lik)

    def two_latents():
        t = pyro.sample("t", dist.Uniform(0.0, 1.0))
        s = pyro.sample("s", dist.HalfNormal(1.0))
        lik(phi(t) * s)

    with pytest.raises(ValueError, match="2 latent sites \\['s', 't'\\]"):
        cached_t_posterior(two_latents, lik)
    # the built-in model with a prior set by hand: honoured by the grid, refused by the cache
    spec = CurvePosteriorSpec.from_dict({"temperature": T})
    cm = CurveModel(spec, curve, FullSpace(ctx.fm.layout), TaskLogits(ctx.fm, ctx.train))
    cm.t = pyro.nn.PyroSample(dist.Beta(2.0, 2.0))
    t, dens = grid_posterior(cm, 201)
    m = torch.trapezoid(t * dens, t).item()
    assert m == pytest.approx(exact(ctx, curve)[0], abs=1e-4)
    from bayes_lora.models.logit_grid import LogitGrid

    assert LogitGrid.build(cm, 9).prior == ("beta", (2.0, 2.0))
    cm.t = pyro.nn.PyroSample(dist.Kumaraswamy(2.0, 3.0))
    with pytest.raises(ValueError, match="Kumaraswamy"):
        LogitGrid.build(cm, 9)


def test_hierarchical_offset_keeps_every_site_predicts_and_round_trips(curve_setup, tmp_path):
    """t, a scale σ_z ~ HalfNormal and an offset z around the curve: every site is kept, θ of a
    draw is the model's own, the saved posterior predicts the same without its model."""
    ctx, test, curve = curve_setup
    lik = LoRALikelihood(ctx.fm, ctx.train, temperature=T)
    phi = _frozen(curve)
    P = torch.linalg.qr(torch.randn(lik.dim, 3, generator=torch.Generator().manual_seed(0)))[0]

    def model():
        t = pyro.sample("t", dist.Uniform(0.0, 1.0))
        sigma = pyro.sample("sigma_z", dist.HalfNormal(0.01))
        z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([3]).to_event(1))
        lik(phi(t) + P @ (sigma * z))

    post = mcmc(model, lik, num_samples=20, warmup=10, num_chains=2)
    assert set(post.samples) == {"t", "sigma_z", "z"}
    assert post.samples["z"].shape == (2, 20, 3) and post.samples["sigma_z"].shape == (2, 20)
    i = 7
    want = phi(post.samples["t"][0, i]) + P @ (post.samples["sigma_z"][0, i] * post.samples["z"][0, i])
    torch.testing.assert_close(post.thetas_at(torch.tensor([i])), want[None])
    pred = post.predict(test, num_samples=4, seed=1)
    assert pred.probs.shape == (4, len(test), 2)
    lat = post.latent_samples(4, seed=1)
    torch.testing.assert_close(post.sample_thetas(4, seed=1)[0],
                               phi(lat["t"][0]) + P @ (lat["sigma_z"][0] * lat["z"][0]))
    thin = post.thinned(8)
    assert thin.num_chains == 2 and thin.samples["z"].shape == (2, 4, 3)
    post.save(tmp_path / "user")
    back = load(tmp_path / "user", ctx.fm)
    assert isinstance(back, PyroPosterior) and back.model is None
    torch.testing.assert_close(back.samples["z"], post.samples["z"])
    torch.testing.assert_close(back.predict(test, num_samples=4, seed=1).probs, pred.probs, rtol=0, atol=1e-6)


def test_gaussian_over_loraxs_cores_with_nuts(tiny_ctx):
    """A Gaussian over the r×r LoRA-XS cores (and head) as a user model, sampled with NUTS."""
    ctx, test = tiny_ctx
    space = ProjectedSpace(ctx.fm.model, ctx.fm.layout)
    lik = LoRALikelihood(ctx.fm, ctx.train, temperature=1.0)
    d = space.dim

    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(d), 0.1).to_event(1))
        lik(space.to_theta(w))

    post = mcmc(model, lik, num_samples=15, warmup=10, num_chains=1, max_tree_depth=4)
    w = post.samples["w"]
    assert w.shape == (1, 15, d) and w.std(1).min() > 0
    torch.testing.assert_close(post.thetas_at(torch.tensor([3])), space.to_theta(w[0, 3])[None])
    assert post.predict(test, num_samples=3).probs.shape == (3, len(test), 2)


def test_likelihood_prefix_cache_gives_the_full_models_numbers_and_no_global_state_moves(tiny_ctx):
    from scenarios import tiny_bert

    from bayes_lora.lora import FunctionalModel
    from bayes_lora.lora.backbone import LoraSettings, add_lora
    from bayes_lora.lora.train import init_theta

    ctx, _ = tiny_ctx
    fm = FunctionalModel(add_lora(tiny_bert(), LoraSettings(r=4, alpha=8, layers=(1,)), "classifier"))
    cached = LoRALikelihood(fm, ctx.train, temperature=2.0, examples=40, seed=3)
    plain = LoRALikelihood(fm, ctx.train, temperature=2.0, examples=40, seed=3, prefix_cache=False)
    assert cached.fm is not fm and plain.fm is fm, "adapters on layer 1 only: layer 0 is cached"
    theta = init_theta(fm.layout, 0) + 0.1 * torch.randn(fm.layout.dim, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cached.logits(theta), plain.logits(theta), atol=1e-5, rtol=1e-5)
    assert cached.num_examples == 40 and cached.example_index.tolist() == plain.example_index.tolist()
    a0, a1 = theta, theta.flip(0)
    # fitting leaves the caller's RNGs and Pyro param store untouched
    pyro.param("mine", torch.tensor(3.0))
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()

    def model():
        lik_t = pyro.sample("t", dist.Uniform(0.0, 1.0))
        cached(a0 * (1 - lik_t) + a1 * lik_t)

    a = mcmc(model, cached, num_samples=5, warmup=5, num_chains=1)
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    assert pyro.param("mine").item() == 3.0 and list(pyro.get_param_store().keys()) == ["mine"]
    b = mcmc(model, cached, num_samples=5, warmup=5, num_chains=1)
    torch.testing.assert_close(a.samples["t"], b.samples["t"], rtol=0, atol=0)
    pyro.clear_param_store()


def test_theta_of_names_a_missing_site_and_a_model_without_likelihood(tiny_ctx):
    ctx, _ = tiny_ctx
    lik = LoRALikelihood(ctx.fm, ctx.train, prefix_cache=False)

    def model():
        t = pyro.sample("t", dist.Uniform(0.0, 1.0))
        lik(ctx.anchors[0] * t)

    with pytest.raises(ValueError, match="no value given for the latent site\\(s\\) \\['t'\\]"):
        lik.theta_of(model, {})
    with pytest.raises(ValueError, match="never called its LoRALikelihood"):
        lik.theta_of(lambda: pyro.sample("t", dist.Uniform(0.0, 1.0)), {"t": torch.tensor(0.5)})
    with pytest.raises(ValueError, match="one LoRA vector θ of length"), pyro.poutine.trace():
        lik(ctx.anchors)
