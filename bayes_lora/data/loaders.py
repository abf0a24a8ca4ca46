"""Loading the benchmark data sets into small, validated, immutable containers.

Two kinds of task are supported:

* text classification (:class:`TextClassificationData`), from TSV, CSV or JSON-lines files,
  with :func:`load_sst2` for the SST-2 files in the shared data folder;
* multiple-choice question answering (:class:`MultipleChoiceData`), from ARC-style JSON lines,
  with :func:`load_multiple_choice` for ARC-Easy, ARC-Challenge and OpenBookQA.

Every loader can subsample deterministically (``max_examples`` and ``seed``); the kept examples
stay in file order. Use :func:`load_task_data` to load any known task by name.
"""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from bayes_lora.data.arc import load_arc_jsonl
from bayes_lora.data.containers import (
    MultipleChoiceData,
    TextClassificationData,
    subsample_indices,
)
from bayes_lora.data.readers import ColumnNotFoundError
from bayes_lora.data.tasks import BUILTIN_TASKS, SPLITS, TaskSpec, get_task

logger = logging.getLogger(__name__)

#: Names of the built-in multiple-choice tasks stored in the shared data folder.
MC_TASKS: tuple[str, ...] = tuple(n for n, t in BUILTIN_TASKS.items() if t.kind == "multiple_choice")
#: Names of the built-in tasks (:func:`~bayes_lora.data.tasks.register_task` adds more).
TASKS: tuple[str, ...] = tuple(BUILTIN_TASKS)

__all__ = [
    "MC_TASKS",
    "SPLITS",
    "TASKS",
    "ColumnNotFoundError",
    "MultipleChoiceData",
    "TextClassificationData",
    "load_arc_jsonl",
    "load_multiple_choice",
    "load_sst2",
    "load_task_data",
    "load_text_classification",
    "subsample_indices",
]


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")


# --------------------------------------------------------------------------- text classification


def load_text_classification(
    path: str | os.PathLike[str],
    *,
    text_column: str = "sentence",
    label_column: str = "label",
    name: str | None = None,
    num_classes: int | None = None,
    min_words: int = 0,
    max_examples: int | None = None,
    seed: int = 0,
) -> TextClassificationData:
    """Load a labelled text classification file.

    Parameters
    ----------
    path : str or path-like
        A ``.tsv`` (read with ``quoting=3``, i.e. no quote handling), ``.csv``, or
        ``.jsonl``/``.json`` (JSON lines, or one JSON array of objects) file.
    text_column, label_column : str
        Names of the text and label columns (keys, or dotted paths, for JSON).
    name : str, optional
        Task name; defaults to the file's stem.
    num_classes : int, optional
        Number of classes of integer labels; defaults to ``max(label) + 1`` over the whole file
        (at least 2). String labels are class names: the sorted distinct values (see
        :class:`~bayes_lora.data.tasks.TaskSpec`, which also describes pairs and other splits).
    min_words : int
        Keep only texts with at least this many whitespace-separated words.
    max_examples : int, optional
        Keep a seeded random subset of at most this many examples (in file order).
    seed : int
        Seed of the subset.

    Returns
    -------
    TextClassificationData

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ColumnNotFoundError
        (a ``ValueError`` and ``KeyError``) if a column is missing; lists the available ones.
    ValueError
        For an unknown suffix, an out-of-range label, or when nothing is left after filtering;
        the message names the file, the row and the field.
    """
    path = Path(path)
    spec = TaskSpec(name=name or path.stem, train=str(path.absolute()), text=text_column,
                    label=label_column, min_words=min_words)
    classes = None if num_classes is None else tuple(str(i) for i in range(num_classes))
    data = spec.load("train", max_examples=max_examples, seed=seed, classes=classes)
    assert isinstance(data, TextClassificationData)
    return data


class _Default:
    """Sentinel type for "use the split-dependent default"."""

    def __repr__(self) -> str:
        return "<default>"


_DEFAULT = _Default()


def load_sst2(
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    min_words: int | _Default = _DEFAULT,
    max_examples: int | None = None,
    seed: int = 0,
) -> TextClassificationData:
    """Load a split of SST-2 (binary sentiment): the built-in task ``"sst2"``.

    Parameters
    ----------
    split : {"train", "dev", "test"}
        ``train``/``dev`` re-divide the GLUE training set; ``test`` is the labelled GLUE dev set.
    data_dir : str or path-like, optional
        The shared data folder; see :func:`~bayes_lora.data.paths.resolve_data_dir`.
    min_words : int, optional
        Minimum number of words per text; defaults to 5 for ``train`` (which holds many short
        phrases) and 0 otherwise.
    max_examples : int, optional
        Seeded subsample size.
    seed : int
        Seed of the subsample.

    Returns
    -------
    TextClassificationData
        Named ``"sst2"``, with 2 classes (0 = negative, 1 = positive).

    Raises
    ------
    FileNotFoundError
        If the file is missing and the Hugging Face ``datasets`` source is unavailable
        (not installed, ``HF_HUB_OFFLINE=1``, no hub equivalent of the split, or it failed).
    """
    _check_split(split)
    words = None if isinstance(min_words, _Default) else min_words
    data = get_task("sst2").load(split, data_dir=data_dir, min_words=words,
                                 max_examples=max_examples, seed=seed)
    assert isinstance(data, TextClassificationData)
    return data


def load_multiple_choice(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    max_examples: int | None = None,
    seed: int = 0,
    num_choices: int = 4,
) -> MultipleChoiceData:
    """Load a split of a registered multiple-choice task (:data:`MC_TASKS` and any registered
    with :func:`~bayes_lora.data.tasks.register_task`), keeping questions with ``num_choices``
    choices."""
    spec = get_task(name) if name in BUILTIN_TASKS else None
    if spec is None or spec.kind != "multiple_choice":
        known = [n for n, t in BUILTIN_TASKS.items() if t.kind == "multiple_choice"]
        raise ValueError(f"unknown multiple-choice task {name!r}; known: {', '.join(known)}")
    _check_split(split)
    data = replace(spec, num_choices=num_choices).load(split, data_dir=data_dir,
                                                       max_examples=max_examples, seed=seed)
    assert isinstance(data, MultipleChoiceData)
    return data


def load_task_data(
    name: str, split: str = "train", **kwargs: Any
) -> TextClassificationData | MultipleChoiceData:
    """Load a registered task by name (:func:`~bayes_lora.data.tasks.task_names`).

    Keyword arguments go to :meth:`TaskSpec.load <bayes_lora.data.tasks.TaskSpec.load>`;
    ``num_choices`` (multiple choice) keeps only questions with that many choices.
    """
    spec = get_task(name)
    if "num_choices" in kwargs:
        spec = replace(spec, num_choices=kwargs.pop("num_choices"))
    return spec.load(split, **kwargs)
