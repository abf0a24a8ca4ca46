"""``scale="dev"`` of SWAG and VI: each candidate multiplier of DEV_SCALE_GRID is evaluated on the
dev task with the same draws, the one of lowest dev NLL kept; the kept posterior is the fit at that
fixed scale."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from scenarios import tiny_context, tiny_task

from bayes_lora.inference import fit
from bayes_lora.inference.base import DEV_SAMPLES, DEV_SCALE_GRID, Needs, predictive_nll
from bayes_lora.inference.registry import get_backend

SWAG = {"snapshots": 4, "collect_every": 3, "lr": 5e-2}
VI = {"steps": 30, "lr": 1e-2, "init_scale": 5e-2}


@pytest.fixture(scope="module")
def dctx():
    ctx, test = tiny_context()
    return replace(ctx, dev=tiny_task(24, seed=9)), test


@pytest.mark.parametrize("method, options", [("swag", SWAG), ("vi", VI)])
def test_dev_scale_is_the_grid_point_of_lowest_dev_nll(dctx, method, options):
    ctx, _test = dctx
    post = fit(method, ctx, scale="dev", **options)
    ch = post.info.stats["dev_choice"]
    assert ch["parameter"] == "scale" and ch["grid"] == list(DEV_SCALE_GRID) and ch["examples"] == 24
    assert ch["index"] == min(range(len(DEV_SCALE_GRID)), key=lambda i: ch["dev_nll"][i])
    assert post.scale == ch["chosen"] == DEV_SCALE_GRID[ch["index"]]
    for s, want in zip(DEV_SCALE_GRID[::2], ch["dev_nll"][::2]):  # the fit at a fixed scale, evaluated alone
        fixed = fit(method, ctx, scale=s, **options)
        probs = fixed.predict(ctx.dev, num_samples=DEV_SAMPLES, seed=ctx.seed).probs
        assert predictive_nll(probs, ctx.dev.labels) == pytest.approx(want, abs=1e-6)
    chosen = fit(method, ctx, scale=ch["chosen"], **options)
    assert torch.equal(post.sample_thetas(3, seed=4), chosen.sample_thetas(3, seed=4))
    assert get_backend(method).needs({"scale": "dev"}) >= {Needs.DEV}
    assert Needs.DEV not in get_backend(method).needs({})


def test_vi_scale_multiplies_the_covariance_with_the_same_noise(dctx):
    ctx, _ = dctx
    one = fit("vi", ctx, **VI)
    quarter = fit("vi", ctx, scale=0.25, **VI)
    loc = one.q.loc
    a, b = one.sample_latents(64, seed=3), quarter.sample_latents(64, seed=3)
    torch.testing.assert_close(b - loc, math.sqrt(0.25) * (a - loc))
    assert quarter.options["scale"] == 0.25


@pytest.mark.parametrize("method", ["swag", "vi"])
def test_dev_scale_errors(dctx, method):
    ctx, _ = dctx
    options = SWAG if method == "swag" else VI
    with pytest.raises(ValueError, match=f"{method}: scale='dev' chooses its value on held-out data"):
        fit(method, replace(ctx, dev=None), scale="dev", **options)
    with pytest.raises(ValueError, match=f"{method}: scale must be a number > 0"):
        fit(method, ctx, scale=0.0, **options)
    with pytest.raises(ValueError, match=f"{method}: scale must be a number > 0"):
        get_backend(method).check({"scale": "validation"}, ctx.fm.model)


def test_mc_dropout_dev_rate(dctx):
    from bayes_lora.inference.mc_dropout import DEV_P_GRID

    ctx, _ = dctx
    post = fit("mc_dropout", ctx, p="dev")
    ch = post.info.stats["dev_choice"]
    assert ch["grid"] == list(DEV_P_GRID) and post.p == ch["chosen"] == DEV_P_GRID[ch["index"]]
    assert ch["dev_nll"][ch["index"]] == min(ch["dev_nll"])
    fixed = fit("mc_dropout", ctx, p=DEV_P_GRID[-1])
    probs = fixed.predict(ctx.dev, num_samples=DEV_SAMPLES, seed=ctx.seed).probs
    assert predictive_nll(probs, ctx.dev.labels) == pytest.approx(ch["dev_nll"][-1], abs=1e-6)
    assert get_backend("mc_dropout").needs({"p": "dev"}) == {Needs.ANCHORS, Needs.DEV}
    with pytest.raises(ValueError, match="mc_dropout: p must be a rate in"):
        get_backend("mc_dropout").check({"p": 1.5}, ctx.fm.model)
