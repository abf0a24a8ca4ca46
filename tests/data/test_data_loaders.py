"""Loading text classification files (TSV/CSV/JSONL), SST-2 and their error cases."""

import json
import sys
import types

import pytest
import torch

from bayes_lora.data import (
    ColumnNotFoundError,
    MultipleChoiceData,
    TextClassificationData,
    load_sst2,
    load_task_data,
    load_text_classification,
    subsample_indices,
)


def write_tsv(path, rows, header="sentence\tlabel"):
    path.write_text("\n".join([header, *(f"{t}\t{y}" for t, y in rows)]) + "\n", encoding="utf-8")
    return path


def numbered_rows(n):
    """Texts "t000 w w w w" .. with alternating labels, so file order is visible in the text."""
    return [(f"t{i:03d} w w w w", i % 2) for i in range(n)]


# --------------------------------------------------------------------------- formats


def test_tsv_keeps_quotes_and_na_like_texts(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", [('it \'s "great" fun', 1), ("NA", 0), ("null", 1)])
    data = load_text_classification(path)
    assert data.texts == ('it \'s "great" fun', "NA", "null")
    assert data.labels == (1, 0, 1)
    assert data.num_classes == 2 and data.name == "x" and len(data) == 3


def test_csv_with_custom_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('id,review,stars\n1,"good, really",2\n2,bad,0\n3,fine,1\n')
    data = load_text_classification(path, text_column="review", label_column="stars", name="rv")
    assert data.texts == ("good, really", "bad", "fine")
    assert data.labels == (2, 0, 1)
    assert data.num_classes == 3 and data.name == "rv"


def test_jsonl_and_json_array(tmp_path):
    records = [{"sentence": "a b", "label": 1}, {"sentence": "c", "label": 0}]
    jsonl = tmp_path / "x.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    array = tmp_path / "y.json"
    array.write_text(json.dumps(records))
    for path in (jsonl, array):
        data = load_text_classification(path)
        assert data.texts == ("a b", "c") and data.labels == (1, 0)


def test_num_classes_default_and_explicit(tmp_path):
    assert load_text_classification(write_tsv(tmp_path / "a.tsv", [("x", 0)])).num_classes == 2
    assert load_text_classification(write_tsv(tmp_path / "b.tsv", [("x", 3)])).num_classes == 4
    path = write_tsv(tmp_path / "c.tsv", [("x", 1)])
    assert load_text_classification(path, num_classes=5).num_classes == 5


def test_min_words_filter(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", [("one", 0), ("one two three", 1), ("a b c d", 0)])
    data = load_text_classification(path, min_words=3)
    assert data.texts == ("one two three", "a b c d") and data.labels == (1, 0)


# --------------------------------------------------------------------------- errors


def test_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.tsv"):
        load_text_classification(tmp_path / "nope.tsv")


def test_missing_column_lists_available_columns(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", [("x", 0)])
    with pytest.raises(ColumnNotFoundError) as info:
        load_text_classification(path, text_column="review")
    assert isinstance(info.value, ValueError) and isinstance(info.value, KeyError)
    message = str(info.value)
    assert "'review'" in message and "'sentence'" in message and "'label'" in message


def test_label_out_of_range_names_label_row_and_range(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", [("a", 0), ("b", 2)])
    with pytest.raises(ValueError, match=r"row 2 \(line 3\), field 'label': label 2 is out of range.*0\.\.1"):
        load_text_classification(path, num_classes=2)


def test_negative_label_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"row 1 \(line 2\), field 'label': negative label '-1'"):
        load_text_classification(write_tsv(tmp_path / "x.tsv", [("a", -1)]))


def test_string_labels_are_class_names_and_integer_classes_take_no_strings(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", [("a", "pos"), ("b", "neg"), ("c", "pos")])
    data = load_text_classification(path)
    assert data.label_names == ("neg", "pos") and data.labels == (1, 0, 1)
    path = write_tsv(tmp_path / "y.tsv", [("a", 0), ("b", "pos")])
    with pytest.raises(ValueError, match=r"row 2 \(line 3\), field 'label': label 'pos' is not an integer"):
        load_text_classification(path, num_classes=2)


def test_empty_after_min_words_filter(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", [("short", 0), ("also short", 1)])
    with pytest.raises(ValueError, match="empty after filtering.*min_words=5"):
        load_text_classification(path, min_words=5)


def test_header_only_and_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_text_classification(write_tsv(tmp_path / "x.tsv", []))
    (tmp_path / "x.txt").write_text("a\n")
    with pytest.raises(ValueError, match="unsupported suffix '.txt'"):
        load_text_classification(tmp_path / "x.txt")


def test_invalid_json_line_names_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"sentence": "a", "label": 0}\n{oops\n')
    with pytest.raises(ValueError, match=r"x\.jsonl:2: invalid JSON"):
        load_text_classification(path)


def test_containers_validate():
    with pytest.raises(ValueError, match="dataset toy is empty"):
        TextClassificationData("toy", (), (), 2)
    with pytest.raises(ValueError, match="label 3 at row 1 of dataset toy .* 0..2"):
        TextClassificationData("toy", ("a", "b"), (0, 3), 3)
    with pytest.raises(ValueError, match="dataset mc is empty"):
        MultipleChoiceData("mc", (), (), (), 4)
    with pytest.raises(ValueError, match="row 0 .* has 3 choices, expected 4"):
        MultipleChoiceData("mc", ("q",), (("a", "b", "c"),), (0,), 4)
    with pytest.raises(ValueError, match="answer 4 at row 0 .* 0..3"):
        MultipleChoiceData("mc", ("q",), (("a", "b", "c", "d"),), (4,), 4)
    data = TextClassificationData("toy", ["a"], [torch.tensor(1)], 2)  # lists/0-d tensors accepted
    assert data.texts == ("a",) and data.labels == (1,) and isinstance(data.labels[0], int)


# --------------------------------------------------------------------------- subsampling


def test_seeded_subsampling_is_deterministic_sorted_and_seed_dependent(tmp_path):
    path = write_tsv(tmp_path / "x.tsv", numbered_rows(100))
    a = load_text_classification(path, max_examples=10, seed=3)
    b = load_text_classification(path, max_examples=10, seed=3)
    c = load_text_classification(path, max_examples=10, seed=4)
    assert a == b and len(a) == 10
    assert a.texts != c.texts
    assert list(a.texts) == sorted(a.texts)  # file order kept
    expected = sorted(torch.randperm(100, generator=torch.Generator().manual_seed(3))[:10].tolist())
    assert a.texts == tuple(f"t{i:03d} w w w w" for i in expected)
    assert a.labels == tuple(i % 2 for i in expected)


def test_subsample_after_filter_and_no_op_when_large(tmp_path):
    rows = numbered_rows(20) + [("x", 0)] * 20
    path = write_tsv(tmp_path / "x.tsv", rows)
    data = load_text_classification(path, min_words=5, max_examples=8)
    assert len(data) == 8 and all(len(t.split()) >= 5 for t in data.texts)
    assert len(load_text_classification(path, max_examples=1000)) == 40
    assert subsample_indices(5, None) == subsample_indices(5, 5) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="max_examples"):
        subsample_indices(5, 0)


# --------------------------------------------------------------------------- SST-2 and dispatch


@pytest.fixture
def sst2_dir(tmp_path):
    (tmp_path / "sst2").mkdir()
    rows = [("too short", 0), ("this one has five words", 1), ("a b c d e f", 0)]
    for split in ("train", "dev", "test"):
        write_tsv(tmp_path / "sst2" / f"{split}.tsv", rows)
    return tmp_path


def test_load_sst2_min_words_defaults_per_split(sst2_dir):
    assert len(load_sst2("train", data_dir=sst2_dir)) == 2  # min_words=5 by default
    assert len(load_sst2("train", data_dir=sst2_dir, min_words=0)) == 3
    assert len(load_sst2("test", data_dir=sst2_dir)) == 3
    data = load_task_data("sst2", "dev", data_dir=sst2_dir, max_examples=2, seed=1)
    assert data.name == "sst2" and data.num_classes == 2 and len(data) == 2


def test_unknown_split_and_task(sst2_dir):
    with pytest.raises(ValueError, match="unknown split 'valid'.*train, dev, test"):
        load_sst2("valid", data_dir=sst2_dir)
    with pytest.raises(ValueError, match="unknown task 'mnli'.*sst2.*openbookqa"):
        load_task_data("mnli", "train")


def fake_datasets(monkeypatch, load_dataset):
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))


def test_sst2_hub_fallback_used_when_file_missing(monkeypatch, tmp_path):
    calls = []

    def load_dataset(*args, split):
        calls.append((args, split))
        return {"sentence": ["one two three four five", "no"], "label": [1, 0]}

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake_datasets(monkeypatch, load_dataset)
    data = load_sst2("train", data_dir=tmp_path)
    assert calls == [(("glue", "sst2"), "train")]
    assert data.texts == ("one two three four five",) and data.labels == (1,)
    assert len(load_sst2("test", data_dir=tmp_path)) == 2
    assert calls[-1][1] == "validation"


def test_sst2_hub_fallback_failures_become_file_not_found(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    fake_datasets(monkeypatch, broken)
    with pytest.raises(FileNotFoundError, match="sst2.*ConnectionError: no network"):
        load_sst2("train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="no hub equivalent"):
        load_sst2("dev", data_dir=tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_sst2("train", data_dir=tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(FileNotFoundError, match=r"train\.tsv.*`datasets` package"):
        load_sst2("train", data_dir=tmp_path)
