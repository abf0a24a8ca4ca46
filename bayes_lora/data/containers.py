"""Immutable, validated containers for the data sets, and deterministic subsampling."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["MultipleChoiceData", "TextClassificationData", "check_range", "subsample_indices"]


def _as_int_tuple(values: Sequence[Any], what: str, where: str) -> tuple[int, ...]:
    """Convert integer-like values (ints, numpy ints, 0-d tensors) to a tuple of ``int``."""
    out = []
    for row, value in enumerate(values):
        try:
            out.append(operator.index(value))
        except TypeError:
            raise ValueError(
                f"{what} {value!r} at row {row} of {where} is not an integer"
            ) from None
    return tuple(out)


def check_range(values: Sequence[int], high: int, what: str, where: str) -> None:
    """Raise a ``ValueError`` naming the first value outside ``[0, high)`` and its row."""
    for row, value in enumerate(values):
        if not 0 <= value < high:
            raise ValueError(
                f"{what} {value} at row {row} of {where} is out of range: "
                f"allowed values are 0..{high - 1}"
            )


@dataclass(frozen=True)
class TextClassificationData:
    """A labelled text classification data set.

    Attributes
    ----------
    name : str
        Short task name, e.g. ``"sst2"``.
    texts : tuple of str
        The input texts.
    labels : tuple of int
        The class of every text, each in ``0..num_classes-1``.
    num_classes : int
        Number of classes (at least 2).
    text_pairs : tuple of str, optional
        The second text of every example of a text-pair task (given to the tokenizer as a pair).
    label_names : tuple of str
        The class names in id order (empty: unnamed).
    """

    name: str
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    num_classes: int
    text_pairs: tuple[str, ...] | None = None
    label_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        where = f"dataset {self.name}"
        object.__setattr__(self, "texts", tuple(str(t) for t in self.texts))
        object.__setattr__(self, "label_names", tuple(str(n) for n in self.label_names))
        if self.text_pairs is not None:
            object.__setattr__(self, "text_pairs", tuple(str(t) for t in self.text_pairs))
            if len(self.text_pairs) != len(self.texts):
                raise ValueError(
                    f"dataset {self.name} has {len(self.texts)} texts but {len(self.text_pairs)} "
                    "second texts of pairs"
                )
        if self.label_names and len(self.label_names) != self.num_classes:
            raise ValueError(
                f"dataset {self.name} names {len(self.label_names)} classes but has "
                f"num_classes = {self.num_classes}"
            )
        object.__setattr__(self, "labels", _as_int_tuple(self.labels, "label", where))
        if not self.texts:
            raise ValueError(f"dataset {self.name} is empty (it has no texts)")
        if len(self.texts) != len(self.labels):
            raise ValueError(
                f"dataset {self.name} has {len(self.texts)} texts but {len(self.labels)} labels"
            )
        if self.num_classes < 2:
            raise ValueError(
                f"dataset {self.name}: num_classes must be >= 2, got {self.num_classes}"
            )
        check_range(self.labels, self.num_classes, "label", where)

    def __len__(self) -> int:
        return len(self.texts)


@dataclass(frozen=True)
class MultipleChoiceData:
    """A multiple-choice question answering data set with a fixed number of choices.

    Attributes
    ----------
    name : str
        Short task name, e.g. ``"openbookqa"``.
    questions : tuple of str
        The question stems.
    choices : tuple of tuple of str
        The ``num_choices`` candidate answers of every question.
    answers : tuple of int
        Index of the correct choice of every question, each in ``0..num_choices-1``.
    num_choices : int
        Number of choices per question (at least 2).
    contexts : tuple of str, optional
        A passage read before every question (``None``: no passage).
    """

    name: str
    questions: tuple[str, ...]
    choices: tuple[tuple[str, ...], ...]
    answers: tuple[int, ...]
    num_choices: int
    contexts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        where = f"dataset {self.name}"
        object.__setattr__(self, "questions", tuple(str(q) for q in self.questions))
        if self.contexts is not None:
            object.__setattr__(self, "contexts", tuple(str(c) for c in self.contexts))
            if len(self.contexts) != len(self.questions):
                raise ValueError(
                    f"dataset {self.name} has {len(self.questions)} questions but "
                    f"{len(self.contexts)} contexts"
                )
        object.__setattr__(self, "choices", tuple(tuple(str(c) for c in cs) for cs in self.choices))
        object.__setattr__(self, "answers", _as_int_tuple(self.answers, "answer", where))
        if not self.questions:
            raise ValueError(f"dataset {self.name} is empty (it has no questions)")
        if not len(self.questions) == len(self.choices) == len(self.answers):
            raise ValueError(
                f"dataset {self.name} has {len(self.questions)} questions, "
                f"{len(self.choices)} choice lists and {len(self.answers)} answers"
            )
        if self.num_choices < 2:
            raise ValueError(
                f"dataset {self.name}: num_choices must be >= 2, got {self.num_choices}"
            )
        for row, cs in enumerate(self.choices):
            if len(cs) != self.num_choices:
                raise ValueError(
                    f"question at row {row} of {where} has {len(cs)} choices, "
                    f"expected {self.num_choices}"
                )
        check_range(self.answers, self.num_choices, "answer", where)

    def __len__(self) -> int:
        return len(self.questions)


def subsample_indices(n: int, max_examples: int | None, seed: int = 0) -> list[int]:
    """Indices of a deterministic random subset of ``range(n)``, in ascending order.

    Parameters
    ----------
    n : int
        Number of available examples.
    max_examples : int or None
        Size of the subset; ``None`` or a value ``>= n`` keeps everything.
    seed : int
        Seed of the ``torch.Generator`` that draws the subset (via ``randperm``).

    Returns
    -------
    list of int
        ``min(n, max_examples)`` distinct indices, sorted, so kept examples stay in file order.
    """
    if max_examples is None or max_examples >= n:
        return list(range(n))
    if max_examples < 1:
        raise ValueError(f"max_examples must be >= 1 or None, got {max_examples}")
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[:max_examples].tolist())
