"""Tasks declared, not hard-coded: a :class:`TaskSpec` says where a task's files are and which
fields hold what; :func:`get_task` knows the built-in ones by name.

A task is one of three kinds:

* ``"classification"``: one text field (``text = "sentence"``) or a pair of them
  (``text = ["sentence1", "sentence2"]``, given to the tokenizer as a pair) and a label field.
  Integer labels are class ids; string (or boolean) labels are class names. The class names in
  id order come from ``labels`` when given, otherwise from the sorted distinct values of the
  *training* split — so the ids never depend on which split is loaded first.
* ``"multiple_choice"``: a question, its choices and the answer, optionally a context passage.
  Choices are a list field (of strings, or of objects whose ``choice_text`` / ``choice_label``
  keys hold the text and the label, as in ARC) or one column per choice
  (``choices = ["ending0", "ending1"]``); with ``choices = ""`` every question is a yes/no
  question whose answer (a boolean, ``yes``/``no``, ``true``/``false`` or 0/1) picks one of
  ``yes_no`` (BoolQ as the papers score it). The answer is a choice label, an index (0-based,
  or ``answer_base``), a letter, or the text of the right choice.
* ``"texts"``: unlabelled texts (an out-of-distribution set).

Fields of JSON records may be nested: ``question = "question.stem"``. Delimited files without a
header name their fields with ``columns``. Split paths are relative to the data folder
(``data_dir`` / ``--data-dir`` / ``$BAYES_LORA_DATA_DIR`` / ``../shared/data``) unless absolute.
A Hugging Face ``datasets`` name (``hf_dataset``, ``hf_config``, ``hf_splits``) is a source only
when the spec names one and its file is absent.

>>> spec = TaskSpec(name="rte", train="rte/train.tsv", test="rte/test.tsv",
...                 text=("sentence1", "sentence2"))
>>> spec.pair, spec.kind
(True, 'classification')

Every bad row is a :class:`DataError` naming the file, the row and the field.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from bayes_lora.data.containers import MultipleChoiceData, TextClassificationData, subsample_indices
from bayes_lora.data.paths import resolve_data_dir
from bayes_lora.data.readers import ColumnNotFoundError, read_json_records, read_table

logger = logging.getLogger(__name__)

__all__ = [
    "BUILTIN_TASKS",
    "KINDS",
    "SPLITS",
    "DataError",
    "TaskSpec",
    "arc_spec",
    "as_ood_texts",
    "get_task",
    "load_task",
    "register_task",
    "task_names",
]

#: The kinds of task a :class:`TaskSpec` describes.
KINDS: tuple[str, ...] = ("classification", "multiple_choice", "texts")
#: The splits a task may have.
SPLITS: tuple[str, ...] = ("train", "dev", "test")


class DataError(ValueError):
    """A data file's contents cannot be used; the message names the file, row and field."""


def _as_fields(value: Any, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, Sequence) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise ValueError(f"{what} must be a field name or a list of field names, got {value!r}")


@dataclass(frozen=True)
class TaskSpec:
    """A task described by its files and fields (see the module docstring).

    Attributes
    ----------
    name : str
        Short name (results, reports and file names use it).
    kind : {"classification", "multiple_choice", "texts"}
    train, dev, test : str
        The split files (``.tsv``, ``.csv``, ``.jsonl``, ``.json`` or ``.parquet``), relative to
        the data folder unless absolute; ``""`` when the task has no such split.
    columns : tuple of str
        Field names of a delimited file without a header row; empty: the first row names them.
    text : str or tuple of str
        The text field, or two fields for a text pair (classification and texts).
    label : str
        The label field (classification).
    labels : tuple of str
        Class names in class-id order; empty: integer labels are ids, string labels take the
        sorted distinct values of the training split.
    min_words : int
        Keep only training texts of at least this many words (the first text of a pair).
    question, context : str
        The question field and an optional passage field (multiple choice; ``context = ""``:
        none).
    choices : str or tuple of str
        A list field, or one field per choice; ``""``: yes/no questions.
    choice_text, choice_label : str
        Keys of a choice object's text and label, when the choices are objects.
    answer : str
        The answer field.
    answer_base : int
        The index of the first choice when answers are integers (0 or 1).
    yes_no : tuple of str
        The two choices a yes/no question is scored on (the "no" one first).
    num_choices : int
        Keep only questions with exactly this many choices (the others are dropped and logged);
        0: every question must have as many choices as the first.
    hf_dataset, hf_config : str
        A Hugging Face ``datasets`` source, used for a split whose file is not there.
    hf_splits : dict of str to str
        The hub split of each of our splits (default: the same name).
    """

    name: str
    kind: str = "classification"
    train: str = ""
    dev: str = ""
    test: str = ""
    columns: tuple[str, ...] = ()
    text: str | tuple[str, ...] = "sentence"
    label: str = "label"
    labels: tuple[str, ...] = ()
    min_words: int = 0
    question: str = "question"
    context: str = ""
    choices: str | tuple[str, ...] = "choices"
    choice_text: str = "text"
    choice_label: str = "label"
    answer: str = "answer"
    answer_base: int = 0
    yes_no: tuple[str, str] = ("no", "yes")
    num_choices: int = 0
    hf_dataset: str = ""
    hf_config: str = ""
    hf_splits: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.name):
            raise ValueError(
                f"name must be letters, digits, '_', '-' or '.', got {self.name!r}"
            )
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        text = _as_fields(self.text, "text")
        if not 1 <= len(text) <= 2:
            raise ValueError(f"text must name one field or a pair of two, got {list(text)}")
        set_("text", text[0] if len(text) == 1 else text)
        set_("columns", _as_fields(self.columns, "columns"))
        set_("labels", tuple(str(v) for v in self.labels))
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be distinct, got {list(self.labels)}")
        if self.labels and len(self.labels) < 2:
            raise ValueError(f"labels must name at least two classes, got {list(self.labels)}")
        choices = _as_fields(self.choices, "choices")
        set_("choices", choices[0] if len(choices) == 1 else (choices or ""))  # "": yes/no
        if isinstance(self.choices, tuple) and len(self.choices) < 2:
            raise ValueError(f"choices must name a list field or at least two fields, got {choices}")
        yes_no = tuple(str(v) for v in self.yes_no)
        if len(yes_no) != 2 or not all(yes_no) or yes_no[0] == yes_no[1]:
            raise ValueError(f"yes_no must be two distinct strings, got {list(self.yes_no)}")
        set_("yes_no", yes_no)
        for key in ("min_words", "num_choices"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise ValueError(f"{key} must be an integer ≥ 0, got {getattr(self, key)!r}")
        if self.num_choices == 1:
            raise ValueError("num_choices must be 0 (all alike) or ≥ 2, got 1")
        if self.answer_base not in (0, 1):
            raise ValueError(f"answer_base must be 0 or 1, got {self.answer_base!r}")
        set_("hf_splits", dict(self.hf_splits))
        for split in self.hf_splits:
            if split not in SPLITS:
                raise ValueError(f"hf_splits: unknown split {split!r}; splits are {list(SPLITS)}")
        if self.columns:
            for key in self._fields_read():
                if key.split(".")[0] not in self.columns:
                    raise ValueError(
                        f"field {key!r} is not among columns = {list(self.columns)}"
                    )
        if not (self.train or self.dev or self.test or self.hf_dataset):
            raise ValueError(f"task {self.name!r} names no file: set train, dev and/or test")

    # ------------------------------------------------------------------ description ------------
    @property
    def pair(self) -> bool:
        """Whether the inputs are text pairs."""
        return isinstance(self.text, tuple)

    @property
    def text_fields(self) -> tuple[str, ...]:
        return self.text if isinstance(self.text, tuple) else (self.text,)

    def _fields_read(self) -> tuple[str, ...]:
        if self.kind == "multiple_choice":
            out = [self.question, self.answer]
            out += [self.context] if self.context else []
            out += list(self.choices) if isinstance(self.choices, tuple) else (
                [self.choices] if self.choices else [])
            return tuple(out)
        if self.kind == "classification":
            return (*self.text_fields, self.label)
        return self.text_fields

    def to_dict(self) -> dict[str, Any]:
        """The description as plain values (what a run's config records); fields left at their
        defaults are left out, so it reads like what the user wrote."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
            if f.name == "name" or value != default:
                out[f.name] = list(value) if isinstance(value, tuple) else (
                    dict(value) if isinstance(value, Mapping) else value)
        return out

    @classmethod
    def from_dict(cls, table: Mapping[str, Any]) -> TaskSpec:
        """A spec from a config table; an unknown key is an error naming the allowed ones."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; allowed keys: {', '.join(allowed)}")
        if "name" not in table:
            raise ValueError("a task description needs a name")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in table.items()}
        return cls(**kw)

    def path(self, split: str, data_dir: str | os.PathLike[str] | None = None) -> Path | None:
        """The file of ``split`` (None when the task has none)."""
        _check_split(split)
        rel = getattr(self, split)
        if not rel:
            return None
        p = Path(rel).expanduser()
        return p if p.is_absolute() else _base_dir(data_dir) / p

    def has_split(self, split: str) -> bool:
        _check_split(split)
        return bool(getattr(self, split)) or (bool(self.hf_dataset) and split in self._hub_splits())

    def _hub_splits(self) -> dict[str, str]:
        return self.hf_splits or {s: s for s in SPLITS}

    # ------------------------------------------------------------------ loading ----------------
    def classes(self, data_dir: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
        """The class names in id order: ``labels``, else those of the training split (the sorted
        distinct string labels, or ``"0" … "C-1"`` for integer labels)."""
        if self.kind != "classification":
            raise ValueError(f"task {self.name} is {self.kind}: it has no classes")
        if self.labels:
            return self.labels
        source = "train" if self.has_split("train") else next(
            (s for s in SPLITS if self.has_split(s)), "train")
        table = self._read(source, data_dir)
        values = table.get(self.label)
        names = _class_names(values, table, self.label)
        if source != "train":
            logger.info("task %s has no training split: classes taken from its %s split", self.name, source)
        return names

    def load(
        self,
        split: str = "train",
        *,
        data_dir: str | os.PathLike[str] | None = None,
        max_examples: int | None = None,
        seed: int = 0,
        min_words: int | None = None,
        classes: Sequence[str] | None = None,
    ) -> TextClassificationData | MultipleChoiceData:
        """Load one split.

        Parameters
        ----------
        split : {"train", "dev", "test"}
        data_dir : path, optional
            The data folder relative paths start from (see :func:`resolve_data_dir`).
        max_examples, seed : int
            A seeded subsample, drawn after filtering, kept in file order.
        min_words : int, optional
            Overrides the spec's ``min_words``; by default it applies to ``train`` only.
        classes : sequence of str, optional
            The class names in id order (default :meth:`classes`); pass them when loading many
            splits to read the training labels once.

        Returns
        -------
        TextClassificationData (classification and texts; texts get label 0) or
        MultipleChoiceData.
        """
        _check_split(split)
        if min_words is None:
            min_words = self.min_words if split == "train" else 0
        table = self._read(split, data_dir)
        if self.kind == "multiple_choice":
            return self._multiple_choice(table, max_examples, seed)
        texts = [_texts(table, f) for f in self.text_fields]
        if self.kind == "texts":
            labels, names = [0] * len(texts[0]), ("text",)
            num_classes = 2
        else:
            names = tuple(classes) if classes is not None else self.classes(data_dir)
            labels = _label_ids(table, self.label, names, given=bool(self.labels))
            num_classes = max(2, len(names))
        keep = [i for i, t in enumerate(texts[0]) if len(t.split()) >= min_words]
        if not keep:
            raise DataError(
                f"task {self.name} is empty after filtering: none of the {len(texts[0])} texts of "
                f"{table.source} has at least min_words={min_words} words"
            )
        keep = [keep[i] for i in subsample_indices(len(keep), max_examples, seed)]
        return TextClassificationData(
            name=self.name,
            texts=tuple(texts[0][i] for i in keep),
            labels=tuple(labels[i] for i in keep),
            num_classes=num_classes,
            text_pairs=tuple(texts[1][i] for i in keep) if len(texts) == 2 else None,
            label_names=names if self.kind == "classification" else (),
        )

    def _read(self, split: str, data_dir) -> _Table:
        path = self.path(split, data_dir)
        if path is not None and path.is_file():
            return _Table.from_file(path, self.columns)
        if self.hf_dataset:
            return _Table.from_hub(self, split, reason=f"{split} file not found: {path}"
                                   if path is not None else f"task {self.name} names no {split} file")
        if path is None:
            raise FileNotFoundError(f"task {self.name} has no {split} split (set {split} = \"FILE\")")
        raise FileNotFoundError(
            f"data file not found: {path} (task {self.name}, split {split}; relative paths are read "
            "from the data folder: --data-dir / data_dir, $BAYES_LORA_DATA_DIR or ../shared/data)"
        )

    def _multiple_choice(self, table: _Table, max_examples: int | None, seed: int) -> MultipleChoiceData:
        questions = _texts(table, self.question)
        contexts = _texts(table, self.context) if self.context else None
        answers_raw = table.get(self.answer)
        choice_lists, choice_labels = self._choices(table)
        questions_kept, contexts_kept, choices_kept, answers = [], [], [], []
        expected = self.num_choices or len(choice_lists[0])
        dropped = 0
        for row, (texts, labels) in enumerate(zip(choice_lists, choice_labels)):
            answer = self._answer(answers_raw[row], texts, labels, table, row)
            if len(texts) != expected:
                if self.num_choices:
                    dropped += 1
                    continue
                raise DataError(
                    f"{table.where(row, self.choices)}: {len(texts)} choices, but row 1 has "
                    f"{expected}; every question needs the same number of choices (or set "
                    f"num_choices = {expected} to keep only questions with {expected})"
                )
            questions_kept.append(questions[row])
            choices_kept.append(tuple(texts))
            answers.append(answer)
            if contexts is not None:
                contexts_kept.append(contexts[row])
        if dropped:
            logger.info("%s: dropped %d of %d questions whose number of choices is not %d",
                        table.source, dropped, len(choice_lists), expected)
        if not questions_kept:
            raise DataError(
                f"task {self.name} is empty: none of the {len(choice_lists)} questions of "
                f"{table.source} has exactly num_choices={expected} choices"
            )
        keep = subsample_indices(len(questions_kept), max_examples, seed)
        return MultipleChoiceData(
            name=self.name,
            questions=tuple(questions_kept[i] for i in keep),
            choices=tuple(choices_kept[i] for i in keep),
            answers=tuple(answers[i] for i in keep),
            num_choices=expected,
            contexts=tuple(contexts_kept[i] for i in keep) if contexts is not None else None,
        )

    def _choices(self, table: _Table) -> tuple[list[list[str]], list[list[str] | None]]:
        n = len(table)
        if not self.choices:  # yes/no questions
            return [list(self.yes_no) for _ in range(n)], [None] * n
        if isinstance(self.choices, tuple):
            columns = [_texts(table, c) for c in self.choices]
            return [[col[row] for col in columns] for row in range(n)], [None] * n
        lists, labels = [], []
        for row, value in enumerate(table.get(self.choices)):
            if not isinstance(value, (list, tuple)) or not value:
                raise DataError(f"{table.where(row, self.choices)}: choices must be a non-empty list, "
                                f"got {value!r:.80}")
            texts, labs = [], []
            for j, choice in enumerate(value):
                if isinstance(choice, Mapping):
                    if self.choice_text not in choice:
                        raise DataError(f"{table.where(row, self.choices)}: choice {j} has no "
                                        f"{self.choice_text!r} key (choice_text); keys: {sorted(choice)}")
                    texts.append(choice[self.choice_text])
                    labs.append(str(choice.get(self.choice_label, "")).strip())
                else:
                    texts.append(choice)
            for j, text in enumerate(texts):
                if not isinstance(text, str) or not text.strip():
                    raise DataError(f"{table.where(row, self.choices)}: choice {j} is empty or not a "
                                    f"text: {text!r}")
            lists.append([str(t) for t in texts])
            labels.append(labs if any(labs) else None)
        return lists, labels

    def _answer(self, value: Any, texts: list[str], labels: list[str] | None, table: _Table, row: int) -> int:
        n = len(texts)
        where = table.where(row, self.answer)
        if not self.choices:  # yes/no
            truth = _truth(value)
            if truth is None:
                raise DataError(f"{where}: the answer of a yes/no question must be a boolean, yes/no, "
                                f"true/false or 0/1, got {value!r}")
            return int(truth)
        if isinstance(value, bool):
            raise DataError(f"{where}: a boolean answer {value!r} needs yes/no questions (choices = \"\")")
        text = str(value).strip() if value is not None else ""
        stripped = [t.strip() for t in texts]
        if labels is not None:  # labelled choices (ARC): the answer names a label, or a text
            if text in labels or text in stripped:
                return labels.index(text) if text in labels else stripped.index(text)
            raise DataError(f"{where}: answer {value!r} matches no choice: neither one of the choice labels "
                            f"{labels} nor one of the texts {texts}")
        index = _as_int(value)
        if index is not None:
            if not self.answer_base <= index < n + self.answer_base:
                raise DataError(f"{where}: answer index {index} is out of range for {n} choices "
                                f"(answer_base = {self.answer_base})")
            return index - self.answer_base
        if len(text) == 1 and text.isalpha() and ord(text.upper()) - ord("A") < n:
            return ord(text.upper()) - ord("A")
        if text in stripped:
            return stripped.index(text)
        raise DataError(f"{where}: answer {value!r} matches no choice (an index, a letter "
                        f"A–{chr(ord('A') + n - 1)}, or one of the texts {texts})")


# --------------------------------------------------------------------------- reading helpers


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; known splits: {', '.join(SPLITS)}")


def _base_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """The folder relative split paths start from: the data folder, else the current one."""
    try:
        return resolve_data_dir(data_dir)
    except FileNotFoundError:
        return Path.cwd()


class _Table:
    """A split's rows, with field access by (dotted) name and messages naming file/row/field."""

    def __init__(self, source: str, columns: dict[str, list[Any]] | None, records: list[Any] | None,
                 first_line: int):
        self.source = source
        self.columns = columns
        self.records = records
        self.first_line = first_line  # file line of data row 0 (header files: 2), 0 for none
        n = len(records) if records is not None else len(next(iter(columns.values()), []))
        if n == 0:
            raise DataError(f"the split is empty: {source} has no rows")
        self.n = n

    def __len__(self) -> int:
        return self.n

    @classmethod
    def from_file(cls, path: Path, columns: tuple[str, ...]) -> _Table:
        if path.suffix.lower() in (".jsonl", ".json"):
            records = read_json_records(path)
            for row, record in enumerate(records):
                if not isinstance(record, Mapping):
                    raise DataError(f"{path}, row {row + 1}: not a JSON object: {record!r:.80}")
            return cls(str(path), None, records, 0)
        table = read_table(path, columns)
        if not table:
            raise DataError(f"the split is empty: {path} has no header and no rows")
        return cls(str(path), table, None, 0 if path.suffix.lower() == ".parquet" else (1 if columns else 2))

    @classmethod
    def from_hub(cls, spec: TaskSpec, split: str, *, reason: str) -> _Table:
        hub = spec._hub_splits().get(split)
        name = "/".join(p for p in (spec.hf_dataset, spec.hf_config) if p)
        hint = "pass data_dir / --data-dir or set BAYES_LORA_DATA_DIR"
        if hub is None:
            raise FileNotFoundError(f"{reason} ({hint}); split {split!r} has no hub equivalent in "
                                    f"hf_splits = {spec.hf_splits}")
        if os.environ.get("HF_HUB_OFFLINE") == "1":
            raise FileNotFoundError(f"{reason} ({hint}); hub source {name} disabled by HF_HUB_OFFLINE=1")
        try:
            import datasets  # optional: only for a spec that names a hub source
        except ImportError:
            raise FileNotFoundError(f"{reason} ({hint}); the hub source {name} needs the `datasets` "
                                    "package") from None
        args = [spec.hf_dataset] + ([spec.hf_config] if spec.hf_config else [])
        try:
            ds = datasets.load_dataset(*args, split=hub)
            names = list(ds.column_names) if hasattr(ds, "column_names") else list(ds)
            table = {c: list(ds[c]) for c in names}
        except Exception as err:  # any hub / network / format failure: a clear FileNotFoundError
            raise FileNotFoundError(f"{reason} ({hint}); the hub source datasets.load_dataset"
                                    f"{tuple(args)!r} failed: {type(err).__name__}: {err}") from err
        logger.info("task %s: %s loaded from the hub (%s %s)", spec.name, split, name, hub)
        if any("." in f for f in spec._fields_read()):
            n = len(next(iter(table.values()), []))
            return cls(f"{name}[{hub}]", None, [{c: table[c][i] for c in table} for i in range(n)], 0)
        return cls(f"{name}[{hub}]", table, None, 0)

    def where(self, row: int, field_name: Any) -> str:
        line = f" (line {row + self.first_line})" if self.first_line else ""
        shown = list(field_name) if isinstance(field_name, tuple) else field_name
        return f"{self.source}, row {row + 1}{line}, field {shown!r}"

    def get(self, name: str) -> list[Any]:
        """The values of field ``name`` in every row (dotted paths into JSON objects)."""
        if self.columns is not None:
            if name not in self.columns:
                raise ColumnNotFoundError(
                    f"column {name!r} not found in {self.source}; available columns: "
                    f"{', '.join(map(repr, self.columns)) or '(none)'}"
                )
            return self.columns[name]
        out = []
        for row, record in enumerate(self.records):
            value: Any = record
            for part in name.split("."):
                if isinstance(value, Mapping) and part in value:
                    value = value[part]
                elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                    value = value[int(part)]
                else:
                    keys = sorted(value) if isinstance(value, Mapping) else type(value).__name__
                    raise ColumnNotFoundError(
                        f"field {name!r} not found at {self.source}, row {row + 1} (at {part!r}; "
                        f"keys there: {keys})"
                    )
            out.append(value)
        return out


def _texts(table: _Table, name: str) -> list[str]:
    values = table.get(name)
    for row, value in enumerate(values):
        if not isinstance(value, str):
            raise DataError(f"{table.where(row, name)}: expected a text, got {value!r:.80}")
        if not value.strip():
            raise DataError(f"{table.where(row, name)}: empty text")
    return values


def _as_int(value: Any) -> int | None:
    """An integer label/answer: an int, an integral float, or a numeric string; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"[+-]?\d+", text):
            return int(text)
        try:
            as_float = float(text)
        except ValueError:
            return None
        return int(as_float) if math.isfinite(as_float) and as_float.is_integer() else None
    return None


def _truth(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    return {"yes": True, "no": False, "true": True, "false": False, "1": True, "0": False}.get(text)


def _label_text(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value).strip()


def _class_names(values: list[Any], table: _Table, name: str) -> tuple[str, ...]:
    """Class names from a training split's labels: ``0…max`` when all are integers, else the
    sorted distinct values."""
    for row, value in enumerate(values):
        if value is None or (isinstance(value, str) and not value.strip()):
            raise DataError(f"{table.where(row, name)}: empty label")
    ints = [_as_int(v) for v in values]
    if all(i is not None for i in ints):
        negative = next((r for r, i in enumerate(ints) if i < 0), None)
        if negative is not None:
            raise DataError(f"{table.where(negative, name)}: negative label {values[negative]!r}")
        return tuple(str(i) for i in range(max(2, max(ints) + 1)))
    return tuple(sorted({_label_text(v) for v in values}))


def _label_ids(table: _Table, name: str, classes: tuple[str, ...], *, given: bool) -> list[int]:
    """Class ids of a split's labels; a label outside ``classes`` is an error naming it.

    ``given``: the classes are the spec's ``labels`` (a label may be a name or an integer id);
    otherwise they come from the training split (integer ids ``0…C-1``, or string names).
    """
    values = table.get(name)
    index = {c: i for i, c in enumerate(classes)}
    integer = not given and all(c == str(i) for i, c in enumerate(classes))
    out = []
    for row, value in enumerate(values):
        text = _label_text(value) if value is not None else ""
        if not text:
            raise DataError(f"{table.where(row, name)}: empty label")
        as_int = _as_int(value)
        if integer:
            if as_int is None:
                raise DataError(f"{table.where(row, name)}: label {value!r} is not an integer, but the "
                                "training split's labels are integers")
            if not 0 <= as_int < len(classes):
                raise DataError(f"{table.where(row, name)}: label {as_int} is out of range: the training "
                                f"split has classes 0..{len(classes) - 1} (a class training never saw)")
            out.append(as_int)
        elif text in index:
            out.append(index[text])
        elif given and as_int is not None:
            if not 0 <= as_int < len(classes):
                raise DataError(f"{table.where(row, name)}: label {as_int} is out of range: labels = "
                                f"{list(classes)} gives the classes 0..{len(classes) - 1}")
            out.append(as_int)  # an integer id beside the given class names
        elif given:
            raise DataError(f"{table.where(row, name)}: label {value!r} is none of labels = "
                            f"{list(classes)} (the labels list must cover every value in the data)")
        else:
            raise DataError(f"{table.where(row, name)}: label {value!r} never appears in the training "
                            f"split, whose classes are {list(classes)}")
    return out


# --------------------------------------------------------------------------- the registry


def arc_spec(name: str) -> TaskSpec:
    """The description of ARC-format files ``<name>/{train,dev,test}.jsonl`` (ARC-Easy,
    ARC-Challenge, OpenBookQA): nested stem, choice objects with letter labels, 4 choices."""
    return TaskSpec(name=name, kind="multiple_choice", train=f"{name}/train.jsonl", dev=f"{name}/dev.jsonl",
                    test=f"{name}/test.jsonl", question="question.stem", choices="question.choices",
                    choice_text="text", choice_label="label", answer="answerKey", num_choices=4)


#: The built-in tasks: descriptions of the benchmark files in the shared data folder.
BUILTIN_TASKS: dict[str, TaskSpec] = {
    "sst2": TaskSpec(name="sst2", train="sst2/train.tsv", dev="sst2/dev.tsv", test="sst2/test.tsv",
                     text="sentence", label="label", labels=("negative", "positive"), min_words=5,
                     hf_dataset="glue", hf_config="sst2", hf_splits={"train": "train", "test": "validation"}),
    "rte": TaskSpec(name="rte", train="rte/train.tsv", dev="rte/dev.tsv", test="rte/test.tsv",
                    text=("sentence1", "sentence2"), label="label"),
    "cola": TaskSpec(name="cola", train="cola/train.tsv", dev="cola/dev.tsv", test="cola/test.tsv",
                     columns=("source", "label", "mark", "sentence"), text="sentence", label="label",
                     labels=("unacceptable", "acceptable")),
    **{n: arc_spec(n) for n in ("arc_easy", "arc_challenge", "openbookqa")},
}


def task_names() -> tuple[str, ...]:
    """The names :func:`get_task` knows."""
    return tuple(BUILTIN_TASKS)


def register_task(spec: TaskSpec, *, overwrite: bool = False) -> TaskSpec:
    """Make ``spec`` known to :func:`get_task` (and to configs) by its name."""
    if spec.name in BUILTIN_TASKS and not overwrite:
        raise ValueError(f"a task named {spec.name!r} is already registered (pass overwrite=True)")
    BUILTIN_TASKS[spec.name] = spec
    return spec


def get_task(task: str | TaskSpec | Mapping[str, Any]) -> TaskSpec:
    """A :class:`TaskSpec` from a registered name, a spec, or a description table."""
    if isinstance(task, TaskSpec):
        return task
    if isinstance(task, Mapping):
        return TaskSpec.from_dict(task)
    if task in BUILTIN_TASKS:
        return BUILTIN_TASKS[task]
    raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(BUILTIN_TASKS)} "
                     "(or describe one by its files: TaskSpec / a [data.task] table)")


def load_task(task: str | TaskSpec | Mapping[str, Any], split: str = "train",
              **kwargs: Any) -> TextClassificationData | MultipleChoiceData:
    """Load ``split`` of a task given by name, spec or description (see :meth:`TaskSpec.load`)."""
    return get_task(task).load(split, **kwargs)


def as_ood_texts(data: TextClassificationData | MultipleChoiceData, num_classes: int,
                 name: str | None = None) -> TextClassificationData:
    """The inputs of any loaded task as unlabelled texts for a classifier with ``num_classes``
    classes (labels 0): texts (and pairs) of a classification task, the questions (with their
    context) of a multiple-choice task. Used as an out-of-distribution set."""
    if isinstance(data, MultipleChoiceData):
        texts = data.questions if data.contexts is None else tuple(
            f"{c}\n{q}" for c, q in zip(data.contexts, data.questions))
        pairs = None
    else:
        texts, pairs = data.texts, data.text_pairs
    return TextClassificationData(name=name or data.name, texts=texts, labels=(0,) * len(texts),
                                  num_classes=num_classes, text_pairs=pairs)

