"""Class logits of a task at θ, for all examples or a subsample: what a Pyro likelihood needs."""
from __future__ import annotations

import torch
from torch import Tensor

from ..lora.params import FunctionalModel
from ..types import EncodedTask, over_batches


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
        self.source_task = task  # the task as given: ``example_index`` are rows of it
        if examples is not None and examples < len(task):
            g = torch.Generator().manual_seed(int(seed))
            self.example_index = torch.randperm(len(task), generator=g)[:examples].sort().values
            task = task.subset(self.example_index)
        else:
            self.example_index = torch.arange(len(task))
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
