"""Safe files: adapters and tensors as safetensors + JSON, written atomically. No pickle."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .params import ParamLayout

_UMASK: int | None = None


def file_mode() -> int:
    """The mode of a new file under the process's umask (``0o666 & ~umask``; 0o644 for umask 022).

    Temp files are created 0600; the finished file gets this mode, like a plain ``open``. The
    umask is read once: from ``/proc/self/status`` where there is one (no change of process
    state), else by setting and restoring it."""
    global _UMASK
    if _UMASK is None:
        umask = None
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("Umask:"):
                    umask = int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
        if umask is None:
            umask = os.umask(0o022)
            os.umask(umask)
        _UMASK = umask
    return 0o666 & ~_UMASK


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to a temp file in the same folder, fsync, then rename over ``path``
    (which gets the mode of :func:`file_mode`)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode())


def _json_default(o):
    if isinstance(o, Tensor):
        return o.tolist()
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, Tensor], metadata: Mapping | None = None) -> None:
    """Save tensors as safetensors atomically; ``metadata`` goes to ``<path>.json``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if metadata is not None:
        atomic_write_json(json_path(path), dict(metadata))


def json_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_suffix(".json")


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, Tensor], dict]:
    """Load tensors saved by :func:`save_tensors` and their JSON metadata ({} if none)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        tensors = load_file(str(path))
    except SafetensorError as e:  # truncated, or not safetensors at all
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
    meta_file = json_path(path)
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    return tensors, meta


def save_adapter(path: str | os.PathLike, theta: Tensor, layout: ParamLayout, metadata: Mapping) -> None:
    """An adapter θ as safetensors (one tensor per LoRA parameter) + JSON (base model, modules, rank…)."""
    meta = dict(metadata)
    meta["layout"] = layout.to_json()
    save_tensors(path, layout.unflatten(theta.detach()), meta)


def load_adapter(
    path: str | os.PathLike, layout: ParamLayout | None = None, expect: Mapping | None = None
) -> tuple[Tensor, dict]:
    """Load an adapter; check it against the run's ``layout`` and ``expect``ed metadata.

    Raises a ValueError naming the mismatch (other base model, target modules, rank) rather than
    loading an adapter that means something else.
    """
    tensors, meta = load_tensors(path)
    saved = ParamLayout.from_json(meta["layout"]) if "layout" in meta else None
    for key, want in (expect or {}).items():
        have = meta.get(key)
        if have is not None and have != want:
            raise ValueError(f"adapter {path}: {key} is {have!r}, the run uses {want!r}")
    if layout is not None:
        if saved is not None:
            layout.check_same(saved, what=f"adapter {path}")
        return layout.flatten(tensors), meta
    if saved is None:
        raise ValueError(f"adapter {path} has no layout in its JSON; pass the model's layout")
    return saved.flatten(tensors), meta


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file (stage manifests record it to detect half-written or changed files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_theta_stack(path: str | os.PathLike, thetas: Tensor, metadata: Mapping | None = None) -> None:
    """Several θ (or latents) [S, D] in one safetensors file."""
    save_tensors(path, {"thetas": thetas}, metadata)


def load_theta_stack(path: str | os.PathLike) -> tuple[Tensor, dict]:
    tensors, meta = load_tensors(path)
    return tensors["thetas"], meta


torch_load_kwargs = {"weights_only": True}  # any torch.load in the package must use these
