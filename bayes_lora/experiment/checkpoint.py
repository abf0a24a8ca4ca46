"""The runner's checkpoints: a training loop's state in one safetensors file + JSON sidecar.

A :class:`Checkpointer` is what the runner hands the loops of ``lora.train``, ``lora.curve_train``
and SWAG (:class:`~bayes_lora.lora.checkpoint.LoopCheckpoint`): every ``every`` optimiser steps the
state is written atomically (no pickle), and it carries a ``key`` (what it was trained for) so a
checkpoint of another computation is never resumed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from ..lora.io import atomic_write_json, json_path, load_tensors, save_tensors


@dataclass
class Checkpointer:
    """Where and how often a loop checkpoints.

    Attributes
    ----------
    path: the checkpoint file (``.safetensors``; its JSON sidecar sits beside it).
    every: optimiser steps between checkpoints (≥ 1).
    key: identity of the computation; a checkpoint with another key is not resumed.
    """

    path: Path
    every: int = 50
    key: str = ""
    log: Any = None  # callable(str) told when a checkpoint is resumed
    last_step: int = field(default=-1, init=False)

    def __post_init__(self):
        self.path = Path(self.path)
        if self.every < 1:
            raise ValueError(f"checkpoint every must be ≥ 1 step, got {self.every}")

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def save(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Write the state (tensors first, then the JSON that makes it valid)."""
        j = json_path(self.path)
        if j.exists():  # the old pair is invalid while the new tensors are being written
            os.unlink(j)
        save_tensors(self.path, tensors)
        atomic_write_json(j, {**meta, "key": self.key})
        self.last_step = int(meta.get("step", -1))

    def load(self) -> tuple[dict[str, Tensor], dict] | None:
        """The saved state when there is one for this key, else None."""
        if not self.path.is_file() or not json_path(self.path).is_file():
            return None
        try:
            tensors, meta = load_tensors(self.path)
        except (OSError, ValueError, json.JSONDecodeError, RuntimeError):
            return None
        if meta.get("key") != self.key:
            return None
        self.last_step = int(meta.get("step", -1))
        if self.log is not None:
            self.log(f"resuming from the checkpoint at step {self.last_step} ({self.path.name})")
        return tensors, meta

    def where(self) -> str:
        """For error messages: the last checkpoint kept, or that there is none."""
        if self.last_step >= 0 and self.path.is_file():
            return f"the last good checkpoint (step {self.last_step}) is kept in {self.path}"
        return "no checkpoint had been written yet"


__all__ = ["Checkpointer"]
