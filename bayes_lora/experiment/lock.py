"""One run at a time in a run folder: ``<out>/.lock``.

The lock file is created atomically (``O_CREAT | O_EXCL``) and holds JSON ``{pid, host,
started}``. A second run into a busy folder fails at once with :class:`RunFolderBusy`, naming
the owner. A lock left by a process that no longer exists on this host (a run killed with
SIGKILL) is stale: it is taken over, and the caller is told so. A lock of another host cannot
be checked; it is reported like a live one (remove the file when you know that run is gone).
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

LOCK_NAME = ".lock"


class RunFolderBusy(RuntimeError):
    """Another run holds the run folder's lock."""


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """The lock of run folder ``folder`` (``with RunLock(folder): ...``, or acquire / release)."""

    def __init__(self, folder: str | Path, log: Callable[[str], None] | None = None):
        self.path = Path(folder) / LOCK_NAME
        self.log = log
        self.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.held = False

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self.owner, f)
        return True

    def _read(self) -> tuple[dict, str]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}, ""
        try:
            info = json.loads(text)
        except ValueError:
            info = {}
        return (info if isinstance(info, dict) else {}), text

    def acquire(self) -> Self:
        for _ in range(3):  # the holder may release between our create and our read
            if self._create():
                self.held = True
                return self
            info, text = self._read()
            if not text and not self.path.exists():
                continue
            pid, host = info.get("pid"), info.get("host")
            stale = host == self.owner["host"] and isinstance(pid, int) and not _alive(pid)
            if not stale:
                who = f"process {pid} on {host}" if pid else "an unknown process"
                since = f" since {info['started']}" if info.get("started") else ""
                raise RunFolderBusy(
                    f"{self.path.parent} is in use by another run ({who}{since}); wait for it to finish or "
                    f"choose another --out (if that run is gone, remove {self.path})")
            if self._take_over(text):
                if self.log is not None:
                    self.log(f"lock: {self.path} was left by process {pid} on {host}, which no longer "
                             "runs; taken over")
                self.held = True
                return self
        raise RunFolderBusy(f"could not lock {self.path.parent}: its lock file {self.path} keeps changing")

    def _take_over(self, stale_text: str) -> bool:
        """Replace the stale lock whose contents were ``stale_text`` by ours — unless another run
        replaced it first (then that run's lock is put back and False is returned)."""
        mine = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
        try:
            os.rename(self.path, mine)
        except FileNotFoundError:
            return self._create()
        if mine.read_text() != stale_text:  # not the file we judged: another run's fresh lock
            try:
                os.link(mine, self.path)
            except FileExistsError:
                pass
            mine.unlink()
            return False
        mine.unlink()
        return self._create()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        info, _ = self._read()
        if info.get("pid") == self.owner["pid"] and info.get("host") == self.owner["host"]:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


__all__ = ["LOCK_NAME", "RunFolderBusy", "RunLock"]
