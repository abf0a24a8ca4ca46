"""SWAG: moments of the snapshots, the covariance's structure and rank, sampling against the
formula, seeding, save/load, prediction shapes."""
from __future__ import annotations

import pytest
import torch
from scenarios import tiny_context

from bayes_lora.inference import fit, load
from bayes_lora.inference.swag import (
    Covariance,
    SwagPosterior,
    collect_snapshots,
    swag_moments,
    swag_sample,
)

K = 6
OPTIONS = {"snapshots": K, "collect_every": 3, "lr": 1e-2}


@pytest.fixture(scope="module")
def swag():
    ctx, test = tiny_context()
    return ctx, test, fit("swag", ctx, **OPTIONS)


def test_moments_known_answer():
    snaps = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0], [2.0, 0.0, 5.0]])
    mean, var, dev = swag_moments(snaps)
    torch.testing.assert_close(mean, torch.tensor([2.0, 0.0, 3.0]))
    torch.testing.assert_close(var, torch.tensor([2 / 3, 1e-30, 2.0]))  # constant coordinate clamped
    torch.testing.assert_close(dev, (snaps - mean).T)
    with pytest.raises(ValueError, match="K ≥ 2"):
        swag_moments(snaps[:1])


def test_fit_mean_is_the_mean_of_the_snapshots(swag):
    ctx, _, post = swag
    res = collect_snapshots(
        ctx.fm, ctx.projected_space(), ctx.train, ctx.fit_projected_map().core,
        snapshots=K, collect_every=3, lr=1e-2, batch_size=ctx.train_config.batch_size, seed=ctx.seed,
    )
    snaps = torch.stack(res.snapshots)
    assert snaps.shape == (K, ctx.projected_space().dim)
    assert len(res.losses) == 3 * K
    torch.testing.assert_close(post.mean, snaps.mean(0))
    torch.testing.assert_close(post.deviations, (snaps - snaps.mean(0)).T)
    assert post.rank == K and post.info.stats["steps"] == 3 * K
    assert (post.var >= 1e-30).all()
    assert post.info.stats["deviation_norm"] > 0, "the constant-lr run must move"


def test_dense_covariance_formula_and_rank(swag):
    _, _, post = swag
    d = post.space.dim
    cov = post.covariance()
    low = post.deviations @ post.deviations.T / (2 * (K - 1))
    torch.testing.assert_close(cov, torch.diag(post.var) / 2 + low)
    torch.testing.assert_close(cov, cov.T)
    # the low-rank part has rank ≤ K − 1 (deviations from the mean sum to zero)
    assert torch.linalg.matrix_rank(cov - torch.diag(post.var) / 2).item() <= K - 1
    low_only = SwagPosterior(post.fm, post.space, post.mean, post.var, post.deviations, covariance="low_rank")
    sv = torch.linalg.svdvals(low_only.covariance().double())
    assert (sv[K - 1 :] <= 1e-6 * sv[0]).all() and sv[K - 2] > 1e-6 * sv[0]
    diag_only = SwagPosterior(post.fm, post.space, post.mean, post.var, post.deviations, covariance="diag")
    torch.testing.assert_close(diag_only.covariance(), torch.diag(post.var))
    scaled = SwagPosterior(post.fm, post.space, post.mean, post.var, post.deviations, scale=4.0)
    torch.testing.assert_close(scaled.covariance(), 4 * cov)
    assert cov.shape == (d, d)


@pytest.mark.parametrize("covariance", list(Covariance))
def test_samples_match_mean_and_covariance(covariance):
    g = torch.Generator().manual_seed(1)
    d, k, n = 12, 5, 40_000
    mean = torch.randn(d, generator=g)
    var = torch.rand(d, generator=g) + 0.5
    dev = torch.randn(d, k, generator=g)
    dev = dev - dev.mean(1, keepdim=True)
    draws = swag_sample(mean, var, dev, n, seed=3, covariance=covariance, scale=2.0).double()
    post_cov = {
        Covariance.SWAG: torch.diag(var) / 2 + dev @ dev.T / (2 * (k - 1)),
        Covariance.DIAG: torch.diag(var),
        Covariance.LOW_RANK: dev @ dev.T / (k - 1),
    }[covariance].double() * 2.0
    sd = post_cov.diagonal().sqrt()
    assert ((draws.mean(0) - mean.double()).abs() / sd).max() < 5 / n**0.5
    emp = torch.cov(draws.T)
    assert (emp - post_cov).norm() / post_cov.norm() < 0.03


def test_seeding(swag):
    _, _, post = swag
    a, b = post.sample_thetas(4, seed=7), post.sample_thetas(4, seed=7)
    assert torch.equal(a, b)
    assert not torch.allclose(a, post.sample_thetas(4, seed=8))
    assert not torch.allclose(a[0], a[1])
    lat = post.latent_samples(4, seed=7)
    assert set(lat) == {"core", "head"}
    w = torch.cat([lat["core"], lat["head"]], -1)
    torch.testing.assert_close(post.space.to_theta(w), a)


def test_predict_and_save_load_roundtrip(swag, tmp_path):
    ctx, test, post = swag
    pred = post.predict(test, num_samples=5, seed=2)
    assert pred.probs.shape == (5, len(test), 2)
    torch.testing.assert_close(pred.probs.sum(-1), torch.ones(5, len(test)))
    assert not torch.allclose(pred.probs[0], pred.probs[1])
    post.save(tmp_path / "swag")
    loaded = load(tmp_path / "swag", ctx.fm)  # rebuilds the LoRA-XS space from the model
    assert isinstance(loaded, SwagPosterior) and loaded.options == post.options
    assert loaded.info.stats["steps"] == post.info.stats["steps"]
    assert torch.equal(loaded.predict(test, num_samples=5, seed=2).probs, pred.probs)


def test_full_space_from_the_anchor():
    ctx, test = tiny_context()
    post = fit("swag", ctx, snapshots=3, collect_every=2, lr=1e-3, space="full", covariance="diag")
    assert post.space.dim == ctx.fm.layout.dim
    assert post.latent_samples(2).keys() == {"theta"}
    acc = (post.predict(test, num_samples=4).mean.argmax(-1) == test.labels).float().mean()
    assert acc >= 0.8, "SWAG around a good anchor at a small lr predicts well"
    with pytest.raises(ValueError, match="snapshots ≥ 2"):
        fit("swag", ctx, snapshots=1)


def test_adapter_space_starts_at_the_anchor_and_round_trips(tmp_path):
    """space="adapter": SWAG over the r×r cores of the first anchor's own update. Its snapshots
    start at that anchor (identity cores), so at a small lr it predicts like the anchor; the SVD
    factors travel with the saved posterior."""
    from bayes_lora.inference.swag import split_latent

    ctx, test = tiny_context()
    post = fit("swag", ctx, snapshots=3, collect_every=2, lr=1e-3, space="adapter")
    sp = ctx.adapter_space(0)
    assert post.space is sp and sp.kind == "adapter" and post.options["space"] == "adapter"
    assert post.info.stats["distance_from_init"] < 0.5 and post.info.stats["map_seconds"] == 0.0
    assert set(split_latent(sp, post.mean[None])) == {"core", "head"}
    anchor = fit("map", ctx).predict(test).probs[0]
    probs = post.predict(test, num_samples=4, seed=0).probs
    agree = (probs.mean(0).argmax(-1) == anchor.argmax(-1)).float().mean()
    assert agree >= 0.9, f"SWAG from the anchor at a small lr agrees with it on {agree:.0%} of the examples"
    post.save(tmp_path / "swag")
    back = load(tmp_path / "swag", ctx.fm)
    assert back.space.kind == "adapter"
    assert torch.equal(back.predict(test, num_samples=4, seed=0).probs, probs)


def test_covariance_spectrum_is_the_covariances_also_matrix_free_above_max_dim(swag):
    """Exact eigenvalues (descending) and trace of the covariance sampled; above ``max_dim`` the
    same eigenvalues by Lanczos on the matrix-free product (no d × d matrix)."""
    from bayes_lora.diagnostics.metrics import variance_shares

    _, _, post = swag
    cov = post.covariance().double()
    exact = torch.linalg.eigvalsh(cov).flip(0)
    sp = post.covariance_spectrum(top=8)
    assert sp["exact"] and sp["dim"] == post.space.dim and len(sp["eigenvalues"]) == 8
    torch.testing.assert_close(torch.tensor(sp["eigenvalues"], dtype=torch.float64), exact[:8], rtol=1e-6, atol=1e-12)
    assert sp["trace"] == pytest.approx(float(cov.trace()), rel=1e-6)  # covariance() is float32
    shares = variance_shares(sp, ks=(1, 3))
    assert shares[1] == pytest.approx(float(exact[0] / cov.trace()), rel=1e-6) and shares[1] <= shares[3] <= 1
    assert exact[0] > 2 * exact[K]  # a spectrum with structure: the low-rank directions stand out
    lanczos = post.covariance_spectrum(top=8, max_dim=1)  # forced onto the matrix-free path
    assert lanczos["exact"] and lanczos["trace"] == sp["trace"] and len(lanczos["eigenvalues"]) == 8
    torch.testing.assert_close(torch.tensor(lanczos["eigenvalues"], dtype=torch.float64), exact[:8],
                               rtol=1e-5, atol=1e-12)
    diag_only = SwagPosterior(post.fm, post.space, post.mean, post.var, post.deviations, covariance="diag")
    d = diag_only.covariance_spectrum(top=3, max_dim=1)  # no low-rank part: the sorted variances, exact
    assert d["exact"] and d["eigenvalues"] == pytest.approx(post.var.double().sort(descending=True).values[:3].tolist())
