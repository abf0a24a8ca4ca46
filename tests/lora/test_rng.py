"""Seeded work without global side effects: :func:`bayes_lora.lora.rng.seeded`, and loading a
model (a new classifier head, peft's LoRA init) leaves the caller's RNG state alone."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from scenarios import tiny_bert, tiny_tokenizer

from bayes_lora.lora.backbone import LoraSettings, load_backbone
from bayes_lora.lora.rng import seeded


def _rng_state():
    st = np.random.get_state()
    return torch.get_rng_state(), (st[0], st[1].copy(), *st[2:]), random.getstate()


def _assert_rng_state(before):
    t, n, r = _rng_state()
    assert torch.equal(before[0], t), "torch's global RNG changed"
    assert before[1][0] == n[0] and (before[1][1] == n[1]).all() and before[1][2:] == n[2:], "numpy's changed"
    assert before[2] == r, "random's changed"


def _draws():
    return torch.rand(3), np.random.rand(3), random.random()


def test_seeded_is_reproducible_and_restores_every_rng_and_the_param_store():
    import pyro

    pyro.get_param_store().clear()
    pyro.param("mine", torch.ones(2))
    torch.manual_seed(5)
    np.random.seed(6)
    random.seed(7)
    before = _rng_state()
    with seeded(3, pyro_params=True):
        assert list(pyro.get_param_store().keys()) == []  # an empty store inside
        pyro.param("theirs", torch.zeros(1))
        a = _draws()
    _assert_rng_state(before)
    assert list(pyro.get_param_store().keys()) == ["mine"]
    torch.rand(7)  # another caller state: the same draws inside
    with seeded(3):
        b = _draws()
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]
    # as pyro.set_rng_seed seeds them (the curve backend's draws are unchanged by the scoping)
    with seeded(3):
        pyro.set_rng_seed(3)
        c = _draws()
    assert torch.equal(a[0], c[0]) and (a[1] == c[1]).all() and a[2] == c[2]
    with seeded(4):
        assert not torch.equal(torch.rand(3), a[0])


def test_seeded_restores_on_an_exception():
    import pyro

    pyro.get_param_store().clear()
    pyro.param("mine", torch.ones(2))
    before = _rng_state()
    with pytest.raises(RuntimeError, match="boom"), seeded(1, pyro_params=True):
        _draws()
        pyro.param("theirs", torch.zeros(1))
        raise RuntimeError("boom")
    _assert_rng_state(before)
    assert list(pyro.get_param_store().keys()) == ["mine"]


@pytest.mark.parametrize("num_labels", [2, 3], ids=["own-head", "new-head"])
def test_load_backbone_is_deterministic_and_leaves_the_global_rng_alone(tmp_path, num_labels):
    """The checkpoint has a 2-label head: for 3 labels a new head is initialised. Either way the
    loaded weights (head, LoRA A) are the same whatever the caller's RNG state, and that state
    is left as it was (load_backbone used to reseed torch globally)."""
    tiny_bert(num_labels=2).save_pretrained(tmp_path / "m")
    tiny_tokenizer().save_pretrained(tmp_path / "m")
    lora = LoraSettings(r=2)
    torch.manual_seed(21)
    np.random.seed(22)
    random.seed(23)
    before = _rng_state()
    first = load_backbone(str(tmp_path / "m"), num_labels=num_labels, lora=lora).model.state_dict()
    _assert_rng_state(before)
    torch.rand(11)
    second = load_backbone(str(tmp_path / "m"), num_labels=num_labels, lora=lora).model.state_dict()
    assert first.keys() == second.keys()
    for k in first:
        assert torch.equal(first[k], second[k]), k
    head = [k for k in first if "classifier" in k and k.endswith("weight")]
    assert head and all(first[k].shape[0] == num_labels for k in head)
