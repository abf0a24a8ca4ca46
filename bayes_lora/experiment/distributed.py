"""Scale-out of a run over several processes with accelerate (gloo on CPU, NCCL on GPUs).

A run is a graph of stages; the stages of one level do not depend on each other (the anchors;
the curve and the projected MAP; the paths and every method's fit; every method's evaluation).
Launched as several processes, each process runs its share of a level's stages, all wait for
each other, and the next level starts; the main process then loads every finished stage and
writes the report. Every stage computes exactly what it computes in one process, so the
metrics are the same (bit-identical with the same number of threads per process).

    accelerate launch --num_processes 2 -m bayes_lora run CONFIG   # CPU (gloo) or GPUs
    torchrun --nproc_per_node 2 -m bayes_lora run CONFIG           # the same, plainly

(On a machine without GPUs accelerate's launcher starts a single process and expects MPI;
bayes_lora then relaunches itself under torchrun with the requested number of processes —
:func:`relaunch_under_torchrun`. ``accelerate launch --multi_gpu`` goes to torchrun directly.)
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch


def _launched_world_size() -> int:
    for var in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 1


def launched_rank() -> int:
    """This process's rank as its launcher set it (0 when not launched distributed), known before
    the process group is set up: only rank 0 locks the run folder and writes its config files."""
    for var in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var]) if _launched_world_size() > 1 else 0
    return 0


def _accelerate_requested_processes() -> int:
    """N when accelerate's simple launcher started this single process for ``--num_processes N``
    (what ``accelerate launch --num_processes N`` does on a machine without GPUs); else 1.

    accelerate passes no process count in the environment, so it is read from the launcher's
    command line (Linux ``/proc``); anything unreadable gives 1."""
    if _launched_world_size() > 1 or not (os.environ.get("ACCELERATE_MIXED_PRECISION") and os.environ.get("MASTER_ADDR")):
        return 1
    try:
        args = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return 1
    for i, a in enumerate(args):
        for flag in ("--num_processes", "--num-processes"):
            if a == flag and i + 1 < len(args) and args[i + 1].isdigit():
                return int(args[i + 1])
            if a.startswith(flag + "=") and a.split("=", 1)[1].isdigit():
                return int(a.split("=", 1)[1])
    return 1


def relaunch_under_torchrun(argv: list[str]) -> None:
    """When accelerate started one process although N were asked for (no GPUs: its simple
    launcher), replace this process by ``torchrun --nproc_per_node N -m bayes_lora ARGV``, so
    ``accelerate launch --num_processes N -m bayes_lora run ...`` runs N processes over gloo."""
    n = _accelerate_requested_processes()
    if n <= 1:
        return
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
           "--master_addr", os.environ.get("MASTER_ADDR", "127.0.0.1"),
           "--master_port", os.environ.get("MASTER_PORT", "29500"), "-m", "bayes_lora", *argv]
    print(f"accelerate started one process for --num_processes {n} (no GPUs): relaunching with torchrun "
          f"({n} processes, gloo)", file=sys.stderr, flush=True)
    os.execv(sys.executable, cmd)


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


__all__ = ["Cluster", "StageFailed", "launched_rank", "relaunch_under_torchrun"]
