"""Reading raw tabular (TSV/CSV) and JSON-lines files into plain Python columns/records.

These readers only parse; validation of the contents happens in :mod:`bayes_lora.data.loaders`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: Suffixes :func:`read_table` understands.
TABLE_SUFFIXES: tuple[str, ...] = (".tsv", ".csv", ".jsonl", ".json", ".parquet")


class ColumnNotFoundError(ValueError, KeyError):
    """A requested column is not in the file (both a ``ValueError`` and a ``KeyError``)."""

    __str__ = Exception.__str__  # plain message, not KeyError's quoted repr


def _require_file(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; a decode error names the file and what the bytes look like."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        found = (
            "UTF-16 (it starts with a byte-order mark)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff")
            else "binary data" if b"\x00" in raw[:4096] else "another encoding"
        )
        raise ValueError(
            f"{path} is not UTF-8 text (byte {err.start} cannot be decoded; it looks like {found}): "
            "save it as UTF-8"
        ) from None


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
    text = _read_text(path)
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


def read_table(path: str | Path, columns: tuple[str, ...] | list[str] = ()) -> dict[str, list[Any]]:
    """Read a TSV, CSV, JSON-lines or Parquet file into ``{column: values}``.

    TSV files are read with ``sep="\\t", quoting=3`` (no quote handling: SST-2 sentences
    contain bare quotes) and ``keep_default_na=False`` (so texts like "null" stay strings).
    Delimited files are read as strings; JSON values keep their JSON types. A JSON record
    lacking a key gets ``None`` in that column.

    Parameters
    ----------
    path : str or pathlib.Path
        A file whose suffix is one of :data:`TABLE_SUFFIXES`.
    columns : sequence of str, optional
        The column names of a delimited file *without* a header row (every row must have
        exactly this many fields); empty: the first row is the header.

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
        table: dict[str, list[Any]] = {}
        for row, record in enumerate(records):
            if not isinstance(record, dict):
                raise TypeError(f"row {row} of {path} is not a JSON object: {record!r:.80}")
            for key in record:
                table.setdefault(key, [])
        for key, values in table.items():
            values.extend(record.get(key) for record in records)
        return table

    import pandas as pd  # imported lazily: keeps `import bayes_lora.data` light

    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except ImportError as err:
            raise ValueError(f"cannot read {path}: Parquet needs pyarrow ({err})") from None
        except Exception as err:  # noqa: BLE001 - a corrupt file, whatever pyarrow raises: name it
            raise ValueError(f"cannot read {path} as Parquet: {type(err).__name__}: {err}") from None
        return {str(c): [_plain(v) for v in frame[c].tolist()] for c in frame.columns}
    _read_text(path)  # a clear message for a file that is not UTF-8, before pandas sees it
    options: dict[str, Any] = {"dtype": str, "keep_default_na": False}
    if suffix == ".tsv":
        options.update(sep="\t", quoting=3)
    if columns:
        options.update(header=None)
    try:
        frame = pd.read_csv(path, **options)
    except pd.errors.EmptyDataError:
        return {}
    except pd.errors.ParserError as err:
        raise ValueError(f"cannot parse {path}: {err}") from None
    if columns:
        if frame.shape[1] != len(columns):
            raise ValueError(
                f"{path} has {frame.shape[1]} fields per row but columns = {list(columns)} names "
                f"{len(columns)}; name every field of a headerless file"
            )
        frame.columns = list(columns)
    return {str(column): frame[column].tolist() for column in frame.columns}


def _plain(value: Any) -> Any:
    """A Parquet cell as plain Python (numpy arrays of a list column become lists)."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value.tolist()] if getattr(value, "ndim", 0) else value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
