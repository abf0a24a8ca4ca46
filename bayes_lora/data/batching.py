"""Padding and batching helpers shared by the encoded tasks of :mod:`bayes_lora.data.encode`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from bayes_lora.types import Batch, length_order

__all__ = [
    "EncodedTaskBase",
    "batch_to",
    "logits_of",
    "pad_right",
    "pad_token_id",
    "used_length",
]


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad token id, else its eos token id, else 0."""
    for attr in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, attr, None)
        if isinstance(value, int):
            return value
    return 0


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token id lists into ``input_ids`` and ``attention_mask`` LongTensors [N, L]."""
    length = max((len(s) for s in sequences), default=0)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def used_length(attention_mask: Tensor) -> int:
    """One past the last position that any sequence attends to (at least 1)."""
    used = attention_mask.reshape(-1, attention_mask.shape[-1]).any(0).nonzero()
    return int(used.max()) + 1 if used.numel() else 1


def logits_of(output: Any) -> Tensor:
    """The logits of a model output: ``output.logits``, ``output["logits"]`` or the tensor."""
    if hasattr(output, "logits"):
        return output.logits
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    if isinstance(output, Tensor):
        return output
    raise TypeError(f"forward returned {type(output).__name__}, which holds no logits")


def batch_to(batch: Batch, device: torch.device | str) -> Batch:
    """A copy of ``batch`` with every tensor (also inside nested dicts) moved to ``device``."""
    moved: Batch = {}
    for key, value in batch.items():
        if isinstance(value, Tensor):
            moved[key] = value.to(device)
        elif isinstance(value, Mapping):
            moved[key] = batch_to(dict(value), device)
        else:
            moved[key] = value
    return moved


class EncodedTaskBase:
    """Batching and indexing shared by the encoded tasks.

    Subclasses set ``name``, ``num_classes`` and ``labels`` and implement :meth:`_make_batch`,
    :meth:`class_logits` and :meth:`subset`.
    """

    name: str
    num_classes: int
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _make_batch(self, index: Tensor) -> Batch:
        raise NotImplementedError

    def example_lengths(self) -> Tensor:
        """Tokens of every example [N] (a multiple-choice question: its longest choice)."""
        mask = self.attention_mask
        return mask.reshape(mask.shape[0], -1, mask.shape[-1]).sum(-1).amax(-1)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        by_length: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches covering every example exactly once.

        Parameters
        ----------
        batch_size : int
            Examples per batch; the last batch may be smaller.
        shuffle : bool
            Visit the examples in a random order drawn with ``generator``.
        generator : torch.Generator, optional
            Source of the shuffling order (the global generator when ``None``).
        by_length : bool
            Visit the examples sorted by length (stable), so that each batch pads to little more
            than its own examples: for evaluation, where the order does not matter — place the
            results back with each batch's ``index``. Not with ``shuffle``.

        Yields
        ------
        dict
            ``{"inputs": {...}, "labels": LongTensor[B], "index": LongTensor[B], ...}``, where
            ``index`` holds the positions of the batch's examples in this task.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if shuffle and by_length:
            raise ValueError("batches: shuffle and by_length exclude each other")
        n = len(self)
        if by_length:
            order = length_order(self)
        else:
            order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            yield self._make_batch(order[start : start + batch_size])

    def full_batch(self) -> Batch:
        """One batch holding every example, in order (e.g. for full-data potentials)."""
        return self._make_batch(torch.arange(len(self)))

    def _check_index(self, index: Tensor | Any) -> Tensor:
        """``index`` (positions, or a boolean mask over examples) as a 1-D LongTensor."""
        index = torch.as_tensor(index)
        if index.dtype == torch.bool:
            if index.shape != (len(self),):
                raise IndexError(f"boolean mask must have shape [{len(self)}]")
            index = index.nonzero().squeeze(-1)
        index = index.long().reshape(-1)
        if index.numel() == 0:
            raise ValueError(f"subset of task {self.name} needs at least one index")
        n = len(self)
        if int(index.min()) < -n or int(index.max()) >= n:
            raise IndexError(f"index out of range for task {self.name} with {n} examples")
        return index % n
