"""Resumable training loops: everything a loop needs to go on as if it had never stopped.

A loop given a checkpoint (any object with the :class:`LoopCheckpoint` methods; the runner's
file-backed one is :class:`bayes_lora.experiment.checkpoint.Checkpointer`) hands it, every
``every`` optimiser steps, the trained tensors, the optimiser's state, the random generator's
state at the start of the current epoch and now, the position in the epoch, and the per-step
records (losses, snapshots). A loop resumed from the last saved state ends bit-identical to an
uninterrupted run (CPU, same threads). Where and how the state is stored is the caller's.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
from torch import Tensor


class LoopCheckpoint(Protocol):
    """Where a loop saves its state and finds it again (the loops only call these)."""

    def due(self, step: int) -> bool:
        """Whether to save after optimiser step ``step``."""

    def save(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Store the loop's state."""

    def load(self) -> tuple[dict[str, Tensor], dict] | None:
        """The state saved for this computation, or None."""

    def where(self) -> str:
        """For error messages: where the last good state is kept."""


# --- optimiser and generator state as tensors + JSON --------------------------------------------
def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, Tensor], dict]:
    """The optimiser's state split into tensors and JSON (param groups, scalars)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, Tensor):
                tensors[f"opt.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, v in tensors.items():
        if name.startswith("opt."):
            _, pid, k = name.split(".", 2)
            state.setdefault(int(pid), {})[k] = v
    for name, v in meta.get("scalars", {}).items():
        pid, k = name.split(".", 1)
        state.setdefault(int(pid), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


# --- one training loop's state: trained tensors + optimiser + position + records --------------
def resume(checkpoint: LoopCheckpoint | None, params: dict[str, Tensor], opt: torch.optim.Optimizer,
           loop: StepLoop) -> tuple[dict, dict[str, Tensor]]:
    """Restore ``params`` (in place), ``opt`` and ``loop`` from the checkpoint and return its
    records and tensors; ``({}, {})`` when there is nothing to resume."""
    saved = checkpoint.load() if checkpoint is not None else None
    if saved is None:
        return {}, {}
    tensors, meta = saved
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
    restore_optimizer(opt, tensors, meta["optimizer"])
    loop.restore(tensors, meta)
    return meta, tensors


def save_if_due(checkpoint: LoopCheckpoint | None, params: dict[str, Tensor], opt: torch.optim.Optimizer,
                loop: StepLoop, records: dict, extra: dict[str, Tensor] | None = None) -> None:
    """After a completed step: write the loop's state when a checkpoint is due (not after the
    last step — the caller stores the result then)."""
    if checkpoint is None or not checkpoint.due(loop.step) or loop.step >= loop.total:
        return
    o_t, o_m = optimizer_state(opt)
    l_t, l_m = loop.state()
    checkpoint.save({**{n: p.detach() for n, p in params.items()}, **o_t, **l_t, **(extra or {})},
                    {**l_m, "optimizer": o_m, **records})


def kept(checkpoint: LoopCheckpoint | None) -> str:
    """For a NaN message: where the last good state is."""
    return checkpoint.where() if checkpoint is not None else "no checkpoints were requested"


class StepLoop:
    """Minibatches for ``total`` optimiser steps over shuffled epochs, resumable mid-epoch.

    ``for batch in loop: ...; loop.completed()`` — the body runs one step per batch and calls
    :meth:`completed` after its optimiser step. :meth:`state` / :meth:`restore` save and restore
    the position: the epoch's shuffling is replayed from the generator state at the start of the
    epoch, and the generator is then set to its state at the checkpoint, so draws made inside the
    body (t on the curve, noise) continue exactly.
    """

    def __init__(self, task, batch_size: int, total: int, generator: torch.Generator):
        self.task, self.batch_size, self.total, self.g = task, batch_size, total, generator
        self.step = 0
        self.pos = 0  # batches of the current epoch already used
        self.per_epoch = -(-len(task) // batch_size)
        self._epoch_rng: Tensor | None = None
        self._resume_rng: Tensor | None = None

    def __iter__(self) -> Iterator[dict]:
        while self.step < self.total:
            if self._resume_rng is not None and self.pos == 0:
                self.g.set_state(self._resume_rng)
                self._resume_rng = None
            if self._epoch_rng is None or self.pos == 0:
                self._epoch_rng = self.g.get_state()
            else:
                self.g.set_state(self._epoch_rng)
            skip = self.pos
            for i, batch in enumerate(self.task.batches(self.batch_size, shuffle=True, generator=self.g)):
                if i < skip:
                    continue
                if self._resume_rng is not None:
                    self.g.set_state(self._resume_rng)
                    self._resume_rng = None
                if self.step >= self.total:
                    return
                yield batch
            self.pos = 0

    def completed(self) -> None:
        self.step += 1
        self.pos += 1
        if self.pos == self.per_epoch:
            self.pos = 0

    def state(self) -> tuple[dict[str, Tensor], dict]:
        epoch = self.g.get_state() if self.pos == 0 else self._epoch_rng
        return {"rng.epoch": epoch, "rng.now": self.g.get_state()}, {"step": self.step, "pos": self.pos}

    def restore(self, tensors: dict[str, Tensor], meta: dict) -> None:
        self.step, self.pos = int(meta["step"]), int(meta["pos"])
        self._epoch_rng = tensors["rng.epoch"]
        self._resume_rng = tensors["rng.now"]


__all__ = ["LoopCheckpoint", "StepLoop", "kept", "optimizer_state", "restore_optimizer", "resume", "save_if_due"]
