"""EncodedMultipleChoice and PackedMultipleChoice: prompt layout, masks, and length-normalised
log-likelihood scores."""

import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from scenarios import tiny_llama, tiny_tokenizer

from bayes_lora.data import (
    EncodedMultipleChoice,
    MultipleChoiceData,
    PackedMultipleChoice,
    encode,
    packing_error,
)
from bayes_lora.types import EncodedTask

QUESTIONS = (
    "what is the sun",
    "which plant is green and big and not small",
    "is water cold",
    "what rock is red",
    "the moon is",
)
CHOICES = (
    ("hot", "cold water", "a big red rock", "no"),
    ("the red plant", "green", "blue moon", "a very big green plant"),
    ("yes", "no", "hot", "cold"),
    ("red rock", "blue rock", "green rock", "big rock"),
    ("cold", "hot", "small", "the big rock and the sun"),
)


@pytest.fixture(scope="module")
def data():
    return MultipleChoiceData("toy", QUESTIONS, CHOICES, (0, 3, 1, 0, 2), 4)


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def hand_score(model, tokenizer, question, choice, prefix):
    """Length-normalised log-likelihood of ``choice`` from one unpadded forward pass."""
    prompt = (
        prefix + tokenizer(f"Question: {question}\nAnswer:", add_special_tokens=False)["input_ids"]
    )
    answer = tokenizer(f" {choice}", add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + answer])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].log_softmax(-1)
    return sum(logp[len(prompt) + k - 1, tok].item() for k, tok in enumerate(answer)) / len(answer)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("with_cls", [True, False])
def test_scores_equal_unpadded_hand_computation(data, model, with_cls, packed):
    tokenizer = tiny_tokenizer(with_cls=with_cls)
    task = encode(data, tokenizer, max_length=64, packed=packed)
    assert isinstance(task, PackedMultipleChoice if packed else EncodedMultipleChoice)
    assert isinstance(task, EncodedTask)
    prefix = [tokenizer.cls_token_id] if with_cls else []  # leading special kept, [SEP] dropped
    assert not bool((task.input_ids == tokenizer.sep_token_id).any())
    g = torch.Generator().manual_seed(0)
    for batch in task.batches(4, shuffle=True, generator=g):
        b = len(batch["index"])
        length = batch["inputs"]["input_ids"].shape[1]
        if packed:  # one row per question, an additive mask per row
            assert batch["inputs"]["input_ids"].shape[0] == b
            assert batch["inputs"]["attention_mask"].shape == (b, 1, length, length)
        else:
            assert batch["inputs"]["input_ids"].shape[0] == b * 4
            assert batch["choice_mask"].shape == (b, 4, length)
        with torch.no_grad():
            scores = task.class_logits(model, batch)
        assert scores.shape == (b, 4)
        torch.testing.assert_close(scores.softmax(-1).sum(-1), torch.ones(b))
        for row, i in enumerate(batch["index"].tolist()):
            for j, choice in enumerate(CHOICES[i]):
                expected = hand_score(model, tokenizer, QUESTIONS[i], choice, prefix)
                assert abs(scores[row, j].item() - expected) < 1e-5


def test_masks_mark_the_continuation(data):
    tokenizer = tiny_tokenizer()
    task = encode(data, tokenizer, max_length=64, packed=False)
    n_answer = [
        [len(tokenizer(f" {c}", add_special_tokens=False)["input_ids"]) for c in cs]
        for cs in CHOICES
    ]
    assert task.choice_mask.sum(-1).tolist() == n_answer
    lengths = task.attention_mask.sum(-1)
    positions = torch.arange(task.input_ids.shape[-1])
    # the continuation is the last tokens of every unpadded sequence
    last = (positions < lengths[..., None]) & (
        positions >= (lengths - torch.tensor(n_answer))[..., None]
    )
    assert torch.equal(task.choice_mask.bool(), last)
    assert task.input_ids[0, 0, 0].item() == tokenizer.cls_token_id


def test_left_truncation_of_prompt_keeps_bos_and_answer(data, model):
    tokenizer = tiny_tokenizer()
    task = encode(data, tokenizer, max_length=6, packed=False)
    assert task.input_ids.shape[-1] == 6

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    # prompt loses its oldest words but keeps [CLS]: [CLS] is the sun Answer: hot
    assert task.input_ids[0, 0].tolist() == [tokenizer.cls_token_id] + ids("is the sun Answer: hot")
    # a 5-token answer leaves room for one prompt token only (needed to score its first token)
    assert task.input_ids[1, 3].tolist() == ids("Answer: a very big green plant")
    assert task.choice_mask[1, 3].tolist() == [0, 1, 1, 1, 1, 1]
    with torch.no_grad():
        assert torch.isfinite(task.class_logits(model, task.full_batch())).all()


@pytest.mark.parametrize("packed", [True, False])
def test_gradients_flow(data, model, packed):
    task = encode(data, tiny_tokenizer(), max_length=64, packed=packed)
    model.zero_grad()
    batch = next(task.batches(2))
    loss = torch.nn.functional.cross_entropy(task.class_logits(model, batch), batch["labels"])
    loss.backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_subset_and_errors(data, model):
    task = encode(data, tiny_tokenizer(), max_length=64, packed=False)
    sub = task.subset(torch.tensor([3, 0]))
    assert isinstance(sub, EncodedMultipleChoice) and len(sub) == 2 and sub.num_classes == 4
    assert sub.labels.tolist() == [0, 0]
    with torch.no_grad():
        full = task.class_logits(model, task.full_batch())
        part = sub.class_logits(model, sub.full_batch())
    torch.testing.assert_close(part, full[[3, 0]], atol=1e-5, rtol=1e-5)
    batch = next(task.batches(2))
    with pytest.raises(ValueError, match=r"\[B\*C, L, V\]"):
        task.class_logits(lambda **kw: torch.zeros(2, 4), batch)
    empty = MultipleChoiceData("e", ("q",), (("good", "", "bad", "fine"),), (0,), 4)
    with pytest.raises(ValueError, match="choice 1 of question 0 .* no tokens"):
        encode(empty, tiny_tokenizer())


def test_packed_layout(data):
    tokenizer = tiny_tokenizer()
    task = encode(data, tokenizer, max_length=64)

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt = [tokenizer.cls_token_id] + ids("Question: what is the sun\nAnswer:")
    answers = [ids(f" {c}") for c in CHOICES[0]]
    row = prompt + [t for a in answers for t in a]
    assert task.input_ids[0, : len(row)].tolist() == row
    assert task.segments[0, : len(row)].tolist() == [0] * len(prompt) + [
        j + 1 for j, a in enumerate(answers) for _ in a]
    assert task.segments[0, len(row):].eq(-1).all()
    batch = task.subset([0]).full_batch()
    p = len(prompt)
    # every choice continues the prompt's positions
    assert batch["inputs"]["position_ids"][0].tolist() == list(range(p)) + [
        p + k for a in answers for k in range(len(a))]
    mask = batch["inputs"]["attention_mask"][0, 0] == 0  # True: may attend
    second = p + len(answers[0])  # the first token of choice 1
    assert mask[second, :p].all() and mask[second, second]
    assert not mask[second, p:second].any()  # not choice 0
    assert not mask[p - 1, p:].any()  # the prompt sees no choice
    assert task.example_lengths()[0].item() == len(row)


def test_packed_truncation_shares_one_prompt(data, model):
    tokenizer = tiny_tokenizer()
    task = encode(data, tokenizer, max_length=6)
    # question 1's longest choice has 5 tokens: its prompt keeps one token, for all four choices
    longest = max(len(tokenizer(f" {c}", add_special_tokens=False)["input_ids"]) for c in CHOICES[1])
    assert longest == 5 and task.segments[1].eq(0).sum().item() == 1
    # question 0's longest has 4 tokens: 2 prompt tokens, [CLS] kept first
    assert task.input_ids[0, :2].tolist() == [tokenizer.cls_token_id] + tokenizer(
        "Answer:", add_special_tokens=False)["input_ids"][-1:]
    with torch.no_grad():
        assert torch.isfinite(task.class_logits(model, task.full_batch())).all()


def test_packed_logits_of_every_position_or_kept_ones(data, model):
    """A model that ignores ``logits_to_keep`` (logits at every position) scores the same, and
    the task asks for the kept positions only."""
    task = encode(data, tiny_tokenizer(), max_length=64)
    batch = task.full_batch()
    seen = {}

    def keeping(**kw):
        seen["keep"] = kw.get("logits_to_keep")
        return model(**kw)

    def every(**kw):
        kw.pop("logits_to_keep")
        return model(**kw)

    with torch.no_grad():
        a = task.class_logits(keeping, batch)
        b = task.class_logits(every, batch)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    keep = seen["keep"]
    # the prompt's last token and every choice token but each choice's last
    n_answer = [[len(tiny_tokenizer()(f" {c}", add_special_tokens=False)["input_ids"]) for c in cs] for cs in CHOICES]
    assert keep.sum(-1).tolist() == [1 + sum(n) - 4 for n in n_answer]


def test_packed_subset_and_errors(data, model):
    task = encode(data, tiny_tokenizer(), max_length=64)
    sub = task.subset(torch.tensor([3, 0]))
    assert isinstance(sub, PackedMultipleChoice) and len(sub) == 2 and sub.num_classes == 4
    assert sub.labels.tolist() == [0, 0]
    with torch.no_grad():
        full = task.class_logits(model, task.full_batch())
        part = sub.class_logits(model, sub.full_batch())
    torch.testing.assert_close(part, full[[3, 0]], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"kept positions"):
        task.class_logits(lambda **kw: torch.zeros(2, 4), task.full_batch())
    with pytest.raises(ValueError, match="needs a prompt token and a token per choice"):
        PackedMultipleChoice(task.input_ids[:1], task.segments[:1].clamp(max=3), task.labels[:1], name="t",
                             num_choices=4)


def test_packing_error_tells_a_model_that_ignores_the_mask(data, model):
    tokenizer = tiny_tokenizer()
    assert packing_error(model, data, tokenizer) < 1e-5

    def padding_mask_only(**kw):  # what an attention kernel without custom masks computes
        if kw["attention_mask"].dim() == 4:  # (right padding needs no mask in a causal LM)
            kw.pop("attention_mask")
        kw.pop("position_ids", None)
        return model(**kw)

    ignored = packing_error(padding_mask_only, data, tokenizer)
    assert ignored > 1e-3  # the runner refuses above 1e-4 (float32)
    # ignore_mask: the same yardstick, computed from the model itself
    assert packing_error(model, data, tokenizer, ignore_mask=True) == pytest.approx(ignored, abs=1e-6)
