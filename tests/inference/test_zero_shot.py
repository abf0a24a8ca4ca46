"""zero_shot: the base model before fine-tuning, as a posterior (the floor of a results table)."""
from __future__ import annotations

import copy
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from scenarios import tiny_llama, tiny_peft_model, tiny_tokenizer

from bayes_lora.data import MultipleChoiceData, encode
from bayes_lora.inference.base import FitContext
from bayes_lora.inference.registry import fit, get_backend, load
from bayes_lora.lora import FunctionalModel
from bayes_lora.lora.backbone import LoraSettings, add_lora


@pytest.fixture(scope="module")
def lm():
    base = tiny_llama()
    reference = copy.deepcopy(base)
    model = add_lora(base, LoraSettings(r=2, alpha=4.0, target_modules=("q_proj", "v_proj"), train_head=False),
                     kind="causal_lm")
    data = MultipleChoiceData("toy", ("the film was", "it was a", "so", "is water cold"),
                              (("good", "bad", "fine"),) * 4, (0, 1, 2, 0), 3)
    return model, reference, encode(data, tiny_tokenizer(with_cls=False), max_length=16)


def test_zero_shot_predicts_the_base_model(lm, tmp_path):
    model, reference, task = lm
    fm = FunctionalModel(model)
    # adapters that moved (as after fine-tuning): zero_shot still predicts the base model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
    post = fit("zero_shot", FitContext(fm=fm, train=task))
    assert post.method == "zero_shot"
    with torch.no_grad():
        expected = task.class_logits(reference, task.full_batch()).softmax(-1)
        moved = task.class_logits(model, task.full_batch()).softmax(-1)
    assert (moved - expected).abs().max() > 1e-3  # the moved adapters do change the model
    pred = post.predict(task)
    assert pred.probs.shape == (1, len(task), 3)  # a point mass: one sample by default
    torch.testing.assert_close(pred.probs[0], expected, atol=1e-6, rtol=0)
    post.save(tmp_path / "z")
    again = load(tmp_path / "z", fm)
    torch.testing.assert_close(again.predict(task).probs, pred.probs)


def test_zero_shot_refuses_a_trained_head():
    model = tiny_peft_model()  # a classifier whose head is in θ
    with pytest.raises(ValueError, match="zero_shot evaluates the base model, but θ holds a trained head"):
        get_backend("zero_shot").check({}, model)
