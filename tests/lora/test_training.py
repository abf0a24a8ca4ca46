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


def test_fine_tune_and_train_curve_cache_the_frozen_prefix_themselves():
    """Adapters on the top layer only: fine_tune / fine_tune_anchors / train_curve run the adapted
    layer alone on hidden states computed once, and reach the optimum of the uncached loop."""
    from scenarios import tiny_bert, tiny_task

    from bayes_lora.lora import FullSpace, FunctionalModel
    from bayes_lora.lora.backbone import LoraSettings, add_lora
    from bayes_lora.lora.curve_train import CurveConfig, train_curve
    from bayes_lora.lora.prefix import CachedTask
    from bayes_lora.lora.train import TrainConfig, fine_tune, fine_tune_anchors, with_cached_prefix

    fm = FunctionalModel(add_lora(tiny_bert(), LoraSettings(r=4, alpha=8, layers=(1,)), "classifier"))
    task, space = tiny_task(48), FullSpace(fm.layout)
    cfg = TrainConfig(epochs=10, max_steps=12, batch_size=16, lr=1e-2, seed=0)
    fm2, task2 = with_cached_prefix(fm, task)
    assert isinstance(task2, CachedTask) and fm2 is not fm
    assert with_cached_prefix(fm2, task2) == (fm2, task2) and with_cached_prefix(fm, task, False) == (fm, task)
    cached = fine_tune(fm, space, task, cfg).latent
    plain = fine_tune(fm, space, task, cfg, prefix_cache=False).latent
    torch.testing.assert_close(cached, plain, atol=1e-4, rtol=1e-4)
    anchors, _ = fine_tune_anchors(fm, space, task, [0, 1], cfg)
    torch.testing.assert_close(anchors[0], cached, atol=1e-4, rtol=1e-4)
    ccfg = CurveConfig(max_steps=6, lr=1e-2, js_weight=0.0, seed=0)
    a = train_curve(fm, space, task, anchors, ccfg).curve.control_points().detach()
    b = train_curve(fm, space, task, anchors, ccfg, prefix_cache=False).curve.control_points().detach()
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
