"""ARC-style multiple-choice JSON lines: answer mapping, choice-count filter, errors."""

import json
import logging

import pytest

from bayes_lora.data import load_arc_jsonl, load_multiple_choice, load_task_data


def record(qid, labels, key, stem=None):
    choices = [{"text": f"{qid} choice {label}", "label": label} for label in labels]
    return {
        "id": qid,
        "question": {"stem": stem or f"stem {qid}", "choices": choices},
        "answerKey": key,
    }


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


def test_letter_and_number_labels_map_to_positions_and_odd_sizes_dropped(tmp_path, caplog):
    records = [
        record("q0", list("ABCD"), "C"),
        record("q1", list("1234"), "4"),
        record("q2", list("ABC"), "A"),  # 3 choices: dropped
        record("q3", list("ABCDE"), "E"),  # 5 choices: dropped
        record("q4", list("1234"), "1"),
        record("q5", list("ABCD"), "B"),
    ]
    path = write_jsonl(tmp_path / "arc.jsonl", records)
    with caplog.at_level(logging.DEBUG, logger="bayes_lora.data"):
        data = load_arc_jsonl(path)
    assert data.name == "arc" and data.num_choices == 4 and len(data) == 4
    assert data.questions == ("stem q0", "stem q1", "stem q4", "stem q5")
    assert data.answers == (2, 3, 0, 1)
    assert data.choices[1] == tuple(f"q1 choice {label}" for label in "1234")
    assert any("dropped 2 of 6" in r.getMessage() for r in caplog.records)


def test_num_choices_parameter_selects_other_sizes(tmp_path):
    path = write_jsonl(
        tmp_path / "arc.jsonl", [record("a", list("ABC"), "B"), record("b", list("ABCD"), "A")]
    )
    data = load_arc_jsonl(path, num_choices=3)
    assert len(data) == 1 and data.answers == (1,) and data.num_choices == 3
    with pytest.raises(ValueError, match="empty.*num_choices=5"):
        load_arc_jsonl(path, num_choices=5)


def test_answer_key_not_among_labels(tmp_path):
    path = write_jsonl(
        tmp_path / "arc.jsonl", [record("ok", list("ABCD"), "A"), record("bad", list("ABCD"), "5")]
    )
    with pytest.raises(
        ValueError, match=r"row 2, field 'answerKey': answer '5' matches no choice.*\['A', 'B', 'C', 'D'\]"
    ):
        load_arc_jsonl(path)


def test_malformed_record(tmp_path):
    path = write_jsonl(
        tmp_path / "arc.jsonl", [{"id": "x", "question": "no stem", "answerKey": "A"}]
    )
    with pytest.raises(ValueError, match=r"field 'question.stem' not found at .*arc\.jsonl, row 1"):
        load_arc_jsonl(path)


def test_seeded_subsample(tmp_path):
    path = write_jsonl(
        tmp_path / "arc.jsonl", [record(f"q{i:02d}", list("ABCD"), "A") for i in range(30)]
    )
    a, b = (load_arc_jsonl(path, max_examples=7, seed=0) for _ in range(2))
    c = load_arc_jsonl(path, max_examples=7, seed=1)
    assert a == b and len(a) == 7 and a.questions != c.questions
    assert list(a.questions) == sorted(a.questions)


def test_load_multiple_choice_reads_task_folder(tmp_path):
    write_jsonl(tmp_path / "openbookqa" / "dev.jsonl", [record("q", list("ABCD"), "D")])
    data = load_multiple_choice("openbookqa", "dev", data_dir=tmp_path)
    assert data.name == "openbookqa" and data.answers == (3,)
    assert load_task_data("openbookqa", "dev", data_dir=tmp_path) == data
    with pytest.raises(FileNotFoundError, match=r"arc_easy.*train\.jsonl"):
        load_multiple_choice("arc_easy", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown multiple-choice task 'sst2'"):
        load_multiple_choice("sst2", data_dir=tmp_path)
