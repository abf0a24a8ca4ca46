"""Protocols and small frozen result types shared by every part of bayes_lora.

Nothing here imports torch-heavy optional libraries; every subpackage may import this module.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

#: A batch as produced by :meth:`EncodedTask.batches`: ``{"inputs": {...model kwargs...},
#: "labels": LongTensor[B]}`` plus task-specific extras (e.g. ``"choice_mask"``).
Batch = dict[str, Any]

#: ``forward(**model_inputs) -> raw model logits`` (e.g. [B, C] for a sequence classifier,
#: [B*C, L, V] for a causal LM scoring C choices).
ForwardFn = Callable[..., Tensor]


@runtime_checkable
class EncodedTask(Protocol):
    """A tokenised dataset that can be batched and turned into class logits.

    Attributes
    ----------
    name: short task name ("sst2", "openbookqa", ...).
    num_classes: number of classes C (choices, for multiple choice).
    labels: LongTensor[N] of the true class of every example.
    """

    name: str
    num_classes: int
    labels: Tensor

    def __len__(self) -> int: ...

    def batches(
        self, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
        by_length: bool = False,
    ) -> Iterator[Batch]:
        """Yield batches in order (or shuffled by ``generator``, or sorted by length); the last one
        may be smaller; each batch's ``index`` holds its examples' positions in the task."""

    def example_lengths(self) -> Tensor:
        """Tokens of every example, LongTensor[N] (what ``by_length`` sorts by)."""

    def class_logits(self, forward: ForwardFn, batch: Batch) -> Tensor:
        """Run ``forward(**batch["inputs"])`` and return class logits of shape [B, C]."""

    def subset(self, index: Tensor) -> EncodedTask:
        """The examples at ``index`` (a LongTensor), as a task of the same kind."""


def length_order(task: EncodedTask) -> Tensor:
    """The task's example positions sorted by length (stable): the visiting order of
    ``batches(by_length=True)``, so that consecutive examples pad to about the same length."""
    return torch.sort(task.example_lengths(), stable=True).indices


def over_batches(task: EncodedTask, batch_size: int, fn: Callable[[Batch], Tensor], *, dim: int = 0) -> Tensor:
    """``fn`` over every batch of ``task``, the outputs concatenated along ``dim`` in task order.

    The batches are visited sorted by length (``by_length=True``), so each pads to little more
    than its own examples — the 872 SST-2 test sentences in batches of 64 hold 23,512 tokens
    instead of 44,448 in dataset order (21,943 without padding) — and the outputs are put back in
    order with the batches' ``index``. For evaluation: ``fn`` sees every example exactly once.
    """
    outs, where = [], []
    for batch in task.batches(batch_size, by_length=True):
        outs.append(fn(batch))
        where.append(batch["index"])
    out = torch.cat(outs, dim=dim)
    order = torch.cat(where)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return out.index_select(dim, inverse.to(out.device))


@dataclass(frozen=True)
class Prediction:
    """Per-sample predictive probabilities of a posterior on one dataset.

    Attributes
    ----------
    probs: Tensor[S, N, C], probabilities of every posterior sample s for every example (in host
        memory: a GPU's are copied there).
    labels: LongTensor[N] or None, the true labels when known (likewise).
    """

    probs: Tensor
    labels: Tensor | None = None

    def __post_init__(self) -> None:
        # results live in host memory, whatever device computed them: metrics, ArviZ and the saved
        # files read them there (a no-op for CPU tensors)
        object.__setattr__(self, "probs", self.probs.cpu())
        if self.labels is not None:
            object.__setattr__(self, "labels", self.labels.cpu())

    @property
    def mean(self) -> Tensor:
        """Bayesian model average p̄ = mean_s p_s, shape [N, C]."""
        return self.probs.mean(0)

    def log_likelihood(self) -> Tensor:
        """Per-observation log-likelihood log p(y_i | x_i, θ_s), shape [S, N]."""
        if self.labels is None:
            raise ValueError("log_likelihood needs labels; this Prediction has none")
        idx = self.labels.view(1, -1, 1).expand(self.probs.shape[0], -1, 1)
        return self.probs.clamp_min(1e-12).log().gather(-1, idx).squeeze(-1)


@dataclass(frozen=True)
class FitInfo:
    """What a fit reports besides the posterior: losses, timings, sampler statistics."""

    seconds: float = 0.0
    losses: tuple[float, ...] = ()
    stats: Mapping[str, Any] = field(default_factory=dict)
