"""LoRA-XS cores of their own rank (B-LoRA-XS): the projected MAP, Laplace, SWAG and VI in a
rank-k core space over a rank-r LoRA model, fitted, saved and loaded like the others."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from scenarios import tiny_context

from bayes_lora.inference.base import predict_probs
from bayes_lora.inference.registry import fit, load
from bayes_lora.lora.params import ParamLayout

RANK = 6  # the tiny model's LoRA rank is 4; its weights are 32 × 32


@pytest.fixture(scope="module")
def xs_ctx():
    ctx, test = tiny_context()
    ctx = dataclasses.replace(ctx, projected=None, projected_rank=RANK)
    ctx.fit_projected_map()
    return ctx, test


def test_projected_map_at_its_own_rank(xs_ctx):
    """The MAP's space has k×k cores; its θ has rank-k factors, evaluated by the same model, and
    fine-tuning lowers the training NLL from the zero cores. At k = the LoRA rank the space and
    the MAP are exactly those without a rank (the runs made before ranks existed)."""
    ctx, _test = xs_ctx
    pm = ctx.projected
    assert pm.space.ranks == [RANK] * 4 and pm.space.dim == 4 * RANK * RANK + 66
    assert pm.space.layout == ctx.fm.layout.at_rank(RANK) and ctx.fm.layout.lora_ranks == (4,) * 4
    assert ctx.projected_space() is pm.space
    fm = ctx.fm.with_layout(pm.space.layout)

    def train_nll(w):
        p = predict_probs(fm, ctx.train, pm.space.to_theta(w)[None])[0]
        return float(-p[torch.arange(len(ctx.train)), ctx.train.labels].log().mean())

    assert train_nll(pm.core) < train_nll(pm.space.initial()) - 0.01
    same, _ = tiny_context()
    at_r = dataclasses.replace(same, projected=None, projected_rank=4)
    at_r.fit_projected_map()
    assert at_r.projected.space.layout == same.fm.layout
    torch.testing.assert_close(at_r.projected.core, same.projected.core, rtol=0, atol=0)


@pytest.mark.parametrize("method,options", [
    ("map", {"space": "projected"}),
    ("laplace", {"space": "projected", "hessian": "full", "subset": 32}),
    ("swag", {"space": "projected", "snapshots": 3, "collect_every": 2}),
    ("vi", {"kind": "projected", "steps": 10}),
])
def test_rank_k_posteriors_fit_save_and_load(xs_ctx, method, options, tmp_path):
    """Each posterior predicts with the rank-k model, saves its rank-k layout and loads from the
    run's rank-r model (``load(path, ctx.fm)``) to the same predictions; the Laplace's and
    SWAG's mean is the MAP's core (SWAG: its snapshots' mean, which starts there)."""
    ctx, test = xs_ctx
    post = fit(method, ctx, **options)
    assert post.fm.layout.lora_ranks == (RANK,) * 4 and post.fm.model is ctx.fm.model
    pred = post.predict(test, num_samples=4, seed=3)
    assert pred.probs.shape == (4 if method != "laplace" else pred.probs.shape[0], len(test), 2)
    assert torch.isfinite(pred.probs).all()
    if method == "laplace":
        torch.testing.assert_close(post.mean, ctx.projected.core)
    if method == "map":  # the LoRA-XS MAP itself
        pm = ctx.projected
        torch.testing.assert_close(post.theta, pm.space.to_theta(pm.core))
    back = load(post.save(tmp_path / method), ctx.fm, ctx)
    assert back.fm.layout == post.fm.layout
    torch.testing.assert_close(back.predict(test, num_samples=4, seed=3).probs, pred.probs, rtol=0, atol=1e-6)


def test_a_layout_of_other_tensors_is_still_refused(xs_ctx, tmp_path):
    """Only the LoRA factors' rank may differ between a saved posterior and the model."""
    import copy

    ctx, _ = xs_ctx
    path = fit("swag", ctx, space="projected", snapshots=3, collect_every=2).save(tmp_path / "swag")
    fm = copy.copy(ctx.fm)
    fm.layout = ParamLayout(ctx.fm.layout.names[:-1], ctx.fm.layout.shapes[:-1])  # no head bias
    with pytest.raises(ValueError, match="the LoRA tensors differ"):
        load(path, fm)
