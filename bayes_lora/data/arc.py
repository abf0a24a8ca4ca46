"""Reading ARC-style multiple-choice JSON lines (ARC-Easy/Challenge, OpenBookQA): the registered
ARC description (:func:`~bayes_lora.data.tasks.arc_spec`) pointed at one file."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from bayes_lora.data.containers import MultipleChoiceData
from bayes_lora.data.tasks import arc_spec

__all__ = ["load_arc_jsonl"]


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
        in a ``logging`` info message).

    Returns
    -------
    MultipleChoiceData

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For a malformed record, an ``answerKey`` matching no label, or when no question is left;
        the message names the file, the row and the field.
    """
    path = Path(path)
    spec = replace(arc_spec(name or path.stem), train=str(path.absolute()), dev="", test="",
                   num_choices=num_choices)
    data = spec.load("train", max_examples=max_examples, seed=seed)
    assert isinstance(data, MultipleChoiceData)
    return data
