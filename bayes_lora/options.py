"""Declared options: one dataclass per group of settings, each field with its allowed values.

A settings class (``TrainConfig``, ``CurveConfig``, ...) declares its fields with :func:`option`
and calls :func:`check_options` in ``__post_init__``; the config file's tables are these classes
(``experiment.config`` reads the same metadata to name the key and what it allows), so a setting,
its default and its bounds exist once, for the Python API and the TOML config alike.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

_BOUNDS = (("ge", "≥", lambda v, b: v >= b), ("gt", ">", lambda v, b: v > b),
           ("le", "≤", lambda v, b: v <= b), ("lt", "<", lambda v, b: v < b))


def option(default: Any = dataclasses.MISSING, *, ge=None, gt=None, le=None, lt=None, choices=None,
           doc: str = "", nonempty: bool = False, config: bool = True,
           default_factory: Any = dataclasses.MISSING) -> Any:
    """A dataclass field with its allowed values (bounds, choices) and a one-line ``doc``.

    ``config=False`` keeps the field out of a config table (it is set by the caller, e.g. the
    run's seed)."""
    meta = {"ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices, "doc": doc, "nonempty": nonempty,
            "config": config}
    return dataclasses.field(default=default, default_factory=default_factory, metadata=meta)


def check_value(value: Any, meta: Mapping[str, Any], key: str) -> str | None:
    """Why ``value`` is not allowed for the field described by ``meta`` (None if it is)."""
    items = value if isinstance(value, tuple) else (value,)
    if meta.get("nonempty") and isinstance(value, tuple) and not value:
        return f"{key} must not be empty"
    for v in items:
        if v is None:
            continue
        if meta.get("choices") is not None and v not in meta["choices"]:
            return f"{key} must be one of {list(meta['choices'])}, got {v!r}"
        if isinstance(v, (str, bool)):
            continue
        for name, word, ok in _BOUNDS:
            bound = meta.get(name)
            if bound is not None and not ok(v, bound):
                return f"{key} must be {word} {bound}, got {v!r}"
    return None


def check_options(obj: Any) -> None:
    """Raise a ValueError naming the first field of the dataclass ``obj`` outside its allowed values."""
    for f in dataclasses.fields(obj):
        why = check_value(getattr(obj, f.name), f.metadata, f.name)
        if why is not None:
            raise ValueError(f"{type(obj).__name__}: {why}")


def config_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of a settings class that a config table may set."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("config", True)]


__all__ = ["check_options", "check_value", "config_fields", "option"]
