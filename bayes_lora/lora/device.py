"""Where a run computes (CPU or a GPU) and in which type the frozen base weights are held.

The split is by role. The frozen base model, the encoded data and the prefix caches live on the
*device*; θ and everything it is made from (latents, subspace factors, curve control points,
optimiser states) live in host memory as float32, where the seeded CPU generators draw them, and
:class:`~bayes_lora.lora.params.FunctionalModel` moves θ to the model's device at each forward
pass (differentiably: gradients flow back to the host latents). θ is small (≈ 2.5 M numbers for
LoRA r = 8 on q/v of every layer of a 7B model: 10 MB per pass, against gigabytes of weights), so
the copy costs little, while one convention for θ keeps every backend and every random draw
identical on CPU and GPU runs. On a CPU run every ``.to(device)`` of this convention returns its
input unchanged: the numbers are bit-identical to code that never moved anything.

The base weights may be bfloat16 or float16 (:data:`DTYPES`): half the memory of float32 and the
fast tensor-core matmuls of a GPU. The LoRA factors stay float32 (peft's
``autocast_adapter_dtype``; peft casts the layer input to the adapter's type and the sum back to
the base's), and so do trained heads (:func:`~bayes_lora.lora.backbone.load_backbone` casts them
and their inputs).
"""
from __future__ import annotations

import copy
import os
from collections.abc import Callable

import torch
from torch import Tensor, nn

#: the values of ``runtime.device`` / ``--device``
DEVICES = ("cpu", "cuda", "auto")

#: the values of ``model.dtype`` and the torch types they name
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str, *, cuda_available: Callable[[], bool] = torch.cuda.is_available,
                   key: str = "runtime.device") -> torch.device:
    """The torch device ``name`` ("cpu", "cuda" or "auto") stands for.

    "auto" is cuda when ``cuda_available()`` (default :func:`torch.cuda.is_available`), else cpu.
    "cuda" is the process's own GPU under torchrun / accelerate (``cuda:$LOCAL_RANK``), else
    ``cuda:0``. A ValueError naming ``key`` when "cuda" is asked for and no GPU is visible: a run
    that silently fell back to the CPU would take hours where the user planned minutes.
    """
    if name not in DEVICES:
        raise ValueError(f"{key} must be one of {list(DEVICES)}, got {name!r}")
    if name == "cpu" or (name == "auto" and not cuda_available()):
        return torch.device("cpu")
    if not cuda_available():
        build = torch.version.cuda and f"built for CUDA {torch.version.cuda}" or "built without CUDA"
        raise ValueError(f"{key} = 'cuda' (from the config or --device), but torch sees no GPU (torch "
                         f"{torch.__version__}, {build}; torch.cuda.is_available() is False): set {key} = "
                         "\"cpu\" or \"auto\", or pass --device cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))


def resolve_dtype(name: str, *, key: str = "model.dtype") -> torch.dtype:
    """The torch type of ``model.dtype`` ("float32", "bfloat16", "float16"); a ValueError naming
    ``key`` otherwise."""
    if name not in DTYPES:
        raise ValueError(f"{key} must be one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (cpu for a module without parameters)."""
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _is_task(obj) -> bool:
    return callable(getattr(obj, "batches", None)) and callable(getattr(obj, "class_logits", None))


def _moved(value, device: torch.device):
    if isinstance(value, Tensor):
        return value.to(device)
    if _is_task(value):
        return task_to(value, device)
    if type(value) is dict:
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)) and any(isinstance(v, Tensor) for v in value):
        return type(value)(_moved(v, device) for v in value)
    return value


def _tensors(obj) -> list[Tensor]:
    out = []
    for value in vars(obj).values():
        if isinstance(value, Tensor):
            out.append(value)
        elif _is_task(value):
            out.extend(_tensors(value))
    return out


def task_to(task, device: torch.device | str):
    """``task`` (any encoded task: classification, multiple choice, a prefix-cached task wrapping
    one) with every tensor it holds on ``device``: its batches, the batches of its subsets and
    the cached hidden states then come out there, where the model reads them.

    A copy (the task itself is left as it was), or ``task`` itself when everything is on
    ``device`` already — on a CPU run nothing is copied. Tensors in the task's attributes (and in
    dicts, lists or tuples of them) are moved, and a wrapped task is moved the same way.
    """
    device = torch.device(device)
    if all(t.device == device for t in _tensors(task)):
        return task
    new = copy.copy(task)
    for name, value in vars(task).items():
        new.__dict__[name] = _moved(value, device)
    return new


__all__ = ["DEVICES", "DTYPES", "module_device", "resolve_device", "resolve_dtype", "task_to"]
