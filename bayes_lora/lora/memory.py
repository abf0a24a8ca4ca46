"""How much device memory a run needs, estimated before any weight is loaded.

The estimate is the sum of

* **weights**: the base model's parameters × the bytes of ``model.dtype``. The parameters are
  counted from the model folder without loading it: exactly from ``config.json`` for the
  Llama-style decoders (Llama, Qwen2, Qwen3, Mistral: :func:`decoder_parameters`), else exactly
  from the safetensors headers (:func:`safetensors_parameters`: each file's JSON header gives
  every tensor's shape), else roughly (12·L·H² + V·H);
* **θ on the device**: the LoRA numbers D (from the hidden, head and MLP sizes of the targeted
  projections) and their gradient, float32 (the latents and the optimiser stay in host memory:
  :mod:`bayes_lora.lora.device`);
* **the prefix caches**: examples × rows per example × ``max_length`` × hidden size × the bytes
  of the model's type (an upper bound: examples shorter than ``max_length`` take less);
* **activations**, roughly, the larger of a training step and an evaluation pass. A training step
  keeps, per layer that gradients flow through, s·b·h·(34 + 5·a·s/h) bytes in 16-bit types
  (Korthikanti et al. 2022, "Reducing activation recomputation in large transformer models",
  eq. 1; twice that in float32), with s = ``max_length``, b = rows of a batch (questions × choices
  of a causal LM), h the hidden size and a the heads; a causal LM adds its vocabulary logits,
  b·s·V in the model's type plus float32 log-probabilities and their gradient. An evaluation pass
  keeps no graph: one layer's working set and the logits of the rows of up to ``num_samples``
  posterior samples folded into one batch (GPU predictions fold samples);
* a fixed **overhead** of 512 MiB on a GPU (the CUDA context and the allocator's slack).

It is a plan-ahead number, meant to refuse a run that cannot fit (a 7B model in float32 on a
24 GiB GPU) before minutes of loading, not to predict the peak to the megabyte.
"""
from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

#: model types whose parameter count :func:`decoder_parameters` knows exactly
DECODER_TYPES = ("llama", "qwen2", "qwen3", "mistral")

#: bytes per element of each ``model.dtype``
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}

#: the CUDA context and the caching allocator's slack, added on a GPU
GPU_OVERHEAD = 512 * 2**20

GiB = 2**30


class InsufficientMemory(ValueError):
    """The device cannot hold the run (the message names the device, its free memory and the estimate)."""


def _get(config: Mapping, *names: str, default=None):
    for name in names:
        value = config.get(name)
        if value is not None:
            return value
    return default


def _head_dim(config: Mapping) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def decoder_parameters(config: Mapping) -> int | None:
    """The exact parameter count of a Llama-style decoder (:data:`DECODER_TYPES`) from its
    ``config.json`` values: embeddings V·H; per layer the q/k/v/o projections (grouped key /
    value heads; biases on q, k, v for Qwen2, on all four with ``attention_bias``; Qwen3's q/k
    norms), the gated MLP 3·H·I (+ biases with ``mlp_bias``) and two RMS norms; the final norm;
    the LM head V·H unless ``tie_word_embeddings``. None for another ``model_type``."""
    kind = config.get("model_type")
    if kind not in DECODER_TYPES:
        return None
    h, v, n_layers = int(config["hidden_size"]), int(config["vocab_size"]), int(config["num_hidden_layers"])
    inter = int(config["intermediate_size"])
    d = _head_dim(config)
    q = int(config["num_attention_heads"]) * d
    kv = int(_get(config, "num_key_value_heads", default=config["num_attention_heads"])) * d
    attn = h * q + 2 * h * kv + q * h
    if kind == "qwen2":
        attn += q + 2 * kv
    elif config.get("attention_bias"):
        attn += q + 2 * kv + h
    if kind == "qwen3":
        attn += 2 * d
    mlp = 3 * h * inter + (2 * inter + h if config.get("mlp_bias") else 0)
    layer = attn + mlp + 2 * h
    head = 0 if config.get("tie_word_embeddings", False) else v * h
    return v * h + n_layers * layer + h + head


def safetensors_parameters(folder: str | Path) -> int | None:
    """The number of elements of every tensor in the ``*.safetensors`` files of ``folder``, read
    from their headers alone (8 bytes of length, then a JSON table of names, types and shapes);
    None when there is no such file or a header is unreadable."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        try:
            with open(f, "rb") as fh:
                (n,) = struct.unpack("<Q", fh.read(8))
                if n > 100 * 2**20:
                    return None
                header = json.loads(fh.read(n))
        except (OSError, struct.error, ValueError):
            return None
        total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def count_parameters(folder: str | Path) -> tuple[int, str]:
    """``(parameters, how they were counted)`` of the model in ``folder`` (its config.json, and
    its safetensors headers when the architecture is not a known decoder)."""
    config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    config = config.get("text_config", config) if "hidden_size" not in config else config
    n = decoder_parameters(config)
    if n is not None:
        return n, "config.json"
    n = safetensors_parameters(folder)
    if n is not None:
        return n, "safetensors headers"
    h = int(_get(config, "hidden_size", "d_model", "n_embd", "dim", default=0))
    layers = int(_get(config, "num_hidden_layers", "n_layer", "n_layers", "num_layers", default=0))
    v = int(config.get("vocab_size", 0))
    if not h or not layers:
        raise ValueError(f"{folder}/config.json gives no hidden size and layer count to estimate the model's size")
    return 12 * layers * h * h + v * h, "approximately, from config.json"


def lora_numbers(config: Mapping, targets: Sequence[str], r: int, layers: int) -> int:
    """D, the LoRA numbers r·(in + out) of the ``targets`` projections of a Llama-style decoder on
    ``layers`` layers (0 for a target whose sizes the config does not give)."""
    h = int(config.get("hidden_size", 0))
    if not h or "num_attention_heads" not in config:
        return 0
    d = _head_dim(config)
    q = int(config["num_attention_heads"]) * d
    kv = int(_get(config, "num_key_value_heads", default=config["num_attention_heads"])) * d
    inter = int(config.get("intermediate_size", 0))
    sizes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
             "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    return layers * sum(r * sum(sizes[t]) for t in targets if t in sizes)


@dataclass(frozen=True)
class MemoryEstimate:
    """A run's device memory, by part (bytes); :attr:`total` is their sum.

    Attributes
    ----------
    parameters: the base model's parameters, and ``counted``: how they were counted.
    dtype: ``model.dtype``.
    weights: parameters × bytes of ``dtype``.
    lora: θ and its gradient on the device (float32).
    cache: the prefix caches (0 without).
    activations: the larger of a training step's and an evaluation pass's.
    overhead: the CUDA context and allocator slack (0 on a CPU).
    """

    parameters: int
    counted: str
    dtype: str
    weights: int
    lora: int
    cache: int
    activations: int
    overhead: int = 0

    @property
    def total(self) -> int:
        return self.weights + self.lora + self.cache + self.activations + self.overhead

    def describe(self) -> str:
        """One line: the total and its parts."""
        gib = lambda b: f"{b / GiB:.2f} GiB"
        weights = (f"weights {gib(self.weights)} ({self.parameters / 1e6:.1f}M parameters from {self.counted} × "
                   f"{DTYPE_BYTES[self.dtype]} B, {self.dtype})")
        parts = [weights, f"LoRA θ {gib(self.lora)}"]
        if self.cache:
            parts.append(f"prefix caches {gib(self.cache)}")
        parts.append(f"activations ~{gib(self.activations)}")
        if self.overhead:
            parts.append(f"CUDA context ~{gib(self.overhead)}")
        return f"about {gib(self.total)}: " + ", ".join(parts)


def estimate_memory(
    folder: str | Path,
    *,
    dtype: str = "float32",
    max_length: int,
    train_rows: int,
    eval_rows: int,
    cached_rows: int = 0,
    targets: Sequence[str] = ("q_proj", "v_proj"),
    r: int = 8,
    layers: Sequence[int] | None = None,
    causal_lm: bool = True,
    gpu: bool = False,
) -> MemoryEstimate:
    """The :class:`MemoryEstimate` of a run on the model in ``folder`` (see the module doc).

    ``train_rows``: model input rows of one training batch (examples × choices); ``eval_rows``:
    rows of one evaluation pass (its batch × choices × samples folded together); ``cached_rows``:
    rows of every prefix-cached task together (0: no cache); ``layers``: the adapted layers (None:
    all), gradients flowing through those from the lowest up.
    """
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"model.dtype must be one of {list(DTYPE_BYTES)}, got {dtype!r}")
    item = DTYPE_BYTES[dtype]
    raw = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
    config = raw.get("text_config", raw) if "hidden_size" not in raw else raw
    n, counted = count_parameters(folder)
    h = int(_get(config, "hidden_size", "d_model", "n_embd", "dim", default=0))
    n_layers = int(_get(config, "num_hidden_layers", "n_layer", "n_layers", "num_layers", default=1))
    heads = int(_get(config, "num_attention_heads", "n_head", "n_heads", default=1))
    inter = int(_get(config, "intermediate_size", "n_inner", "hidden_dim", default=4 * h) or 4 * h)
    vocab = int(config.get("vocab_size", 0))
    adapted = n_layers if not layers else len(layers)
    graph_layers = n_layers - min(layers) if layers else n_layers
    d = lora_numbers(config, targets, r, adapted)
    s = max_length
    per_layer = s * train_rows * h * (34 + 5 * heads * s / max(h, 1)) * item / 2
    train = graph_layers * per_layer + (train_rows * s * vocab * (item + 8) if causal_lm else 0)
    # no graph: a layer's inputs, attention scores and MLP, and the logits
    evaluate = eval_rows * s * (6 * h + 3 * inter + heads * s) * item
    evaluate += eval_rows * s * vocab * (item + 4) if causal_lm else 0
    return MemoryEstimate(
        parameters=n, counted=counted, dtype=dtype, weights=n * item, lora=2 * 4 * d,
        cache=cached_rows * s * h * item, activations=int(max(train, evaluate)),
        overhead=GPU_OVERHEAD if gpu else 0,
    )


def cuda_free_memory(device: torch.device) -> tuple[int, int]:
    """``(free, total)`` bytes of a GPU (:func:`torch.cuda.mem_get_info`)."""
    return torch.cuda.mem_get_info(device)


def check_fits(estimate: MemoryEstimate, device: torch.device | str,
               free_memory: Callable[[torch.device], tuple[int, int]] | None = None) -> None:
    """Raise :class:`InsufficientMemory` naming the device, its free memory and the estimate when
    ``estimate.total`` exceeds what ``free_memory(device)`` (``(free, total)`` bytes) says is
    free. ``free_memory`` defaults to :func:`cuda_free_memory` on a GPU; a CPU is not checked
    unless a source is given (the operating system pages, and the host is shared)."""
    device = torch.device(device)
    if free_memory is None:
        if device.type != "cuda":
            return
        free_memory = cuda_free_memory
    free, total = free_memory(device)
    if estimate.total > free:
        raise InsufficientMemory(
            f"the run does not fit on {device} (runtime.device / --device): {free / GiB:.2f} GiB free of "
            f"{total / GiB:.2f} GiB, and the run needs {estimate.describe()}. Use a device with more free "
            "memory, model.dtype = \"bfloat16\", smaller batch sizes (anchors / curve / evaluation.batch_size) "
            "or model.max_length, or fewer adapted layers (lora.layers)")


__all__ = ["InsufficientMemory", "MemoryEstimate", "check_fits", "count_parameters", "decoder_parameters",
           "estimate_memory", "lora_numbers", "safetensors_parameters"]
