"""MC dropout (BayesLoRA): p = 0 is the anchor exactly, p > 0 gives distinct seeded samples, and
the model's LoRA dropout modules are restored."""
from __future__ import annotations

import pytest
import torch
from scenarios import tiny_context, tiny_peft_model, tiny_task
from torch import nn

from bayes_lora.diagnostics import metrics
from bayes_lora.inference import fit, load, predict_probs
from bayes_lora.inference.mc_dropout import MCDropoutPosterior, lora_dropout, lora_dropout_modules
from bayes_lora.lora import FunctionalModel
from bayes_lora.lora.train import init_theta


def _flags(model):
    return [
        (type(h[k]).__name__, getattr(h[k], "p", None), h[k].training)
        for h, k in lora_dropout_modules(model)
    ]


def test_p_zero_equals_the_anchor_exactly():
    ctx, test = tiny_context()
    post = fit("mc_dropout", ctx, p=0.0)
    pred = post.predict(test, num_samples=2)
    anchor = predict_probs(ctx.fm, test, ctx.anchors[:1])
    assert torch.equal(pred.probs[0], anchor[0]) and torch.equal(pred.probs[1], anchor[0])
    assert torch.equal(fit("map", ctx).predict(test).probs[0], pred.probs[0])


def test_dropout_gives_distinct_seeded_samples_and_restores_the_model():
    ctx, test = tiny_context()
    before = _flags(ctx.fm.model)
    assert before and all(name == "Identity" for name, _, _ in before)  # built with dropout 0
    post = fit("mc_dropout", ctx, p=0.3)
    a = post.predict(test, num_samples=6, seed=3)
    assert a.probs.shape == (6, len(test), 2)
    torch.testing.assert_close(a.probs.sum(-1), torch.ones(6, len(test)))
    assert not torch.allclose(a.probs[0], a.probs[1])
    assert metrics.summarize(a.probs, test.labels)["mutual_information"] > 1e-4
    state = torch.get_rng_state()
    b = post.predict(test, num_samples=6, seed=3)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG must be left untouched"
    assert torch.equal(a.probs, b.probs)
    assert not torch.equal(a.probs, post.predict(test, num_samples=6, seed=4).probs)
    assert _flags(ctx.fm.model) == before
    assert not any(m.training for m in ctx.fm.model.modules())


def test_restores_a_model_built_with_dropout():
    model = tiny_peft_model(dropout=0.1)
    fm = FunctionalModel(model)
    before = _flags(model)
    assert before and all(f == ("Dropout", 0.1, False) for f in before)
    task = tiny_task(8)
    post = MCDropoutPosterior(fm, init_theta(fm.layout, 0) + 0.1, p=0.5)
    probs = post.predict(task, num_samples=3).probs
    assert not torch.allclose(probs[0], probs[1])
    assert _flags(model) == before
    with pytest.raises(RuntimeError), lora_dropout(model, 0.2) as n:
        assert n == len(before)
        assert all(f == ("Dropout", 0.2, True) for f in _flags(model))
        assert not model.base_model.model.bert.embeddings.dropout.training  # backbone dropout stays off
        raise RuntimeError("restored even on error")
    assert _flags(model) == before


def test_save_load_and_no_thetas(tmp_path):
    ctx, test = tiny_context()
    post = fit("mc_dropout", ctx, p=0.2)
    with pytest.raises(NotImplementedError, match="predict"):
        post.sample_thetas(2)
    post.save(tmp_path / "mcd")
    loaded = load(tmp_path / "mcd", ctx.fm)
    assert isinstance(loaded, MCDropoutPosterior) and loaded.p == 0.2
    assert torch.equal(loaded.theta, ctx.anchors[0])
    assert torch.equal(loaded.predict(test, num_samples=3).probs, post.predict(test, num_samples=3).probs)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        MCDropoutPosterior(ctx.fm, ctx.anchors[0], p=1.0)
    with pytest.raises(ValueError, match="no LoRA dropout"), lora_dropout(nn.Linear(2, 2), 0.1):
        pass
