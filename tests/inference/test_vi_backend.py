"""VI: conjugate Gaussian models where the variational optimum is known, then the projected and
BLoB-like fits on the tiny peft model (ELBO, seeding, save/load, which entries vary)."""
from __future__ import annotations

import math

import pyro.distributions as dist
import pytest
import torch
from scenarios import tiny_context

from bayes_lora.inference import fit, load
from bayes_lora.inference.vi import GaussianQ, VIPosterior, latent_model, run_svi
from bayes_lora.lora import MaskedSpace


@pytest.mark.parametrize("temperature", [1.0, 0.25])
def test_mean_field_is_exact_for_a_gaussian_mean(temperature):
    """y_i ~ N(w, σ² I), w ~ N(0, s0² I): the posterior factorises, so mean-field VI is exact;
    with the log-likelihood divided by T, the data's precision is n / (T σ²)."""
    g = torch.Generator().manual_seed(0)
    n, s0, sig = 20, 2.0, 1.5
    y = torch.randn(n, 3, generator=g) * sig + torch.tensor([1.0, -0.5, 2.0])
    model = latent_model(3, s0, n, lambda w, idx: (dist.Normal(w, sig).to_event(1), y[idx]),
                         temperature=temperature)
    precision = 1 / s0**2 + n / (temperature * sig**2)
    mu, sd = y.sum(0) / (temperature * sig**2) / precision, precision**-0.5
    q, losses = run_svi(model, torch.zeros(3), n, steps=500, batch_size=n, lr=0.1,
                        lr_decay=0.01 ** (1 / 500), init_scale=0.5, seed=0)
    assert len(losses) == 500
    assert ((q.loc - mu).abs() / sd).max() < 0.25
    assert ((q.scale / sd) - 1).abs().max() < 0.1
    assert q.cov_factor is None


def test_low_rank_captures_a_correlated_gaussian_posterior():
    """Bayesian linear regression with correlated inputs: the posterior correlation is ≈ −0.78;
    the diagonal + rank-1 guide must find it (mean field would stop at KL = −½ log(1 − ρ²) ≈ 0.47)."""
    g = torch.Generator().manual_seed(0)
    n, s0, sig = 20, 2.0, 1.0
    x = torch.randn(n, 2, generator=g) @ torch.tensor([[1.0, 0.8], [0.0, 0.5]])
    y = x @ torch.tensor([1.0, -1.0]) + sig * torch.randn(n, generator=g)
    model = latent_model(2, s0, n, lambda w, idx: (dist.Normal(x[idx] @ w, sig), y[idx]))
    cov = torch.linalg.inv(torch.eye(2) / s0**2 + x.T @ x / sig**2)
    mu = cov @ (x.T @ y) / sig**2
    rho = cov[0, 1] / (cov[0, 0] * cov[1, 1]).sqrt()
    assert rho < -0.6
    q, _ = run_svi(model, torch.zeros(2), n, steps=500, batch_size=n, guide="low_rank", guide_rank=1,
                   lr=0.1, lr_decay=0.01 ** (1 / 500), init_scale=0.5, seed=0)
    assert q.cov_factor.shape == (2, 1)
    kl = torch.distributions.kl_divergence(
        torch.distributions.MultivariateNormal(q.loc, q.covariance()),
        torch.distributions.MultivariateNormal(mu, cov),
    )
    assert kl < 0.15 < -0.5 * math.log(1 - rho**2)
    # the stored tensors sample the same Gaussian
    draws = q.sample(20_000, seed=1)
    assert (torch.cov(draws.T) - q.covariance()).abs().max() < 0.01



@pytest.mark.parametrize("guide", ["mean_field", "low_rank"])
def test_scale_lr_steps_the_scales_and_lr_the_mean(guide):
    """``lr`` moves q's mean only and ``scale_lr`` its scales (and low-rank factor) only."""
    g = torch.Generator().manual_seed(0)
    n = 20
    y = torch.randn(n, 3, generator=g) + torch.tensor([1.0, -0.5, 2.0])
    model = latent_model(3, 2.0, n, lambda w, idx: (dist.Normal(w, 1.0).to_event(1), y[idx]))
    kw = {"batch_size": n, "guide": guide, "guide_rank": 1, "init_scale": 0.5, "seed": 0}
    mean_only = [run_svi(model, torch.zeros(3), n, steps=k, lr=0.1, scale_lr=0.0, **kw)[0] for k in (10, 50)]
    spread_only = [run_svi(model, torch.zeros(3), n, steps=k, lr=0.0, scale_lr=0.1, **kw)[0] for k in (10, 50)]
    assert (mean_only[1].loc - y.mean(0)).abs().max() < 0.5  # the mean went to the data ...
    assert torch.equal(mean_only[0].scale, mean_only[1].scale)  # ... and the scales stayed put
    if guide == "low_rank":
        assert torch.equal(mean_only[0].cov_factor, mean_only[1].cov_factor)
        assert not torch.equal(spread_only[0].cov_factor, spread_only[1].cov_factor)
    assert torch.equal(spread_only[0].loc, torch.zeros(3)) and torch.equal(spread_only[1].loc, torch.zeros(3))
    assert (spread_only[0].scale - spread_only[1].scale).abs().max() > 0.05  # the scales moved

def test_gaussian_q_roundtrip_and_covariance():
    q = GaussianQ(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 0.1]), torch.tensor([[1.0], [2.0]]))
    torch.testing.assert_close(q.covariance(), torch.tensor([[1.25, 2.0], [2.0, 4.01]]))
    q2 = GaussianQ.from_tensors(q.tensors())
    assert torch.equal(q2.sample(3, seed=4), q.sample(3, seed=4))


@pytest.fixture(scope="module")
def projected():
    ctx, test = tiny_context()
    return ctx, test, fit("vi", ctx, steps=100, lr=1e-2, init_scale=1e-2)


def test_projected_fit_improves_the_elbo(projected):
    ctx, _, post = projected
    losses = post.info.losses
    assert len(losses) == 100 and post.info.stats["steps"] == 100
    assert sum(losses[-50:]) / 50 < sum(losses[:50]) / 50
    assert post.info.stats["guide"] == "mean_field"
    assert post.info.stats["elbo"] == pytest.approx(-sum(losses[-50:]) / 50)
    assert post.space is ctx.projected_space() and post.q.dim == ctx.projected_space().dim
    assert (post.q.scale > 0).all()


def test_projected_samples_seeded(projected):
    _, _, post = projected
    a = post.sample_thetas(3, seed=1)
    assert torch.equal(a, post.sample_thetas(3, seed=1))
    assert not torch.allclose(a, post.sample_thetas(3, seed=2))
    assert set(post.latent_samples(2)) == {"core", "head"}


@pytest.mark.parametrize("guide", ["mean_field", "low_rank"])
def test_save_load_identical_predictions(projected, guide, tmp_path):
    ctx, test, post = projected
    if guide == "low_rank":
        post = fit("vi", ctx, guide="low_rank", guide_rank=3, steps=10)
        assert post.q.cov_factor.shape == (ctx.projected_space().dim, 3)
    pred = post.predict(test, num_samples=3, seed=5)
    assert pred.probs.shape == (3, len(test), 2)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(3, len(test)))
    post.save(tmp_path / "vi")
    loaded = load(tmp_path / "vi", ctx.fm)
    assert isinstance(loaded, VIPosterior) and loaded.options == post.options
    assert torch.equal(loaded.predict(test, num_samples=3, seed=5).probs, pred.probs)


def test_blob_varies_only_the_a_factors(tmp_path):
    ctx, _ = tiny_context()
    post = fit("vi", ctx, kind="blob", steps=20)
    layout = ctx.fm.layout
    assert isinstance(post.space, MaskedSpace)
    assert post.space.dim == sum(k for n, k in zip(layout.names, layout.numels) if ".lora_A." in n)
    thetas = post.sample_thetas(4, seed=0)
    parts = layout.unflatten(thetas)
    anchor = layout.unflatten(ctx.anchors[0])
    for name, value in parts.items():
        if ".lora_A." in name:
            assert not torch.allclose(value[0], value[1]), name
        else:  # B factors and head stay at the anchor in every sample
            assert torch.equal(value, anchor[name].expand_as(value)), name
    assert set(post.latent_samples(2)) == {"lora_A"}
    post.save(tmp_path / "blob")
    loaded = load(tmp_path / "blob", ctx.fm)
    assert torch.equal(loaded.sample_thetas(4, seed=0), thetas)


