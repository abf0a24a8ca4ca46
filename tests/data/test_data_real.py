"""The real benchmark files in ../shared/data (skipped cleanly when absent)."""

import pytest

from bayes_lora.data import load_multiple_choice, load_sst2, resolve_data_dir

pytestmark = pytest.mark.real


def real_file(relative):
    """Path of a real data file, or skip the test saying where it was looked for."""
    try:
        data_dir = resolve_data_dir()
    except FileNotFoundError as err:
        pytest.skip(f"real data folder not found: {err}")
    path = data_dir / relative
    if not path.is_file():
        pytest.skip(f"real data file {path} is absent (set BAYES_LORA_DATA_DIR to the data folder)")
    return data_dir


def test_sst2_test_split():
    data = load_sst2("test", data_dir=real_file("sst2/test.tsv"))
    assert len(data) == 872 and data.num_classes == 2
    assert set(data.labels) == {0, 1}


def test_sst2_train_filtered_subsample():
    data_dir = real_file("sst2/train.tsv")
    data = load_sst2("train", data_dir=data_dir, min_words=5, max_examples=2000)
    assert len(data) == 2000
    assert all(len(text.split()) >= 5 for text in data.texts)
    assert load_sst2("train", data_dir=data_dir, max_examples=2000) == data  # min_words=5 default


def test_openbookqa_test_split():
    data = load_multiple_choice("openbookqa", "test", data_dir=real_file("openbookqa/test.jsonl"))
    assert len(data) == 500 and data.num_choices == 4
    assert set(data.answers) <= {0, 1, 2, 3}
    assert all(len(choices) == 4 for choices in data.choices)
