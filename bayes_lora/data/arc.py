"""Reading ARC-style multiple-choice JSON lines (ARC-Easy/Challenge, OpenBookQA)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from bayes_lora.data.containers import MultipleChoiceData, subsample_indices
from bayes_lora.data.readers import read_json_records

logger = logging.getLogger(__name__)

__all__ = ["load_arc_jsonl"]


def _parse_arc_record(record: Any, row: int, source: str) -> tuple[str, tuple[str, ...], int]:
    """Question stem, choice texts and answer index of one ARC-style record."""
    try:
        stem = record["question"]["stem"]
        raw_choices = record["question"]["choices"]
        texts = tuple(str(c["text"]) for c in raw_choices)
        labels = [str(c["label"]).strip() for c in raw_choices]
        key = str(record["answerKey"]).strip()
    except (KeyError, TypeError) as err:
        raise ValueError(
            f"row {row} of {source} is not an ARC record "
            '{"question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}: '
            f"missing or malformed {err}"
        ) from None
    if key not in labels:
        rid = record.get("id", "?")
        raise ValueError(
            f"row {row} (id {rid}) of {source}: answerKey {key!r} is not one of the "
            f"choice labels {labels}"
        )
    return str(stem), texts, labels.index(key)


def load_arc_jsonl(
    path: str | os.PathLike[str],
    *,
    name: str | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    num_choices: int = 4,
) -> MultipleChoiceData:
    """Load an ARC-style JSON-lines file of multiple-choice questions.

    Each line is ``{"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}``;
    the answer is the position of the choice whose label equals ``answerKey`` (labels may be
    ``A``-``D`` or ``1``-``4``).

    Parameters
    ----------
    path : str or path-like
        The ``.jsonl`` file.
    name : str, optional
        Task name; defaults to the file's stem.
    max_examples : int, optional
        Seeded subsample size (drawn after dropping questions with another number of choices).
    seed : int
        Seed of the subsample.
    num_choices : int
        Keep only questions with exactly this many choices (the others are dropped and counted
        in a ``logging`` debug message).

    Returns
    -------
    MultipleChoiceData

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For a malformed record, an ``answerKey`` matching no label, or when no question is left.
    """
    path = Path(path)
    name = name or path.stem
    records = read_json_records(path)
    questions, choices, answers = [], [], []
    for row, record in enumerate(records):
        stem, texts, answer = _parse_arc_record(record, row, str(path))
        if len(texts) == num_choices:
            questions.append(stem)
            choices.append(texts)
            answers.append(answer)
    dropped = len(records) - len(questions)
    if dropped:
        logger.debug(
            "%s: dropped %d of %d questions whose number of choices is not %d",
            path,
            dropped,
            len(records),
            num_choices,
        )
    if not questions:
        raise ValueError(
            f"dataset {name} is empty: none of the {len(records)} questions in {path} has "
            f"exactly num_choices={num_choices} choices"
        )
    keep = subsample_indices(len(questions), max_examples, seed)
    return MultipleChoiceData(
        name=name,
        questions=tuple(questions[i] for i in keep),
        choices=tuple(choices[i] for i in keep),
        answers=tuple(answers[i] for i in keep),
        num_choices=num_choices,
    )
