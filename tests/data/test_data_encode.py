"""EncodedClassification: padding, batching, class logits, subsets."""

import pathlib
import sys
import types

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from scenarios import sentiment_texts, tiny_bert, tiny_tokenizer

from bayes_lora.data import (
    EncodedClassification,
    TextClassificationData,
    batch_to,
    encode,
)
from bayes_lora.data.batching import pad_token_id
from bayes_lora.types import EncodedTask


@pytest.fixture
def data():
    texts, labels = sentiment_texts(21, seed=1)
    short = ["good", "bad", "fine", "sad"]  # first batch of 4 is short
    long = ["the movie was very good and the plot was great fun"]
    return TextClassificationData("toy", tuple(short + texts + long), (1, 0, 1, 0, *labels, 1), 2)


@pytest.fixture
def task(data):
    return encode(data, tiny_tokenizer(), max_length=16)


def test_encoding_pads_right_and_truncates(data, task):
    assert isinstance(task, EncodedClassification) and isinstance(task, EncodedTask)
    assert len(task) == len(data) == 26 and task.num_classes == 2 and task.name == "toy"
    assert task.input_ids.shape == task.attention_mask.shape == (26, 13)  # [CLS] 11 words [SEP]
    lengths = task.attention_mask.sum(1)
    assert lengths[0] == 3 and lengths[-1] == 13
    # right padding: mask is 1...1 0...0 and padded positions hold the pad id
    assert torch.equal(task.attention_mask, (torch.arange(13) < lengths[:, None]).long())
    assert bool((task.input_ids[task.attention_mask == 0] == 0).all())
    assert task.labels.tolist() == list(data.labels)
    short = encode(data, tiny_tokenizer(), max_length=8)
    assert short.input_ids.shape[1] == 8
    assert short.input_ids[-1, -1].item() == tiny_tokenizer().sep_token_id  # specials kept


@pytest.mark.parametrize("shuffle", [False, True])
def test_batches_cover_every_example_once(task, shuffle):
    g = torch.Generator().manual_seed(0)
    batches = list(task.batches(4, shuffle=shuffle, generator=g))
    assert [len(b["labels"]) for b in batches] == [4] * 6 + [2]
    seen = torch.cat([b["index"] for b in batches])
    assert sorted(seen.tolist()) == list(range(len(task)))
    assert (seen.tolist() != list(range(len(task)))) == shuffle
    for b in batches:
        ids, mask = b["inputs"]["input_ids"], b["inputs"]["attention_mask"]
        width = int(task.attention_mask[b["index"]].sum(1).max())
        assert ids.shape == mask.shape == (len(b["index"]), width)  # dynamic padding
        assert torch.equal(ids, task.input_ids[b["index"], :width])
        assert torch.equal(b["labels"], task.labels[b["index"]])


def test_shuffle_is_reproducible_with_generator(task):
    def order(seed):
        g = torch.Generator().manual_seed(seed)
        return torch.cat([b["index"] for b in task.batches(5, shuffle=True, generator=g)]).tolist()

    assert order(7) == order(7) and order(7) != order(8)


def test_dynamic_padding_trims_short_batches(task):
    first = next(task.batches(4))
    assert first["inputs"]["input_ids"].shape == (4, 3)
    full = task.full_batch()
    assert full["index"].tolist() == list(range(len(task)))
    assert full["inputs"]["input_ids"].shape == task.input_ids.shape


def test_class_logits_match_unpadded_forward(task):
    model = tiny_bert(num_labels=2)
    batch = next(task.batches(8, shuffle=True, generator=torch.Generator().manual_seed(2)))
    with torch.no_grad():
        logits = task.class_logits(model, batch)
        assert logits.shape == (8, 2)
        for row, i in enumerate(batch["index"].tolist()):
            n = int(task.attention_mask[i].sum())
            alone = model(input_ids=task.input_ids[i : i + 1, :n]).logits[0]
            torch.testing.assert_close(logits[row], alone, atol=1e-5, rtol=1e-5)


def test_class_logits_shape_errors(task):
    batch = next(task.batches(4))
    with pytest.raises(ValueError, match=r"\[4, 2\].*\[4, 3\].*num_labels=2"):
        task.class_logits(tiny_bert(num_labels=3), batch)
    plain = task.class_logits(lambda **kw: torch.zeros(4, 2), batch)  # bare tensors are accepted
    assert plain.shape == (4, 2)
    with pytest.raises(TypeError, match="no logits"):
        task.class_logits(lambda **kw: "nonsense", batch)


def test_subset(task):
    sub = task.subset(torch.tensor([0, 2, 1]))
    assert isinstance(sub, EncodedClassification) and len(sub) == 3
    assert sub.labels.tolist() == task.labels[[0, 2, 1]].tolist()
    assert sub.input_ids.shape == (3, 3)  # trimmed to the subset's longest
    assert torch.equal(sub.input_ids, task.input_ids[[0, 2, 1], :3])
    assert len(task.subset([len(task) - 1])) == 1
    mask = torch.zeros(len(task), dtype=torch.bool)
    mask[[1, 5]] = True
    assert task.subset(mask).labels.tolist() == task.labels[[1, 5]].tolist()
    with pytest.raises(IndexError):
        task.subset(torch.tensor([len(task)]))
    with pytest.raises(ValueError, match="at least one"):
        task.subset(torch.tensor([], dtype=torch.long))


def test_constructor_validation():
    ids = torch.ones(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="0..1"):
        EncodedClassification(ids, ids, torch.tensor([0, 2]), name="t", num_classes=2)
    with pytest.raises(ValueError, match=r"\[N, L\]"):
        EncodedClassification(ids, ids[:, :2], torch.tensor([0, 1]), name="t", num_classes=2)
    task = EncodedClassification(ids, ids, torch.tensor([0, 1]), name="t", num_classes=2)
    with pytest.raises(ValueError, match="batch_size"):
        next(task.batches(0))


def test_helpers():
    assert pad_token_id(types.SimpleNamespace(pad_token_id=None, eos_token_id=4)) == 4
    assert pad_token_id(types.SimpleNamespace(pad_token_id=None, eos_token_id=None)) == 0
    batch = {"inputs": {"input_ids": torch.ones(2, 2)}, "labels": torch.zeros(2), "tag": "x"}
    moved = batch_to(batch, "cpu")
    assert moved["tag"] == "x" and moved["inputs"]["input_ids"].device.type == "cpu"
    with pytest.raises(TypeError, match="cannot encode"):
        encode(["not", "a", "dataset"], tiny_tokenizer())


def test_batches_by_length_pad_less_and_over_batches_restores_the_order():
    """by_length visits every example once, sorted by length (each batch pads to its own longest);
    over_batches puts the outputs back in task order; shuffle and by_length exclude each other."""
    from bayes_lora.data import EncodedClassification, TextClassificationData
    from bayes_lora.types import over_batches

    texts, labels = sentiment_texts(40)
    texts = [" ".join([t] * (1 + i % 3)) for i, t in enumerate(texts)]  # 5, 10 or 15 words
    data = TextClassificationData("toy", tuple(texts), tuple(labels), 2)
    task = EncodedClassification.from_data(data, tiny_tokenizer(), max_length=24)
    lengths = task.example_lengths()
    assert lengths.shape == (40,) and int(lengths.min()) >= 1 and len(set(lengths.tolist())) > 1
    seen, padded_sorted, padded_order = [], 0, 0
    for b in task.batches(6, by_length=True):
        seen += b["index"].tolist()
        assert b["inputs"]["attention_mask"].shape[1] == int(lengths[b["index"]].max())
        padded_sorted += b["inputs"]["attention_mask"].numel()
    assert sorted(seen) == list(range(40)) and lengths[seen].tolist() == sorted(lengths.tolist())
    padded_order = sum(b["inputs"]["attention_mask"].numel() for b in task.batches(6))
    assert padded_sorted < padded_order
    ids = over_batches(task, 6, lambda b: b["index"].float()[:, None] * torch.ones(1, 3))
    assert torch.equal(ids[:, 0], torch.arange(40).float()) and ids.shape == (40, 3)
    stacked = over_batches(task, 6, lambda b: b["labels"][None].expand(2, -1), dim=1)
    assert torch.equal(stacked, task.labels[None].expand(2, -1))
    with pytest.raises(ValueError, match="exclude each other"):
        next(task.batches(6, shuffle=True, by_length=True))
