"""Multiple-choice questions scored by a causal LM's length-normalised log-likelihood.

For question ``q`` and choice ``c`` the model reads ``f"Question: {q}\\nAnswer:"`` followed by
``f" {c}"``; the class logit of ``c`` is the mean log-probability of the continuation tokens.
Scoring the choice texts (not answer letters) is what lets small LMs beat chance.
"""

from __future__ import annotations

import logging
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
from bayes_lora.data.containers import MultipleChoiceData
from bayes_lora.types import Batch, ForwardFn

logger = logging.getLogger(__name__)

__all__ = ["EncodedMultipleChoice", "format_prompt"]


def format_prompt(question: str, context: str | None = None) -> str:
    """The prompt that precedes every choice of ``question`` (after its passage, if any)."""
    passage = f"{context}\n" if context else ""
    return f"{passage}Question: {question}\nAnswer:"


def _find(haystack: list[int], needle: list[int]) -> int | None:
    """Start of the first occurrence of ``needle`` in ``haystack``, or ``None``."""
    for start in range(len(haystack) - len(needle) + 1):
        if haystack[start : start + len(needle)] == needle:
            return start
    return None


def _prompt_ids(tokenizer: Any, prompts: list[str]) -> list[tuple[list[int], int]]:
    """Token ids of every prompt with the tokenizer's leading special tokens (e.g. BOS).

    Trailing special tokens (EOS, ``[SEP]``) are dropped: they would sit between the prompt and
    the answer. Returns ``(ids, number of leading special tokens)`` per prompt.
    """
    with_special = tokenizer(prompts, add_special_tokens=True)["input_ids"]
    plain = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    out = []
    for full, body in zip(with_special, plain):
        start = _find(full, body) if body else None
        out.append((full[:start] + body, start) if start is not None else (full, 0))
    return out


def _join(prompt: list[int], n_prefix: int, answer: list[int], max_length: int) -> list[int]:
    """``prompt + answer`` in at most ``max_length`` tokens.

    The prompt loses tokens from its left, after its leading special tokens (kept while room
    allows); at least one prompt token is kept so the first answer token can be scored.
    """
    answer = answer[: max_length - 1]
    budget = max_length - len(answer)
    if len(prompt) > budget:
        keep_prefix = min(n_prefix, budget - 1)
        prompt = prompt[:keep_prefix] + prompt[len(prompt) - (budget - keep_prefix) :]
    return prompt + answer


class EncodedMultipleChoice(EncodedTaskBase):
    """A tokenised multiple-choice task for a causal LM.

    Parameters
    ----------
    input_ids : LongTensor[N, C, L]
        Right-padded ``prompt + choice`` token ids of every question and choice.
    attention_mask : LongTensor[N, C, L]
        1 at real tokens, 0 at padding.
    choice_mask : LongTensor[N, C, L]
        1 at the positions of the choice (continuation) tokens, 0 elsewhere.
    labels : LongTensor[N]
        Index of the correct choice.
    name : str
        Task name.

    Notes
    -----
    Batches hold ``inputs`` flattened to ``[B*C, L']`` (``L'`` the batch's longest sequence),
    plus ``choice_mask`` [B, C, L'], ``labels`` and ``index``.
    """

    def __init__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        choice_mask: Tensor,
        labels: Tensor,
        *,
        name: str,
    ) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        shapes = {tuple(t.shape) for t in (input_ids, attention_mask, choice_mask)}
        if input_ids.ndim != 3 or len(shapes) != 1:
            raise ValueError(
                "input_ids, attention_mask and choice_mask must all be [N, C, L], got "
                f"{[tuple(t.shape) for t in (input_ids, attention_mask, choice_mask)]}"
            )
        n, c, _ = input_ids.shape
        if labels.shape != (n,):
            raise ValueError(f"labels must be [N={n}], got {tuple(labels.shape)}")
        if n == 0:
            raise ValueError(f"encoded task {name} is empty")
        if int(labels.min()) < 0 or int(labels.max()) >= c:
            raise ValueError(f"labels of task {name} must lie in 0..{c - 1}")
        if bool((choice_mask[..., 1:].sum(-1) == 0).any()):
            raise ValueError(
                f"every choice of task {name} needs at least one choice token after position 0"
            )
        self.name = name
        self.num_classes = int(c)
        self.input_ids = input_ids.long()
        self.attention_mask = attention_mask.long()
        self.choice_mask = choice_mask.long()
        self.labels = labels

    @classmethod
    def from_data(
        cls, data: MultipleChoiceData, tokenizer: Any, *, max_length: int = 128
    ) -> EncodedMultipleChoice:
        """Tokenise every ``(question, choice)`` pair of ``data``.

        The prompt is tokenised with the tokenizer's leading special tokens, the choice
        (``" " + text``) without any; their concatenation is cut to ``max_length`` tokens
        by dropping prompt tokens from the left. Tokenizers without a pad token pad with their
        eos token (or 0); padding is on the right.
        """
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 to score a choice, got {max_length}")
        n, c = len(data), data.num_choices
        contexts = data.contexts or (None,) * n
        prompts = _prompt_ids(tokenizer, [format_prompt(q, c) for q, c in zip(data.questions, contexts)])
        answers = [f" {text}" for choices in data.choices for text in choices]
        answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
        sequences, spans, truncated = [], [], 0
        for flat, answer in enumerate(answer_ids):
            if not answer:
                raise ValueError(
                    f"choice {flat % c} of question {flat // c} of {data.name} "
                    f"({answers[flat]!r}) encodes to no tokens"
                )
            prompt, n_prefix = prompts[flat // c]
            seq = _join(prompt, n_prefix, answer, max_length)
            truncated += len(seq) < len(prompt) + len(answer)
            kept = min(len(answer), max_length - 1)
            sequences.append(seq)
            spans.append((len(seq) - kept, len(seq)))
        if truncated:
            logger.debug("%s: %d sequences cut to max_length=%d", data.name, truncated, max_length)
        input_ids, attention_mask = pad_right(sequences, pad_token_id(tokenizer))
        choice_mask = torch.zeros_like(attention_mask)
        for row, (start, stop) in enumerate(spans):
            choice_mask[row, start:stop] = 1
        shape = (n, c, input_ids.shape[-1])
        return cls(
            input_ids.view(shape),
            attention_mask.view(shape),
            choice_mask.view(shape),
            torch.tensor(data.answers, dtype=torch.long),
            name=data.name,
        )

    def __repr__(self) -> str:
        n, c, length = self.input_ids.shape
        return (
            f"EncodedMultipleChoice(name={self.name!r}, n={n}, num_choices={c}, max_len={length})"
        )

    def _make_batch(self, index: Tensor) -> Batch:
        mask = self.attention_mask[index]
        length = used_length(mask)
        flat = (-1, length)
        return {
            "inputs": {
                "input_ids": self.input_ids[index, :, :length].reshape(flat),
                "attention_mask": mask[:, :, :length].reshape(flat),
            },
            "choice_mask": self.choice_mask[index, :, :length],
            "labels": self.labels[index],
            "index": index,
        }

    def class_logits(self, forward: ForwardFn, batch: Batch) -> Tensor:
        """Length-normalised log-likelihood of every choice, shape [B, C].

        Runs ``forward(**batch["inputs"])`` to get LM logits [B*C, L', V]; the log-probability
        of the token at position ``j`` is read from the log-softmax at position ``j - 1`` and
        averaged over the choice tokens. Computed in float32; differentiable.
        """
        input_ids = batch["inputs"]["input_ids"]
        choice_mask = batch["choice_mask"]
        b, c, length = choice_mask.shape
        logits = logits_of(forward(**batch["inputs"]))
        if logits.ndim != 3 or tuple(logits.shape[:2]) != (b * c, length):
            raise ValueError(
                f"task {self.name} expects causal-LM logits of shape [B*C, L, V] = "
                f"[{b * c}, {length}, V], but the model returned {list(logits.shape)}"
            )
        scored = choice_mask.reshape(b * c, length)[:, 1:].bool()  # predicted from position j-1
        token_logits = logits[:, :-1][scored].float()  # [M, V], only the scored positions
        targets = input_ids[:, 1:][scored]
        token_logp = token_logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)
        rows = torch.arange(b * c, device=scored.device)[:, None].expand_as(scored)[scored]
        total = token_logp.new_zeros(b * c).index_add(0, rows, token_logp)
        return (total / scored.sum(-1).to(total.dtype)).view(b, c)

    def subset(self, index: Tensor | Any) -> EncodedMultipleChoice:
        """The questions at ``index``, as a new task (padding trimmed to the subset's longest)."""
        index = self._check_index(index)
        mask = self.attention_mask[index]
        length = used_length(mask)
        return EncodedMultipleChoice(
            self.input_ids[index, :, :length],
            mask[:, :, :length],
            self.choice_mask[index, :, :length],
            self.labels[index],
            name=self.name,
        )
