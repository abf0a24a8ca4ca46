"""Stages of a run, each keyed by the part of the config it depends on.

A stage writes its files into ``<run>/stages/<name>/`` (every file atomically: temp file +
rename) and then a ``manifest.json`` holding its key, the SHA-256 of every file and how long
it took. The manifest is written last, so a stage killed half-way has none and is run again;
a file changed or truncated afterwards fails its checksum and the stage is run again too. A
re-run with the same key skips the stage; a changed option changes the key of exactly the
stages that depend on it.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..lora.io import atomic_write_json, file_digest

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class StageRecord:
    """What the log says about one stage of this run."""

    name: str
    key: str
    status: str  # "ran" | "skipped"
    seconds: float
    process: int = 0  # which process of a distributed run ran it


class StageStore:
    """The stage folders of one run directory, and the log of what ran."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.records: list[StageRecord] = []

    def path(self, name: str) -> Path:
        return self.root / "stages" / _safe(name)

    def manifest(self, name: str) -> dict | None:
        f = self.path(name) / MANIFEST
        if not f.is_file():
            return None
        try:
            m = json.loads(f.read_text())
        except (OSError, ValueError):  # unreadable, not UTF-8 or not JSON: damaged, the stage runs again
            return None
        return m if isinstance(m, dict) else None

    def done(self, name: str, key: str) -> bool:
        """True when the stage finished with this key and every file still has its checksum."""
        m = self.manifest(name)
        if m is None or m.get("key") != key:
            return False
        folder = self.path(name)
        for rel, digest in m.get("files", {}).items():
            f = folder / rel
            if not f.is_file() or file_digest(f) != digest:
                return False
        return True

    def checkpointer(self, name: str, key: str, every: int, log=None):
        """The periodic checkpoint of a long loop inside stage ``name`` (None when ``every`` is 0).

        Checkpoints live in ``<run>/checkpoints/`` (outside the stage folder, which an unfinished
        attempt empties) and are removed when their stage finishes."""
        from .checkpoint import Checkpointer

        if every <= 0:
            return None
        return Checkpointer(self.root / "checkpoints" / f"{_safe(name)}.safetensors", every=every, key=key, log=log)

    def clear_checkpoints(self, name: str) -> None:
        folder, safe = self.root / "checkpoints", _safe(name)
        for f in folder.iterdir() if folder.is_dir() else ():
            stem = f.name.split(".", 1)[0]
            if stem == safe or stem.startswith(safe + "__"):
                f.unlink()

    def begin(self, name: str) -> Path:
        """An empty folder for the stage (anything left by an unfinished attempt is removed)."""
        folder = self.path(name)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        return folder

    def finish(self, name: str, key: str, seconds: float, info: dict[str, Any] | None = None) -> None:
        folder = self.path(name)
        files = {str(p.relative_to(folder)): file_digest(p) for p in sorted(folder.rglob("*"))
                 if p.is_file() and p.name != MANIFEST and not p.name.endswith(".tmp")}
        atomic_write_json(folder / MANIFEST, {"stage": name, "key": key, "files": files,
                                              "seconds": round(seconds, 3), "info": info or {},
                                              "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
        self.records.append(StageRecord(name, key, "ran", seconds))

    def skip(self, name: str, key: str) -> None:
        if self.ran(name):  # run by another process of this distributed run, loaded here
            return
        m = self.manifest(name) or {}
        self.records.append(StageRecord(name, key, "skipped", float(m.get("seconds", 0.0))))

    def ran(self, name: str) -> bool:
        return any(r.name == name and r.status == "ran" for r in self.records)


def _safe(name: str) -> str:
    return name.replace(":", "__").replace("/", "_")


__all__ = ["MANIFEST", "StageRecord", "StageStore"]
