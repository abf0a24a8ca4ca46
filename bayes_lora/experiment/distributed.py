"""Scale-out of a run over several processes with accelerate (gloo on CPU, NCCL on GPUs).

A run is a graph of stages; the stages of one level do not depend on each other (the anchors;
the curve and the projected MAP; the paths and every method's fit; every method's evaluation).
Launched as several processes, each process runs its share of a level's stages, all wait for
each other, and the next level starts; the main process then loads every finished stage and
writes the report. Every stage computes exactly what it computes in one process, so the
metrics are the same (bit-identical with the same number of threads per process).

    accelerate launch --multi_gpu --num_processes 2 -m bayes_lora run CONFIG   # CPU or GPUs
    torchrun --nproc_per_node 2 -m bayes_lora run CONFIG                       # the same, plainly

(On a machine without GPUs accelerate's ``--multi_gpu`` flag still means "start the processes
with torchrun"; they talk over gloo.)
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch


def _launched_world_size() -> int:
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


class StageFailed(RuntimeError):
    """A stage failed on another process of a distributed run."""


@dataclass
class Cluster:
    """The processes of a run: this one's rank, how many there are, and how they synchronise."""

    rank: int = 0
    world: int = 1
    state: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def current(cls) -> Cluster:
        """The processes this one was launched with (one when not launched distributed)."""
        if _launched_world_size() <= 1:
            if os.environ.get("ACCELERATE_MIXED_PRECISION") and os.environ.get("MASTER_ADDR"):
                warnings.warn(
                    "accelerate started a single process: on a machine without GPUs, launch several with "
                    "`accelerate launch --multi_gpu --num_processes N -m bayes_lora run ...` (torchrun + gloo)",
                    RuntimeWarning, stacklevel=2)
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(rank=state.process_index, world=state.num_processes, state=state)

    def barrier(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()

    def gather(self, obj) -> list:
        """``obj`` of every process, in rank order (on every process)."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        torch.distributed.all_gather_object(out, obj)
        return out

    def run_level(self, jobs: list[tuple[str, Callable[[], object]]]) -> None:
        """Run job ``j`` on process ``j % world``, then wait for all; a failure anywhere is
        raised on every process (its own exception where it happened)."""
        error: tuple[str, str, str] | None = None
        mine: BaseException | None = None
        for j, (name, job) in enumerate(jobs):
            if j % self.world != self.rank:
                continue
            try:
                job()
            except Exception as e:  # noqa: BLE001 - reported to every process below
                error, mine = (name, type(e).__name__, str(e)), e
                break
        errors = self.gather(error)
        if mine is not None:
            raise mine
        for rank, err in enumerate(errors):
            if err is not None:
                name, kind, msg = err
                raise StageFailed(f"stage {name} failed on process {rank} ({kind}): {msg}")

    def shutdown(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            self.barrier()
            torch.distributed.destroy_process_group()


__all__ = ["Cluster", "StageFailed"]
