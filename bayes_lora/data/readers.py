"""Reading raw tabular (TSV/CSV) and JSON-lines files into plain Python columns/records.

These readers only parse; validation of the contents happens in :mod:`bayes_lora.data.loaders`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Suffixes :func:`read_table` understands.
TABLE_SUFFIXES: tuple[str, ...] = (".tsv", ".csv", ".jsonl", ".json")


class ColumnNotFoundError(ValueError, KeyError):
    """A requested column is not in the file (both a ``ValueError`` and a ``KeyError``)."""

    __str__ = Exception.__str__  # plain message, not KeyError's quoted repr


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")


def read_json_records(path: str | Path) -> list[Any]:
    """Read a JSON-lines file (blank lines skipped) or a file holding one JSON array.

    Parameters
    ----------
    path : str or pathlib.Path
        The file to read (UTF-8).

    Returns
    -------
    list
        One decoded JSON value per line (or the elements of the array).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a line is not valid JSON; the message names the file and line number.
    """
    path = Path(path)
    _require_file(path)
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: invalid JSON array ({err})") from None
        return list(records)
    records = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from None
    return records


def read_table(path: str | Path) -> dict[str, list[Any]]:
    """Read a TSV, CSV or JSON-lines file into ``{column: values}``.

    TSV files are read with ``sep="\\t", quoting=3`` (no quote handling: SST-2 sentences
    contain bare quotes) and ``keep_default_na=False`` (so texts like "null" stay strings).
    Delimited files are read as strings; JSON values keep their JSON types. A JSON record
    lacking a key gets ``None`` in that column.

    Parameters
    ----------
    path : str or pathlib.Path
        A file whose suffix is one of :data:`TABLE_SUFFIXES`.

    Returns
    -------
    dict of str to list
        The columns, in file order.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        For an unsupported suffix or a malformed file.
    TypeError
        If a JSON record is not an object.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise ValueError(
            f"cannot read {path}: unsupported suffix {suffix!r}; "
            f"expected one of {', '.join(TABLE_SUFFIXES)}"
        )
    _require_file(path)
    if suffix in (".jsonl", ".json"):
        records = read_json_records(path)
        columns: dict[str, list[Any]] = {}
        for row, record in enumerate(records):
            if not isinstance(record, dict):
                raise TypeError(f"row {row} of {path} is not a JSON object: {record!r:.80}")
            for key in record:
                columns.setdefault(key, [])
        for key, values in columns.items():
            values.extend(record.get(key) for record in records)
        return columns

    import pandas as pd  # imported lazily: keeps `import bayes_lora.data` light

    options: dict[str, Any] = {"dtype": str, "keep_default_na": False}
    if suffix == ".tsv":
        options.update(sep="\t", quoting=3)
    try:
        frame = pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        return {}
    except pd.errors.ParserError as err:
        raise ValueError(f"cannot parse {path}: {err}") from None
    return {str(column): frame[column].tolist() for column in frame.columns}
