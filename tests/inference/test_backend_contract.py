"""One contract every registered backend keeps (issue 4): shapes, normalisation, seeding and a
save/load round trip with identical predictions."""
from __future__ import annotations

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
    assert set(available_methods()) == set(OPTIONS)


@pytest.fixture(scope="module")
def fitted(tiny_ctx):
    ctx, _ = tiny_ctx
    return {m: fit(m, ctx, **OPTIONS[m]) for m in OPTIONS}


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
