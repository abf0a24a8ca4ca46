"""MAP training through a parameter space lowers the loss of a learnable task; anchors differ by seed."""
from __future__ import annotations

import torch

from bayes_lora.lora import FullSpace, FunctionalModel
from bayes_lora.lora.io import load_adapter, save_adapter
from bayes_lora.lora.train import TrainConfig, evaluate_logits, fine_tune_anchors, init_theta


def test_map_training_lowers_loss_and_anchors_differ(tmp_path):
    from scenarios import tiny_peft_model, tiny_task

    fm = FunctionalModel(tiny_peft_model())
    task = tiny_task(64)
    space = FullSpace(fm.layout)
    before = torch.nn.functional.cross_entropy(evaluate_logits(fm, task, init_theta(fm.layout, 0)), task.labels)
    anchors, _results = fine_tune_anchors(fm, space, task, [0, 1], TrainConfig(epochs=100, max_steps=100, lr=1e-2))
    after = torch.nn.functional.cross_entropy(evaluate_logits(fm, task, anchors[0]), task.labels)
    assert after < 0.5 * before, (before, after)
    assert not torch.allclose(anchors[0], anchors[1])
    save_adapter(tmp_path / "a.safetensors", anchors[0], fm.layout, {"base_model": "tiny", "rank": 4})
    back, meta = load_adapter(tmp_path / "a.safetensors", fm.layout, expect={"rank": 4})
    assert torch.equal(back, anchors[0]) and meta["base_model"] == "tiny"
    import pytest

    with pytest.raises(ValueError, match="rank is 4"):
        load_adapter(tmp_path / "a.safetensors", fm.layout, expect={"rank": 8})
