"""Class logits of a task at θ, for all examples or a subsample: what a Pyro likelihood needs."""
from __future__ import annotations

import torch
from torch import Tensor

from ..lora.params import FunctionalModel
from ..types import EncodedTask, over_batches


def seeded_rows(n: int, examples: int | None, seed: int = 0) -> Tensor | None:
    """The sorted rows of a seeded subset of ``examples`` of ``n`` (None: all rows are used)."""
    if examples is None or examples >= n:
        return None
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n, generator=g)[:examples].sort().values


class TaskLogits:
    """``logits(θ, index)`` → [n, C] class logits of the task's examples at θ (differentiable).

    Parameters
    ----------
    fm: the functional model.
    task: the (training) task; ``examples`` keeps a seeded subset of it (rows ``example_index``).
    batch_size: examples per forward pass.
    """

    def __init__(self, fm: FunctionalModel, task: EncodedTask, *, batch_size: int = 128,
                 examples: int | None = None, seed: int = 0):
        #: the rows of the task given that the likelihood keeps (None: all of them)
        self.rows = seeded_rows(len(task), examples, seed)
        self.example_index = torch.arange(len(task)) if self.rows is None else self.rows
        if self.rows is not None:
            task = task.subset(self.rows)
        self.fm, self.task, self.batch_size = fm, task, batch_size

    @property
    def num_examples(self) -> int:
        return len(self.task)

    @property
    def labels(self) -> Tensor:
        return self.task.labels

    def logits(self, theta: Tensor, index: Tensor | None = None) -> Tensor:
        task = self.task if index is None else self.task.subset(index)
        fwd = self.fm.forward_at(theta)
        return over_batches(task, self.batch_size, lambda b: task.class_logits(fwd, b))
