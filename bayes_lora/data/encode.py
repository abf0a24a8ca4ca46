"""Tokenised tasks implementing :class:`bayes_lora.types.EncodedTask`.

* :class:`EncodedClassification`: a sequence classifier's inputs; class logits are the
  model's logits.
* :class:`PackedMultipleChoice` and :class:`EncodedMultipleChoice` (defined in
  :mod:`bayes_lora.data.choice`): every choice scored by a causal LM's length-normalised
  log-likelihood, one row per question (the prompt once) or one row per choice.

Sequences are stored right-padded to the longest in the data set; every batch is trimmed to the
longest sequence it holds (dynamic padding). :func:`encode` picks the right class for a loaded
data set.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayes_lora.data.batching import (
    EncodedTaskBase,
    logits_of,
    pad_right,
    pad_token_id,
    used_length,
)
from bayes_lora.data.choice import EncodedMultipleChoice, PackedMultipleChoice
from bayes_lora.data.containers import MultipleChoiceData, TextClassificationData
from bayes_lora.types import Batch, ForwardFn

__all__ = ["EncodedClassification", "EncodedMultipleChoice", "PackedMultipleChoice", "encode"]


class EncodedClassification(EncodedTaskBase):
    """A tokenised text classification task for a sequence classifier.

    Parameters
    ----------
    input_ids : LongTensor[N, L]
        Right-padded token ids.
    attention_mask : LongTensor[N, L]
        1 at real tokens, 0 at padding.
    labels : LongTensor[N]
        Class of every example.
    name : str
        Task name.
    num_classes : int
        Number of classes C; :meth:`class_logits` checks the model returns C logits.
    token_type_ids : LongTensor[N, L], optional
        Segment ids of text pairs (for models that use them, e.g. BERT); batches carry them.
    label_names : tuple of str
        Class names in id order (empty: unnamed).
    """

    def __init__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        labels: Tensor,
        *,
        name: str,
        num_classes: int,
        token_type_ids: Tensor | None = None,
        label_names: tuple[str, ...] = (),
    ) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if input_ids.ndim != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                "input_ids and attention_mask must both be [N, L], got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        if labels.shape != (input_ids.shape[0],):
            raise ValueError(f"labels must be [N={input_ids.shape[0]}], got {tuple(labels.shape)}")
        if labels.numel() == 0:
            raise ValueError(f"encoded task {name} is empty")
        if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
            raise ValueError(f"labels of task {name} must lie in 0..{num_classes - 1}")
        if token_type_ids is not None and token_type_ids.shape != input_ids.shape:
            raise ValueError(
                f"token_type_ids must be {tuple(input_ids.shape)}, got {tuple(token_type_ids.shape)}"
            )
        self.name = name
        self.num_classes = int(num_classes)
        self.input_ids = input_ids.long()
        self.attention_mask = attention_mask.long()
        self.token_type_ids = None if token_type_ids is None else token_type_ids.long()
        self.labels = labels
        self.label_names = tuple(label_names)

    @classmethod
    def from_data(
        cls, data: TextClassificationData, tokenizer: Any, *, max_length: int = 128
    ) -> EncodedClassification:
        """Tokenise ``data`` (with special tokens, truncated to ``max_length`` tokens).

        Text pairs go to the tokenizer as pairs (its separator between them; the longer text is
        cut first). Segment ids are kept when the tokenizer returns them for pairs; a single
        text's are all 0, the models' default, and are left out.
        """
        pairs = data.text_pairs
        args = (list(data.texts),) if pairs is None else (list(data.texts), list(pairs))
        enc = tokenizer(*args, truncation=True, max_length=max_length)
        ids = enc["input_ids"]
        empty = [row for row, seq in enumerate(ids) if not seq]
        if empty:
            raise ValueError(
                f"{len(empty)} texts of {data.name} encode to no tokens (first at row {empty[0]})"
            )
        input_ids, attention_mask = pad_right(ids, pad_token_id(tokenizer))
        token_type_ids = None
        if pairs is not None and enc.get("token_type_ids") is not None:
            token_type_ids, _ = pad_right(enc["token_type_ids"], 0)
            if not bool(token_type_ids.any()):
                token_type_ids = None
        labels = torch.tensor(data.labels, dtype=torch.long)
        return cls(input_ids, attention_mask, labels, name=data.name, num_classes=data.num_classes,
                   token_type_ids=token_type_ids, label_names=data.label_names)

    def __repr__(self) -> str:
        return (
            f"EncodedClassification(name={self.name!r}, n={len(self)}, "
            f"num_classes={self.num_classes}, max_len={self.input_ids.shape[1]})"
        )

    def _make_batch(self, index: Tensor) -> Batch:
        mask = self.attention_mask[index]
        length = used_length(mask)
        inputs = {"input_ids": self.input_ids[index, :length], "attention_mask": mask[:, :length]}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids[index, :length]
        return {"inputs": inputs, "labels": self.labels[index], "index": index}

    def class_logits(self, forward: ForwardFn, batch: Batch) -> Tensor:
        """Run ``forward(**batch["inputs"])`` and return its logits, checked to be [B, C]."""
        logits = logits_of(forward(**batch["inputs"]))
        expected = (batch["labels"].shape[0], self.num_classes)
        if logits.ndim != 2 or tuple(logits.shape) != expected:
            raise ValueError(
                f"task {self.name} expects class logits of shape [B, num_classes] = "
                f"{list(expected)}, but the model returned {list(logits.shape)}; does the "
                f"classifier head have num_labels={self.num_classes}?"
            )
        return logits

    def subset(self, index: Tensor | Any) -> EncodedClassification:
        """The examples at ``index``, as a new task (padding trimmed to the subset's longest)."""
        index = self._check_index(index)
        mask = self.attention_mask[index]
        length = used_length(mask)
        return EncodedClassification(
            self.input_ids[index, :length],
            mask[:, :length],
            self.labels[index],
            name=self.name,
            num_classes=self.num_classes,
            token_type_ids=None if self.token_type_ids is None else self.token_type_ids[index, :length],
            label_names=self.label_names,
        )


def encode(
    data: TextClassificationData | MultipleChoiceData, tokenizer: Any, *, max_length: int = 128,
    packed: bool = True,
) -> EncodedClassification | PackedMultipleChoice | EncodedMultipleChoice:
    """Tokenise a loaded data set into the matching :class:`~bayes_lora.types.EncodedTask`.

    Parameters
    ----------
    data : TextClassificationData or MultipleChoiceData
        The loaded data set.
    tokenizer : transformers tokenizer
        Any callable tokenizer with the Hugging Face interface.
    max_length : int
        Maximum number of tokens per sequence (multiple choice: of the prompt and one choice).
    packed : bool
        Multiple choice only: one row per question holding the prompt once and every choice
        (:class:`PackedMultipleChoice`, the same scores for a fraction of the compute), or one
        row per choice (:class:`EncodedMultipleChoice`, for a model whose attention ignores a
        custom 4-D mask; :func:`~bayes_lora.data.choice.packing_error` tells).

    Returns
    -------
    EncodedClassification, PackedMultipleChoice or EncodedMultipleChoice
        For text classification or multiple choice respectively.
    """
    if isinstance(data, TextClassificationData):
        return EncodedClassification.from_data(data, tokenizer, max_length=max_length)
    if isinstance(data, MultipleChoiceData):
        cls = PackedMultipleChoice if packed else EncodedMultipleChoice
        return cls.from_data(data, tokenizer, max_length=max_length)
    raise TypeError(
        f"cannot encode {type(data).__name__}; expected TextClassificationData or "
        "MultipleChoiceData"
    )
