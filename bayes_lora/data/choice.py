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
    batch_to,
    logits_of,
    pad_right,
    pad_token_id,
    used_length,
)
from bayes_lora.data.containers import MultipleChoiceData
from bayes_lora.types import Batch, ForwardFn

logger = logging.getLogger(__name__)

__all__ = ["EncodedMultipleChoice", "PackedMultipleChoice", "format_prompt"]


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


def _tokenise(data: MultipleChoiceData, tokenizer: Any, max_length: int
              ) -> tuple[list[tuple[list[int], int]], list[list[int]]]:
    """Every question's prompt ids (:func:`_prompt_ids`) and every choice's ids (``" " + text``,
    no special tokens; question-major, C per question); a ValueError naming a choice that encodes
    to no tokens or a ``max_length`` too short to score one."""
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 to score a choice, got {max_length}")
    contexts = data.contexts or (None,) * len(data)
    prompts = _prompt_ids(tokenizer, [format_prompt(q, x) for q, x in zip(data.questions, contexts)])
    answers = [f" {text}" for choices in data.choices for text in choices]
    answer_ids = tokenizer(answers, add_special_tokens=False)["input_ids"]
    c = data.num_choices
    for flat, answer in enumerate(answer_ids):
        if not answer:
            raise ValueError(f"choice {flat % c} of question {flat // c} of {data.name} ({answers[flat]!r}) "
                             "encodes to no tokens")
    return prompts, answer_ids


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
    :class:`PackedMultipleChoice` gives the same scores with the prompt computed once per question.
    """

    #: scored by a causal LM's log-likelihoods, one class per choice
    multiple_choice = True

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
        n, c = len(data), data.num_choices
        prompts, answer_ids = _tokenise(data, tokenizer, max_length)
        sequences, spans, truncated = [], [], 0
        for flat, answer in enumerate(answer_ids):
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


#: the additive attention-mask value of a pair that may not attend (as transformers' own masks)
_BLOCKED = torch.finfo(torch.float32).min


def _packed_mask(segments: Tensor) -> Tensor:
    """The additive attention mask [B, 1, T, T] (float32) of packed rows.

    Token ``q`` attends to key ``k ≤ q`` when ``k`` is a prompt token (segment 0) or in ``q``'s
    own choice; padding (segment -1) attends to itself only, so no softmax row is empty.
    """
    t = segments.shape[-1]
    q, k = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(t, t, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (q >= 0) & ((k == 0) | (k == q))
    allowed |= torch.eye(t, dtype=torch.bool, device=segments.device)
    mask = torch.zeros(allowed.shape, dtype=torch.float32, device=segments.device)
    return mask.masked_fill_(~allowed, _BLOCKED)[:, None]


def _score_sources(segments: Tensor) -> Tensor:
    """For every position of a packed row, the position whose output predicts its token: the one
    before it inside a choice, the prompt's last token for a choice's first token; -1 outside
    the choices. LongTensor [B, T]."""
    t = segments.shape[-1]
    pos = torch.arange(t, device=segments.device).expand_as(segments)
    last_prompt = (segments == 0).sum(-1, keepdim=True) - 1
    same = torch.zeros_like(segments, dtype=torch.bool)
    same[:, 1:] = segments[:, 1:] == segments[:, :-1]
    src = torch.where(same, pos - 1, last_prompt.expand_as(segments))
    return torch.where(segments > 0, src, torch.full_like(src, -1))


def _keeps_logits() -> bool:
    """Whether this transformers' causal LMs take a boolean ``logits_to_keep`` [B, T] (the LM head
    computed at the kept positions only, flattened): ``slice_logits_to_keep`` (transformers ≥ 5)."""
    try:
        from transformers.modeling_utils import slice_logits_to_keep  # noqa: F401
    except ImportError:
        return False
    return True


class PackedMultipleChoice(EncodedTaskBase):
    """A tokenised multiple-choice task for a causal LM, one packed row per question.

    The row holds the prompt once and every choice after it: ``prompt + choice_1 + … + choice_C``.
    The attention mask lets each choice token see the prompt and its own choice only, and each
    choice's positions continue the prompt's, so every choice is scored exactly as if it followed
    the prompt alone (:class:`EncodedMultipleChoice`, one row per choice) while the prompt is
    computed once instead of C times. Scores (class logits) equal the unpacked layout's up to
    float rounding.

    Parameters
    ----------
    input_ids : LongTensor[N, L]
        Right-padded packed token ids.
    segments : LongTensor[N, L]
        0 at prompt tokens, ``c + 1`` at the tokens of choice ``c``, -1 at padding.
    labels : LongTensor[N]
        Index of the correct choice.
    name : str
        Task name.
    num_choices : int
        Choices per question, C.

    Notes
    -----
    Batches hold ``inputs`` = ``input_ids`` [B, L'], ``position_ids`` [B, L'] and the additive
    ``attention_mask`` [B, 1, L', L'] (float32; L' the batch's longest row), plus ``segments``,
    ``token_mask`` [B, L'] (1 at real tokens), ``labels`` and ``index``. :meth:`class_logits`
    asks the LM for its logits at the scored positions only (``logits_to_keep``, where the
    installed transformers takes a boolean one): the LM head (vocabulary × hidden) is most of a
    small LM's cost when it runs at every position.
    """

    #: scored by a causal LM's log-likelihoods, one class per choice
    multiple_choice = True

    def __init__(self, input_ids: Tensor, segments: Tensor, labels: Tensor, *, name: str,
                 num_choices: int) -> None:
        labels = torch.as_tensor(labels, dtype=torch.long)
        if input_ids.ndim != 2 or input_ids.shape != segments.shape:
            raise ValueError("input_ids and segments must both be [N, L], got "
                             f"{tuple(input_ids.shape)} and {tuple(segments.shape)}")
        n = input_ids.shape[0]
        if labels.shape != (n,):
            raise ValueError(f"labels must be [N={n}], got {tuple(labels.shape)}")
        if n == 0:
            raise ValueError(f"encoded task {name} is empty")
        if int(labels.min()) < 0 or int(labels.max()) >= num_choices:
            raise ValueError(f"labels of task {name} must lie in 0..{num_choices - 1}")
        counts = torch.stack([(segments == c + 1).sum(-1) for c in range(num_choices)], -1)
        if bool((counts == 0).any()) or bool(((segments == 0).sum(-1) == 0).any()):
            raise ValueError(f"every question of task {name} needs a prompt token and a token per choice")
        self.name = name
        self.num_classes = int(num_choices)
        self.input_ids = input_ids.long()
        self.segments = segments.long()
        self.attention_mask = (self.segments >= 0).long()  # [N, L]: example_lengths, used_length
        self.labels = labels
        self._keep = _keeps_logits()

    @classmethod
    def from_data(cls, data: MultipleChoiceData, tokenizer: Any, *, max_length: int = 128
                  ) -> PackedMultipleChoice:
        """Tokenise every question of ``data`` into one packed row.

        The prompt is tokenised with the tokenizer's leading special tokens, each choice
        (``" " + text``) without any; ``max_length`` bounds the prompt plus the *longest* choice
        (the unit a choice is scored in): choices are cut to ``max_length - 1`` tokens and the
        prompt loses tokens from its left (after its leading special tokens) until it fits. The
        packed row itself is longer: the prompt plus all choices.
        """
        n, c = len(data), data.num_choices
        prompts, answer_ids = _tokenise(data, tokenizer, max_length)
        rows, segs, truncated = [], [], 0
        for q in range(n):
            own = [a[: max_length - 1] for a in answer_ids[q * c : (q + 1) * c]]
            prompt, n_prefix = prompts[q]
            longest = max(len(a) for a in own)
            kept = _join(prompt, n_prefix, [0] * longest, max_length)[: -longest]
            truncated += len(kept) < len(prompt)
            rows.append(kept + [tok for a in own for tok in a])
            segs.append([0] * len(kept) + [j + 1 for j, a in enumerate(own) for _ in a])
        if truncated:
            logger.debug("%s: %d prompts cut to fit max_length=%d", data.name, truncated, max_length)
        input_ids, _ = pad_right(rows, pad_token_id(tokenizer))
        segments = torch.full_like(input_ids, -1)
        for row, seg in enumerate(segs):
            segments[row, : len(seg)] = torch.tensor(seg, dtype=torch.long)
        return cls(input_ids, segments, torch.tensor(data.answers, dtype=torch.long), name=data.name,
                   num_choices=c)

    def __repr__(self) -> str:
        n, length = self.input_ids.shape
        return (f"PackedMultipleChoice(name={self.name!r}, n={n}, num_choices={self.num_classes}, "
                f"max_len={length})")

    def _make_batch(self, index: Tensor) -> Batch:
        length = used_length(self.attention_mask[index])
        segments = self.segments[index, :length]
        return {
            "inputs": {
                "input_ids": self.input_ids[index, :length],
                "attention_mask": _packed_mask(segments),
                "position_ids": _positions(segments),
            },
            "segments": segments,
            "token_mask": (segments >= 0).long(),
            "labels": self.labels[index],
            "index": index,
        }

    def class_logits(self, forward: ForwardFn, batch: Batch) -> Tensor:
        """Length-normalised log-likelihood of every choice, shape [B, C].

        The token at position ``j`` of a choice is scored by the log-softmax at its source
        position (``j - 1``, or the prompt's last token for the choice's first token), averaged
        over the choice's tokens. Computed in float32; differentiable.
        """
        segments = batch["segments"]
        input_ids = batch["inputs"]["input_ids"]
        b, length = segments.shape
        src = _score_sources(segments)
        keep = torch.zeros_like(segments, dtype=torch.bool)
        rows = torch.arange(b, device=segments.device)[:, None].expand_as(src)
        scored = src >= 0
        keep[rows[scored], src[scored]] = True
        output = forward(**batch["inputs"], logits_to_keep=keep) if self._keep else forward(**batch["inputs"])
        logits = logits_of(output)
        if logits.ndim == 3 and tuple(logits.shape[:2]) == (b, length):
            logits = logits[keep]  # a model that computed every position: the same rows
        if logits.ndim != 2 or logits.shape[0] != int(keep.sum()):
            raise ValueError(f"task {self.name} expects causal-LM logits [B, L, V] = [{b}, {length}, V] "
                             f"(or the {int(keep.sum())} kept positions), but the model returned "
                             f"{list(logits.shape)}")
        flat = keep.reshape(-1).long().cumsum(0).reshape(b, length) - 1  # row of each kept position
        logp = logits.float().log_softmax(-1)
        token_logp = logp[flat[rows[scored], src[scored]], input_ids[scored]]
        group = rows[scored] * self.num_classes + segments[scored] - 1
        c = self.num_classes
        total = token_logp.new_zeros(b * c).index_add(0, group, token_logp)
        count = token_logp.new_zeros(b * c).index_add(0, group, torch.ones_like(token_logp))
        return (total / count).view(b, c)

    def subset(self, index: Tensor | Any) -> PackedMultipleChoice:
        """The questions at ``index``, as a new task (padding trimmed to the subset's longest)."""
        index = self._check_index(index)
        length = used_length(self.attention_mask[index])
        return PackedMultipleChoice(self.input_ids[index, :length], self.segments[index, :length],
                                    self.labels[index], name=self.name, num_choices=self.num_classes)


def _positions(segments: Tensor) -> Tensor:
    """Position ids of packed rows: the prompt's 0…P-1, each choice's P…P+len-1 (padding 0)."""
    prompt = (segments == 0).sum(-1, keepdim=True)
    pos = torch.zeros_like(segments)
    pos = torch.where(segments == 0, torch.arange(segments.shape[-1], device=segments.device), pos)
    for c in range(1, int(segments.max()) + 1):
        inside = segments == c
        pos = torch.where(inside, prompt + inside.long().cumsum(-1) - 1, pos)
    return pos


def packing_error(forward: ForwardFn, data: MultipleChoiceData, tokenizer: Any, *, max_length: int = 128,
                  examples: int = 2, ignore_mask: bool = False) -> float:
    """The largest difference between the packed and the unpacked scores of the first
    ``examples`` questions of ``data`` under ``forward`` (a model, or ``fm.forward_at(θ)``).

    Packing relies on the model applying the custom 4-D attention mask and position ids it is
    given (every transformers model with eager or SDPA attention does); an attention kernel that
    takes padding masks only (e.g. flash attention) scores choices that see each other, and the
    difference shows it. ``ignore_mask=True`` gives the packed scores without the mask and the
    position ids, i.e. what such a kernel would score: the yardstick for a model in low precision,
    whose packed and unpacked scores differ by rounding alone (~0.05 in bfloat16).
    """
    n = min(examples, len(data))
    head = MultipleChoiceData(data.name, data.questions[:n], data.choices[:n], data.answers[:n], data.num_choices,
                              contexts=data.contexts[:n] if data.contexts else None)
    packed = PackedMultipleChoice.from_data(head, tokenizer, max_length=max_length)
    plain = EncodedMultipleChoice.from_data(head, tokenizer, max_length=max_length)
    weights = next(forward.parameters(), None) if isinstance(forward, torch.nn.Module) else None
    device = weights.device if weights is not None else torch.device("cpu")
    if ignore_mask:
        model = forward
        forward = lambda **kw: model(**{k: v for k, v in kw.items() if k not in ("attention_mask", "position_ids")})
    with torch.no_grad():
        a = packed.class_logits(forward, batch_to(packed.full_batch(), device))
        b = plain.class_logits(forward, batch_to(plain.full_batch(), device))
    return float((a - b).abs().max())
