"""The real all-MiniLM-L6-v2 weights on real SST-2 (skipped cleanly when either is absent)."""
from __future__ import annotations

import pytest
import torch
from conftest import SHARED_DATA, real_setup_available

ok, why = real_setup_available()


@pytest.mark.real
@pytest.mark.skipif(not ok, reason=why)
def test_map_on_real_minilm_reaches_78_percent_on_sst2_test():
    from bayes_lora.data import encode, load_sst2
    from bayes_lora.diagnostics import summarize
    from bayes_lora.inference.base import predict_probs
    from bayes_lora.lora import FullSpace, FunctionalModel
    from bayes_lora.lora.backbone import LoraSettings, load_backbone
    from bayes_lora.lora.prefix import with_prefix_cache
    from bayes_lora.lora.train import TrainConfig, fine_tune

    bb = load_backbone(lora=LoraSettings(layers=(3, 4, 5)))  # the default config's adapters
    # 800 sentences × 3 epochs (150 steps): 82.0 % in ~60 % of the time of the default config's
    # 2000 × 2 (82.2 %); smaller budgets fall to 77–79 % (docs/performance.md)
    train = encode(load_sst2("train", data_dir=SHARED_DATA, max_examples=800, seed=0), bb.tokenizer, max_length=64)
    test = encode(load_sst2("test", data_dir=SHARED_DATA), bb.tokenizer, max_length=64)
    assert len(test) == 872
    fm, train, test = with_prefix_cache(FunctionalModel(bb.model), train, test)  # layers 0–2 once
    res = fine_tune(fm, FullSpace(fm.layout), train, TrainConfig(epochs=3, seed=0))
    m = summarize(predict_probs(fm, test, res.latent[None]), test.labels)
    assert m["accuracy"] >= 0.78, m
    assert m["nll"] < 0.5, m
    assert torch.isfinite(res.latent).all()
