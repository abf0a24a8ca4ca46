"""A frozen-prefix cache: the hidden states entering the first adapted layer, computed once.

When LoRA adapters (and every other tensor of θ) sit only on transformer layers ``≥ L``
(``LoraSettings(layers=(4, 5))``), the embeddings and layers ``< L`` compute the same thing for
every θ. :class:`CachedTask` runs that frozen prefix once per data set and stores the hidden
states entering layer ``L``; a *suffix* model (:func:`suffix_functional_model`) starts from them.

The suffix model shares every parameter with the full model and keeps its parameter names, so
θ, its :class:`~bayes_lora.lora.params.ParamLayout` and every inference backend work unchanged::

    fm_s, train_s, test_s = with_prefix_cache(fm, train, test)
    probs = predict_probs(fm_s, test_s, thetas)      # == predict_probs(fm, test, thetas)

How it works
------------
* The suffix model (:mod:`bayes_lora.lora.suffix`, re-exported here) is a shallow copy of the
  module path from the root to the layer list with the layers ``< L`` passing their hidden input
  through and what the base model adds to ``inputs_embeds`` switched off (a BERT-style
  ``embeddings`` module, GPT-2's learned positions, DeBERTa-v2's convolution after layer 0); the
  original model is not modified. Position terms computed inside the layer stack from the
  sequence length (MPNet's relative position bias, rotary positions) are recomputed by the
  suffix exactly as in the full model, the cached states being sliced to the batch's length.
* A :class:`CachedTask` batch is the wrapped task's batch with ``inputs_embeds`` (the cached
  hidden states, sliced to the batch's dynamic length) added to ``batch["inputs"]``; the token
  ids stay there, because the wrapped task's ``class_logits`` scores with them (multiple
  choice) and a decoder classifier's head finds the last token that is not padding with them.
  The suffix's base model drops ``input_ids`` whenever ``inputs_embeds`` is given. The full
  model refuses such a batch (``exactly one of input_ids or inputs_embeds``).
* :func:`with_prefix_cache` checks the suffix against the full model and, for an architecture
  whose additions to ``inputs_embeds`` it does not know (OPT's positions, say), runs uncached
  with the reason logged.
* Attention masks and positions are rebuilt by the model from ``attention_mask`` exactly as in
  the full forward. Hidden states are computed per example at its own length; positions past it
  (padding, masked out of every attention) hold zeros, so raw outputs *at padding positions*
  differ from the full model's, class logits do not.
* :attr:`CachedTask.key` digests the frozen prefix's weights, ``L`` and the task's inputs; a saved
  cache (safetensors + JSON, no pickle) is only loaded when its key matches.
"""
from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .device import module_device
from .io import load_tensors, save_tensors
from .params import FunctionalModel, ParamLayout, is_lora_factor
from .suffix import (
    SuffixFunctionalModel,
    _check_layer,
    _run_prefix,
    _split_layer,
    _theta_names,
    first_adapted_layer,
    layers_path,
    suffix_functional_model,
    suffix_model,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "CachedTask",
    "SuffixFunctionalModel",
    "cache_bytes",
    "check_suffix",
    "first_adapted_layer",
    "layers_path",
    "model_digest",
    "suffix_functional_model",
    "suffix_model",
    "task_digest",
    "with_prefix_cache",
]

#: default bound on the memory of cached hidden states (per call)
DEFAULT_MAX_BYTES = 2 * 2**30
#: bump when the cache's meaning or file format changes
CACHE_VERSION = 1

# --- digests -----------------------------------------------------------------------------------


def _hash_tensor(h, name: str, t: Tensor) -> None:
    t = t.detach()
    h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


def model_digest(model: nn.Module, layer: int, *, layout: ParamLayout | None = None) -> str:
    """A digest of what the hidden states entering ``layer`` depend on: the model's class and
    config and every parameter and buffer outside the layers ``≥ layer`` and outside θ."""
    layout_names = set(layout.names) if layout is not None else set()
    where = layers_path(layout if layout is not None else model)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"v{CACHE_VERSION}|{type(model).__name__}|{layer}|".encode())
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_json_string"):
        h.update(config.to_json_string(use_diff=False).encode())

    def kept(name: str) -> bool:
        if name in layout_names or is_lora_factor(name) or ".modules_to_save." in name:
            return False
        split = _split_layer(name)
        return not (split is not None and split[0] == where and split[1] >= layer)

    seen: set[int] = set()
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if kept(name) and id(t) not in seen:
            seen.add(id(t))
            _hash_tensor(h, name, t)
    return h.hexdigest()


def task_digest(task, *, chunk: int = 256) -> str:
    """A digest of the model inputs of every example of ``task``, in order."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{type(task).__name__}|{len(task)}|".encode())
    for batch in task.batches(chunk):
        for key in sorted(batch["inputs"]):
            value = batch["inputs"][key]
            if isinstance(value, Tensor):
                _hash_tensor(h, key, value)
            else:
                h.update(f"{key}={value!r}".encode())
    return h.hexdigest()


def _combine(model_fp: str, layer: int, data_fp: str) -> str:
    return hashlib.blake2b(f"v{CACHE_VERSION}|{model_fp}|{layer}|{data_fp}".encode(), digest_size=16).hexdigest()


# --- the cached task ----------------------------------------------------------------------------


def _lengths(batch: dict) -> tuple[Tensor, int, int]:
    """Per-example used length [B], rows per example k, and the batch's length T."""
    inputs = batch["inputs"]
    ref = inputs.get("attention_mask", inputs.get("input_ids"))
    if ref is None:
        raise ValueError("the prefix cache needs batches with input_ids or an attention_mask")
    b = int(batch["index"].shape[0])
    rows, t = int(ref.shape[0]), int(ref.shape[-1])
    if rows % b:
        raise ValueError(f"a batch of {b} examples has {rows} input rows (not a multiple)")
    k = rows // b
    # a task whose attention_mask is not one per token (packed choices: [B, 1, T, T]) gives its
    # tokens in ``token_mask``
    per_token = batch["token_mask"] if "token_mask" in batch else inputs.get("attention_mask")
    if per_token is not None:
        mask = per_token.reshape(b, k, t).bool().any(1)  # [B, T]
        pos = torch.arange(1, t + 1, device=mask.device)
        lengths = (mask * pos).amax(-1).clamp_min(1)
    else:
        lengths = torch.full((b,), t, dtype=torch.long)
    return lengths.long().cpu(), k, t


def _scan(task, chunk: int = 256) -> tuple[Tensor, int, int]:
    """Used length of every example [N], rows per example, and the longest length."""
    lengths = torch.zeros(len(task), dtype=torch.long)
    k, longest = None, 1
    for batch in task.batches(chunk):
        lens, kb, _ = _lengths(batch)
        if k is not None and kb != k:
            raise ValueError(f"task {task.name} has {k} and {kb} input rows per example")
        k = kb
        lengths[batch["index"].cpu()] = lens
        longest = max(longest, int(lens.max()))
    return lengths, int(k or 1), longest


def _hidden_size(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for attr in ("hidden_size", "d_model", "n_embd", "dim"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value
    return None


def _model_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def cache_bytes(task, model: nn.Module, *, dtype: torch.dtype | None = None) -> int:
    """Bytes the cached hidden states of ``task`` would take (N × rows × longest × H)."""
    _, k, longest = _scan(task)
    hidden = _hidden_size(model)
    if hidden is None:
        raise ValueError("cannot tell the model's hidden size from its config")
    item = torch.empty(0, dtype=dtype or _model_dtype(model)).element_size()
    return len(task) * k * longest * hidden * item


def _check_bytes(nbytes: int, max_bytes: int | None, what: str) -> None:
    if max_bytes is not None and nbytes > max_bytes:
        raise ValueError(
            f"the prefix cache of {what} would take {nbytes / 2**20:.1f} MiB ({nbytes} bytes), above "
            f"max_bytes={max_bytes} ({max_bytes / 2**20:.1f} MiB); raise max_bytes, subsample the "
            "data, use a shorter max_length, or run without the cache"
        )


def _normalise_index(index: Any, n: int) -> Tensor:
    index = torch.as_tensor(index)
    if index.dtype == torch.bool:
        index = index.nonzero().squeeze(-1)
    return index.long().reshape(-1) % n


class CachedTask:
    """An :class:`~bayes_lora.types.EncodedTask` whose batches carry the hidden states entering
    layer ``layer``, computed once by the frozen prefix of the model.

    Build it with :meth:`build` (or :func:`with_prefix_cache`) and evaluate it with the suffix
    model of the same layer (:func:`suffix_functional_model`). ``name``, ``num_classes``,
    ``labels``, ``len``, ``class_logits`` and the batch order are the wrapped task's.

    Attributes
    ----------
    task: the wrapped task.
    layer: the layer whose input is cached.
    hidden: Tensor [N, k, T_max, H] (k input rows per example: 1, or C for multiple choice),
        kept in host memory like the wrapped task's token ids (batches put ``inputs_embeds`` on
        the device of the batch's other inputs); zeros past every example's length.
    lengths: LongTensor [N], the used length of every example.
    """

    def __init__(self, task, hidden: Tensor, lengths: Tensor, *, layer: int, model_key: str,
                 data_key: str | None = None):
        if hidden.ndim != 4 or hidden.shape[0] != len(task) or lengths.shape != (len(task),):
            raise ValueError(
                f"hidden must be [N={len(task)}, k, T, H] with lengths [N], got "
                f"{tuple(hidden.shape)} and {tuple(lengths.shape)}"
            )
        self.task = task
        self.hidden = hidden
        self.lengths = lengths.long()
        self.layer = int(layer)
        self.model_key = model_key
        self._data_key = data_key

    # --- construction ---------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        task,
        model: FunctionalModel | nn.Module,
        *,
        layer: int | None = None,
        batch_size: int = 32,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        dtype: torch.dtype | None = None,
        model_key: str | None = None,
    ) -> CachedTask:
        """Run the frozen prefix of ``model`` (to the input of ``layer``, default: the first
        adapted one) over every example of ``task`` once, under ``no_grad``, in batches of
        ``batch_size`` examples of similar length. Raises a ValueError naming the size when the
        cache would take more than ``max_bytes``. ``dtype``: storage type (default: the model's;
        lower precision breaks exact equality with the full model)."""
        layout = model.layout if isinstance(model, FunctionalModel) else None
        module = model.model if isinstance(model, FunctionalModel) else model
        layout = layout or ParamLayout.from_model(module, _theta_names(module))
        layer = _check_layer(layout, layer)
        layers = module.get_submodule(layers_path(layout))
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")

        lengths, k, longest = _scan(task)
        dtype = dtype or _model_dtype(module)
        hidden_size = _hidden_size(module)
        if hidden_size is not None:
            item = torch.empty(0, dtype=dtype).element_size()
            _check_bytes(len(task) * k * longest * hidden_size * item, max_bytes, f"task {task.name}")
        model_key = model_key or model_digest(module, layer, layout=layout)

        order = torch.argsort(lengths, descending=True, stable=True)
        device = module_device(module)
        hidden = None
        for start in range(0, len(task), batch_size):
            idx = order[start : start + batch_size]
            batch = next(iter(task.subset(idx).batches(len(idx))))
            inputs = {n: v.to(device) if isinstance(v, Tensor) else v for n, v in batch["inputs"].items()}
            h = _run_prefix(module, layers, layer, inputs)  # [B*k, T, H]
            t = h.shape[1]
            if hidden is None:
                nbytes = len(task) * k * longest * h.shape[-1] * torch.empty(0, dtype=dtype).element_size()
                _check_bytes(nbytes, max_bytes, f"task {task.name}")
                hidden = torch.zeros(len(task), k, longest, h.shape[-1], dtype=dtype)
            h = h.reshape(len(idx), k, t, -1).to("cpu", dtype)
            # positions past an example's own length are padding: keep them zero
            keep = torch.arange(t)[None, :] < lengths[idx][:, None]
            hidden[idx, :, :t] = h * keep[:, None, :, None].to(h.dtype)
        return cls(task, hidden, lengths, layer=layer, model_key=model_key)

    # --- identity and persistence -----------------------------------------------------------
    @property
    def data_key(self) -> str:
        """Digest of the wrapped task's inputs (:func:`task_digest`)."""
        if self._data_key is None:
            self._data_key = task_digest(self.task)
        return self._data_key

    @property
    def key(self) -> str:
        """Digest of (frozen prefix weights, layer, the task's inputs): equal keys, equal cache."""
        return _combine(self.model_key, self.layer, self.data_key)

    @property
    def nbytes(self) -> int:
        return self.hidden.numel() * self.hidden.element_size()

    def save(self, path: str | Path) -> Path:
        """Write the hidden states to ``path`` (safetensors) and the key to ``path``.json."""
        path = Path(path)
        meta = {
            "version": CACHE_VERSION,
            "key": self.key,
            "model_key": self.model_key,
            "data_key": self.data_key,
            "layer": self.layer,
            "name": self.task.name,
            "examples": len(self),
            "shape": list(self.hidden.shape),
            "dtype": str(self.hidden.dtype),
        }
        save_tensors(path, {"hidden": self.hidden, "lengths": self.lengths}, meta)
        return path

    @classmethod
    def load(cls, path: str | Path, task, model: FunctionalModel | nn.Module, *, layer: int | None = None,
             model_key: str | None = None) -> CachedTask:
        """A cache saved by :meth:`save`, checked against ``task`` and ``model``: a ValueError
        naming what differs (model, layer or data) if the saved key does not match."""
        tensors, meta = load_tensors(path)
        if meta.get("version") != CACHE_VERSION or "key" not in meta:
            raise ValueError(f"{path}: not a prefix cache of version {CACHE_VERSION}")
        layout = model.layout if isinstance(model, FunctionalModel) else None
        module = model.model if isinstance(model, FunctionalModel) else model
        layout = layout or ParamLayout.from_model(module, _theta_names(module))
        layer = _check_layer(layout, layer)
        model_key = model_key or model_digest(module, layer, layout=layout)
        data_key = task_digest(task)
        for what, mine, theirs in (("layer", layer, meta["layer"]), ("model", model_key, meta["model_key"]),
                                   ("data", data_key, meta["data_key"])):
            if mine != theirs:
                raise ValueError(
                    f"{path}: stale prefix cache, its {what} differs ({theirs!r} saved, {mine!r} now)"
                )
        if _combine(model_key, layer, data_key) != meta["key"]:
            raise ValueError(f"{path}: the prefix cache's key does not match its parts")
        return cls(task, tensors["hidden"], tensors["lengths"], layer=layer, model_key=model_key, data_key=data_key)

    # --- the EncodedTask protocol -------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.task.name

    @property
    def num_classes(self) -> int:
        return self.task.num_classes

    @property
    def labels(self) -> Tensor:
        return self.task.labels

    def __len__(self) -> int:
        return len(self.task)

    def __repr__(self) -> str:
        return (
            f"CachedTask({self.task!r}, layer={self.layer}, hidden={list(self.hidden.shape)}, "
            f"{self.nbytes / 2**20:.1f} MiB)"
        )

    def _attach(self, batch: dict) -> dict:
        inputs = dict(batch["inputs"])
        ref = inputs.get("attention_mask", inputs.get("input_ids"))
        t = int(ref.shape[-1])
        if t > self.hidden.shape[2]:
            raise ValueError(f"a batch of length {t} is longer than the cache ({self.hidden.shape[2]})")
        idx = batch["index"].to(self.hidden.device)
        h = self.hidden[idx, :, :t].reshape(-1, t, self.hidden.shape[-1])
        if h.shape[0] != ref.shape[0]:
            raise ValueError(f"the batch has {ref.shape[0]} input rows, the cache gives {h.shape[0]}")
        inputs["inputs_embeds"] = h.to(ref.device)
        return {**batch, "inputs": inputs}

    def batches(self, batch_size: int, shuffle: bool = False,
                generator: torch.Generator | None = None, by_length: bool = False) -> Iterator[dict]:
        """The wrapped task's batches (same order, same shuffling) with ``inputs_embeds``."""
        for batch in self.task.batches(batch_size, shuffle=shuffle, generator=generator, by_length=by_length):
            yield self._attach(batch)

    def example_lengths(self) -> Tensor:
        """Tokens of every example [N] (the wrapped task's)."""
        return self.task.example_lengths()

    def full_batch(self) -> dict:
        """One batch holding every example, in order."""
        return next(iter(self.batches(len(self))))

    def class_logits(self, forward, batch: dict) -> Tensor:
        """The wrapped task's class logits, ``forward`` being the suffix model at θ."""
        try:
            return self.task.class_logits(forward, batch)
        except ValueError as e:
            if "inputs_embeds" in str(e) and "input_ids" in str(e):
                raise ValueError(
                    f"{e} — a CachedTask batch goes through the suffix model "
                    "(with_prefix_cache / suffix_functional_model), not the full model"
                ) from e
            raise

    def subset(self, index: Any) -> CachedTask:
        """The examples at ``index`` (their cached states, no recomputation)."""
        sub = self.task.subset(index)
        idx = _normalise_index(index, len(self))
        lengths = self.lengths[idx]
        longest = int(lengths.max())
        hidden = self.hidden[idx.to(self.hidden.device), :, :longest]
        return CachedTask(sub, hidden, lengths, layer=self.layer, model_key=self.model_key)


# --- one call -----------------------------------------------------------------------------------


def with_prefix_cache(
    fm: FunctionalModel,
    *tasks,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    verify: bool = True,
) -> tuple:
    """``(suffix_fm, *cached_tasks)`` for ``fm`` and ``tasks``, or ``(fm, *tasks)`` unchanged, with
    the reason logged, when the cache cannot be used: every layer is adapted (first adapted layer
    0 or None), θ is not in one stack of numbered layers, or the suffix model does not reproduce
    the full model (an architecture adding to ``inputs_embeds`` in a way :mod:`.suffix` does not
    switch off) — the results are then the full model's, only slower.

    ``max_bytes`` bounds the caches of all ``tasks`` together (checked before anything is
    computed; a ValueError naming the size, since the fix is the caller's). With ``cache_dir``,
    a cache whose key matches is loaded from ``<cache_dir>/<name>-<key>.safetensors`` and new
    ones are saved there. ``verify`` compares the suffix path with the full model on two
    examples at a perturbed θ.
    """
    layer = first_adapted_layer(fm.layout)
    if layer is None or layer == 0:
        logger.info("prefix cache off: %s", "θ holds no tensor of a numbered layer" if layer is None
                    else "the first layer (or the embeddings) is adapted, there is no frozen prefix")
        return (fm, *tasks)
    try:
        suffix = suffix_functional_model(fm, layer)
    except (ValueError, TypeError, RuntimeError) as e:
        logger.warning("prefix cache off for %s: no suffix model from layer %d (%s)", _model_name(fm), layer, e)
        return (fm, *tasks)
    model_key = model_digest(fm.model, layer, layout=fm.layout)
    total = sum(cache_bytes(t, fm.model) for t in tasks)
    _check_bytes(total, max_bytes, f"{len(tasks)} task(s) " + ", ".join(t.name for t in tasks))

    cached = []
    for i, task in enumerate(tasks):
        done, path = None, None
        if cache_dir is not None:
            path = Path(cache_dir) / f"{task.name}-{_combine(model_key, layer, task_digest(task))}.safetensors"
            if path.exists():
                done, path = CachedTask.load(path, task, fm, layer=layer, model_key=model_key), None
        if done is None:
            done = CachedTask.build(task, fm, layer=layer, batch_size=batch_size, max_bytes=max_bytes,
                                    model_key=model_key)
        if verify and i == 0:  # before any cache lands on disk
            try:
                check_suffix(fm, suffix, task, done)
            except ValueError as e:
                logger.warning("prefix cache off: %s", e)
                return (fm, *tasks)
        if path is not None:
            done.save(path)
        cached.append(done)
    return (suffix, *cached)


def _model_name(fm: FunctionalModel) -> str:
    model = fm.model.get_base_model() if hasattr(fm.model, "get_base_model") else fm.model
    return type(model).__name__


def check_suffix(fm: FunctionalModel, suffix: FunctionalModel, task, cached: CachedTask,
                 *, examples: int = 2, atol: float | None = None) -> float:
    """Compare class logits of the full and the suffix path on a few examples at a perturbed θ;
    raise a ValueError if they differ by more than ``atol`` (default 1e-4 for float32 models,
    5e-2 otherwise). Returns the largest difference."""
    if atol is None:
        atol = 1e-4 if _model_dtype(fm.model) in (torch.float32, torch.float64) else 5e-2
    n = min(examples, len(task))
    index = torch.arange(n)
    batch_full = next(iter(task.subset(index).batches(n)))
    batch_suf = next(iter(cached.subset(index).batches(n)))
    g = torch.Generator().manual_seed(0)
    base = fm.layout.read(fm.model)
    theta = base + 0.05 * torch.randn(base.shape, generator=g).to(base)
    with torch.no_grad():
        a = task.class_logits(fm.forward_at(theta), batch_full)
        b = cached.class_logits(suffix.forward_at(theta), batch_suf)
    diff = float((a - b).abs().max())
    if not math.isfinite(diff) or diff > atol:
        raise ValueError(
            f"the cached-prefix model disagrees with the full model by {diff:.3g} (> {atol}); "
            f"{_model_name(fm)} is probably an architecture whose embeddings the prefix cache cannot skip"
        )
    return diff
