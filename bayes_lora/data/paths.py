"""Locating the offline benchmark data folder (``shared/data``).

The data files (SST-2, ARC, OpenBookQA) are never copied into the repository; they live in a
sibling folder ``../shared/data`` of the project root. :func:`resolve_data_dir` finds it.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Environment variable that points at the data folder.
DATA_DIR_ENV = "BAYES_LORA_DATA_DIR"


def _candidate_dirs() -> list[Path]:
    """Default places to look for the data folder, in order of preference."""
    repo_root = Path(__file__).resolve().parents[2]  # .../bayes_lora/data/paths.py -> repo root
    return [Path.cwd() / ".." / "shared" / "data", repo_root.parent / "shared" / "data"]


def find_data_dir(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The data folder and where it came from: ``"--data-dir"`` (the argument),
    ``"BAYES_LORA_DATA_DIR"`` (the environment variable) or ``"default"`` (``../shared/data``).

    The same precedence and errors as :func:`resolve_data_dir`.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    if os.environ.get(DATA_DIR_ENV):
        return Path(os.environ[DATA_DIR_ENV]).expanduser(), DATA_DIR_ENV
    return resolve_data_dir(None), "default"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Return the folder that holds the benchmark data.

    Parameters
    ----------
    data_dir : str or path-like, optional
        An explicit folder. When given it is returned as is (expanded ``~``), whether or not it
        exists, so that the loader reading from it can report the exact file it misses.

    Returns
    -------
    pathlib.Path
        In order of preference: ``data_dir``; the environment variable
        ``BAYES_LORA_DATA_DIR``; the first existing of ``./../shared/data`` (relative to the
        current directory) and ``<repo root>/../shared/data``.

    Raises
    ------
    FileNotFoundError
        When neither an argument nor the environment variable is given and none of the
        default places exists. The message lists the places tried.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    tried = _candidate_dirs()
    for candidate in tried:
        if candidate.is_dir():
            return candidate.resolve()
    places = ", ".join(str(p.resolve()) for p in tried)
    raise FileNotFoundError(
        f"could not find the benchmark data folder; tried: {places}. "
        f"Pass --data-dir (or data_dir=...) or set the environment variable {DATA_DIR_ENV} "
        "to the folder that holds sst2/, arc_easy/, arc_challenge/ and openbookqa/."
    )
