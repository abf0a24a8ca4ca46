"""The suffix of a transformer from its first adapted layer L on, fed with the hidden states
entering L (the model side of :mod:`bayes_lora.lora.prefix`'s frozen-prefix cache).

* :func:`first_adapted_layer` / :func:`layers_path`: where θ's tensors sit in the layer stack.
* :func:`suffix_model`: a shallow copy of the module path from the root to the layer list in which
  the layers ``< L`` are pass-through modules returning their hidden input as the real layer
  returns its output, and whatever the base model adds to ``inputs_embeds`` before the first
  layer is switched off:

  - a BERT-style ``embeddings`` module (BERT, RoBERTa, DistilBERT, DeBERTa: position /
    token-type embeddings, a LayerNorm, a mask) returns ``inputs_embeds`` unchanged;
  - GPT-2's learned positions (``wpe``, added to ``inputs_embeds`` inside ``GPT2Model``) add zero;
  - DeBERTa-v2's convolution after layer 0 (``encoder.conv``, a skipped layer's output here)
    hands the cached states on unchanged;
  - Llama / Qwen2 compute rotary positions from position ids, not from the embeddings, and take
    ``inputs_embeds`` natively;
  - MPNet's ``embeddings`` (learned absolute positions counted from the token ids) is a
    BERT-style one; its relative position bias is computed inside ``MPNetEncoder.forward`` from
    the hidden states' length alone (positions 0 … T − 1, the same bias for every row), so the
    suffix's encoder recomputes exactly the full model's bias from the cached states of a batch
    (sliced to the batch's length) — nothing to switch off.

  Every parameter outside those modules is shared with the full model under its own name, so θ
  and its layout work unchanged; the original model is not modified. The base model (the
  module owning the token embeddings) drops ``input_ids`` whenever ``inputs_embeds`` is given;
  the modules above it still see the token ids, which the decoder classifiers (GPT-2, Llama,
  Qwen2) need to find the last token that is not padding.
  When the head reads the first token only (BERT's sequence classifier: pooler on token 0;
  MPNet's: its classification head on token 0), the
  last layer computes token 0's row only (:func:`first_token_layer`): its keys and values still
  come from every token, its query, attention output and feed-forward from token 0 alone — the
  same logits and gradients for ~10/12 less of the last layer's work.
* :class:`SuffixFunctionalModel`: a functional model over that suffix, with the full model's layout.
* ``_run_prefix``: the hidden states entering layer L, by a forward pass stopped there (used to
  probe the layers' output form and to fill the cache).
"""
from __future__ import annotations

import copy
import inspect
import math
import re
import types
from typing import Any

import torch
from torch import Tensor, nn

from .device import module_device
from .params import FunctionalModel, ParamLayout, is_lora_factor

__all__ = [
    "SuffixFunctionalModel",
    "first_adapted_layer",
    "first_token_layer",
    "layers_path",
    "suffix_functional_model",
    "suffix_model",
]

# the first numbered segment of a parameter name: ``<path of the layer list>.<index>.``
# (``encoder.layer.3.``, ``model.layers.3.``, ``transformer.h.3.``)
_LAYER_RE = re.compile(r"(?:^|\.)([A-Za-z_]\w*)\.(\d+)(?:\.|$)")
_EMBEDDING_HINTS = ("embeddings.", "embed_tokens.", "embed_positions.", "wte.", "wpe.", "lora_embedding_")


# --- where the adapters are -------------------------------------------------------------------


def _split_layer(name: str) -> tuple[str, int] | None:
    """``(path of the layer list, layer index)`` of a parameter name, or None."""
    m = _LAYER_RE.search(name)
    if m is None:
        return None
    return name[: m.end(1)], int(m.group(2))


def _theta_names(obj: ParamLayout | FunctionalModel | nn.Module) -> tuple[str, ...]:
    if isinstance(obj, FunctionalModel):
        obj = obj.layout
    if isinstance(obj, ParamLayout):
        return obj.names
    if isinstance(obj, nn.Module):
        return tuple(
            n for n, p in obj.named_parameters()
            if is_lora_factor(n) or ".modules_to_save." in n or p.requires_grad
        )
    raise TypeError(f"expected a ParamLayout, FunctionalModel or nn.Module, got {type(obj).__name__}")


def _stack_paths(names: tuple[str, ...]) -> set[str]:
    """Paths of the numbered stacks holding θ's LoRA factors (every θ tensor when it has none):
    a head made of an ``nn.Sequential`` (``classifier.0.weight``) is not a layer stack."""
    lora = [n for n in names if is_lora_factor(n)]
    return {s[0] for s in map(_split_layer, lora or names) if s is not None}


def first_adapted_layer(layout_or_model: ParamLayout | FunctionalModel | nn.Module) -> int | None:
    """The smallest transformer layer index holding a tensor of θ (a LoRA factor).

    Layers are read from the first numbered segment of the parameter names (``layer.<i>.``,
    ``layers.<i>.``, GPT-2's ``h.<i>.``). Returns None when no θ tensor sits in a numbered layer
    (e.g. only a head is trained), and 0 when a θ tensor sits in the embeddings (nothing can be
    cached then). Given an ``nn.Module``, θ is its LoRA factors, peft ``modules_to_save`` copies
    and trainable parameters.
    """
    names = _theta_names(layout_or_model)
    if any(h in n for n in names for h in _EMBEDDING_HINTS):
        return 0
    paths = _stack_paths(names)
    found = [s[1] for s in map(_split_layer, names) if s is not None and s[0] in paths]
    return min(found) if found else None


def layers_path(layout_or_model: ParamLayout | FunctionalModel | nn.Module) -> str:
    """Dotted path of the layer list (``...encoder.layer`` / ``...model.layers`` /
    ``...transformer.h``) θ's LoRA factors live in."""
    paths = _stack_paths(_theta_names(layout_or_model))
    if len(paths) != 1:
        raise ValueError(
            "the prefix cache needs the θ tensors in one stack of numbered layers, found "
            f"{sorted(paths) or 'none'}"
        )
    return paths.pop()


def _check_layer(layout: ParamLayout, layer: int | None) -> int:
    first = first_adapted_layer(layout)
    if layer is None:
        layer = first
    if layer is None or layer < 1:
        raise ValueError(
            f"nothing to cache: θ starts at layer {first} (0: every layer or the embeddings are "
            "adapted; None: θ holds no tensor of a numbered layer)"
        )
    if first is not None and layer > first:
        raise ValueError(
            f"cannot cache the prefix up to layer {layer}: θ has tensors in layer {first}"
        )
    return int(layer)


# --- the suffix model -------------------------------------------------------------------------


class _StopForward(Exception):
    """Raised by a pre-hook to end a forward pass at the layer whose input is wanted."""

    def __init__(self, hidden: Tensor):
        super().__init__()
        self.hidden = hidden


class _PassThroughEmbeddings(nn.Module):
    """Stands for a BERT-style ``embeddings`` module: returns ``inputs_embeds`` unchanged."""

    def forward(self, *args: Any, inputs_embeds: Tensor | None = None, **kwargs: Any) -> Tensor:
        if inputs_embeds is None:
            inputs_embeds = next(
                (a for a in args if isinstance(a, Tensor) and a.is_floating_point() and a.ndim == 3), None
            )
        if inputs_embeds is None:
            raise ValueError(
                "this suffix model starts from cached hidden states: call it with inputs_embeds "
                "(a CachedTask batch), not with token ids"
            )
        return inputs_embeds


class _SkippedLayer(nn.Module):
    """Stands for a frozen layer below the cached one: returns its hidden input as the real
    layer returns its output (a tensor, or a tuple of ``n`` entries led by the hidden state)."""

    def __init__(self, index: int, tuple_len: int | None):
        super().__init__()
        self.index = index
        self.tuple_len = tuple_len

    def forward(self, hidden_states: Tensor, *args: Any, **kwargs: Any):
        if self.tuple_len is None:
            return hidden_states
        return (hidden_states,) + (None,) * (self.tuple_len - 1)

    def extra_repr(self) -> str:
        return f"index={self.index} (cached)"


class _ZeroPositions(nn.Module):
    """Stands for GPT-2's learned position embeddings (``wpe``), which ``GPT2Model`` adds to
    ``inputs_embeds``: the cached hidden states hold them already, so this adds a zero (a 0-dim
    tensor: the sum keeps the hidden states' shape and dtype)."""

    def forward(self, position_ids: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return torch.zeros((), device=position_ids.device)


class _PassThroughConv(nn.Module):
    """Stands for DeBERTa-v2's ``encoder.conv``, applied to the output of layer 0 (a skipped
    layer here, whose output is the cached hidden states that already went through it)."""

    def forward(self, hidden_states: Tensor, residual_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return residual_states


class _DropInputIds:
    """A forward that drops ``input_ids`` (by keyword or position) when ``inputs_embeds`` is given."""

    def __init__(self, forward):
        self._forward = forward
        try:
            names = list(inspect.signature(forward).parameters)
        except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
            names = []
        self._position = names.index("input_ids") if "input_ids" in names else None

    def __call__(self, *args: Any, **kwargs: Any):
        if kwargs.get("inputs_embeds") is not None:
            kwargs.pop("input_ids", None)
            if self._position is not None and len(args) > self._position:
                args = args[: self._position] + (None,) + args[self._position + 1:]
        return self._forward(*args, **kwargs)


def _takes_inputs_embeds(module: nn.Module) -> bool:
    try:
        params = inspect.signature(type(module).forward).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
    return "inputs_embeds" in params and "input_ids" in params


def _shallow_copy(module: nn.Module) -> nn.Module:
    """A new module object sharing parameters, buffers and children with ``module``, with its
    own child / parameter / hook tables (so editing the copy leaves ``module`` alone)."""
    cls = type(module)
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for key, value in state.items():
        if key.startswith("_") and isinstance(value, dict):
            state[key] = copy.copy(value)
    new.__dict__.update(state)
    return new





def _run_prefix(model: nn.Module, layers: nn.ModuleList, layer: int, inputs: dict, *, record: bool = False):
    """The hidden states entering ``layers[layer]`` for ``inputs`` (the forward stops there);
    with ``record``, also the output form of layer ``layer - 1`` (None: a tensor; n: a tuple)."""
    form: list = []

    def stop(_module, args, kwargs):
        raise _StopForward(args[0] if args else kwargs["hidden_states"])

    def seen(_module, _args, out):
        form.append(len(out) if isinstance(out, tuple) else None)

    handles = [layers[layer].register_forward_pre_hook(stop, with_kwargs=True)]
    if record:
        handles.append(layers[layer - 1].register_forward_hook(seen))
    was_training = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            model(**inputs)
    except _StopForward as done:
        hidden = done.hidden
    else:
        raise RuntimeError(f"the forward pass never reached layer {layer}; cannot cache its input")
    finally:
        for h in handles:
            h.remove()
        for m, t in was_training:
            m.training = t
    if not isinstance(hidden, Tensor):
        raise TypeError(f"layer {layer} receives a {type(hidden).__name__}, not a hidden-state tensor")
    return (hidden, form[0] if form else None) if record else hidden


# --- a last layer that computes the first token only --------------------------------------------


def _first_token_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None,
                         *args: Any, **kwargs: Any) -> Tensor:
    """A ``BertLayer``'s forward for the output row of token 0 only: the keys and values of every
    token, the query, attention output, residual and feed-forward of token 0 (returns [B, 1, H]).

    While a dropout of the layer is active (MC dropout) the whole layer runs and token 0's row is
    kept: the random masks are then the full model's, draw for draw."""
    # looked up per call: MC dropout swaps dropout modules into the adapters after the suffix is built
    if any(m.training and m.p > 0 for m in self.modules() if isinstance(m, nn.Dropout)):
        return type(self).forward(self, hidden_states, attention_mask, *args, **kwargs)[:, :1]
    from transformers.models.bert.modeling_bert import (
        ALL_ATTENTION_FUNCTIONS,
        eager_attention_forward,
    )

    kwargs.pop("encoder_attention_mask", None)
    kwargs.pop("cache", None)
    sa = self.attention.self
    b, t = hidden_states.shape[:2]
    first = hidden_states[:, :1]
    heads = (sa.num_attention_heads, sa.attention_head_size)
    query = sa.query(first).view(b, 1, *heads).transpose(1, 2)
    key = sa.key(hidden_states).view(b, t, *heads).transpose(1, 2)
    value = sa.value(hidden_states).view(b, t, *heads).transpose(1, 2)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] == t:
        attention_mask = attention_mask[:, :, :1]  # the query row of token 0
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(sa.config._attn_implementation, eager_attention_forward)
    context, _ = attend(sa, query, key, value, attention_mask, dropout=sa.dropout.p if sa.training else 0.0,
                        scaling=sa.scaling, **kwargs)
    attended = self.attention.output(context.reshape(b, 1, -1).contiguous(), first)
    return self.feed_forward_chunk(attended)


def _mpnet_first_token_forward(self: nn.Module, hidden_states: Tensor, attention_mask: Tensor | None = None,
                               position_bias: Tensor | None = None, output_attentions: bool = False,
                               **kwargs: Any) -> tuple[Tensor]:
    """An ``MPNetLayer``'s forward for the output row of token 0 only (returns ``([B, 1, H],)``):
    the keys and values of every token, token 0's query row of the attention scores (with its
    row of the relative position bias and of the mask), attention output, residual and
    feed-forward. The same operations in the same order as ``MPNetSelfAttention``.

    While a dropout of the layer is active (MC dropout), or attentions are asked for, the whole
    layer runs and token 0's row is kept."""
    if output_attentions or any(m.training and m.p > 0 for m in self.modules() if isinstance(m, nn.Dropout)):
        out = type(self).forward(self, hidden_states, attention_mask, position_bias,
                                 output_attentions=output_attentions, **kwargs)
        return (out[0][:, :1],) + tuple(out[1:])
    sa = self.attention.attn
    b, t = hidden_states.shape[:2]
    first = hidden_states[:, :1]
    heads = (-1, sa.attention_head_size)
    q = sa.q(first).view(b, 1, *heads).transpose(1, 2)
    k = sa.k(hidden_states).view(b, t, *heads).transpose(1, 2)
    v = sa.v(hidden_states).view(b, t, *heads).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(sa.attention_head_size)
    if position_bias is not None:
        scores = scores + (position_bias[:, :, :1] if position_bias.shape[-2] == t else position_bias)
    if attention_mask is not None:
        if attention_mask.dim() == 4 and attention_mask.shape[-2] == t:
            attention_mask = attention_mask[:, :, :1]  # the query row of token 0
        scores = scores + attention_mask
    probs = nn.functional.softmax(scores, dim=-1)
    context = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(b, 1, sa.all_head_size)
    attended = self.attention.LayerNorm(sa.o(context) + first)
    return (self.output(self.intermediate(attended), attended),)


def _bert_last_layer(model: nn.Module, layers: nn.ModuleList) -> bool:
    """A BERT sequence classifier (its pooler reads token 0) whose last layer is a plain encoder
    ``BertLayer``."""
    try:
        from transformers.models.bert.modeling_bert import (
            BertForSequenceClassification,
            BertLayer,
            BertSelfAttention,
        )
    except ImportError:  # pragma: no cover - transformers without BERT
        return False
    heads = [m for m in model.modules() if isinstance(m, BertForSequenceClassification)]
    if len(heads) != 1 or heads[0].bert.pooler is None or heads[0].bert.encoder.layer is not layers:
        return False
    last = layers[len(layers) - 1]
    return (
        type(last) is BertLayer and type(last.attention.self) is BertSelfAttention
        and not last.is_decoder and not last.add_cross_attention and not last.chunk_size_feed_forward
        and not last.attention.self.is_causal
    )


def _mpnet_last_layer(model: nn.Module, layers: nn.ModuleList) -> bool:
    """An MPNet sequence classifier (its ``MPNetClassificationHead`` reads token 0) whose last
    layer is a plain ``MPNetLayer``."""
    try:
        from transformers.models.mpnet.modeling_mpnet import (
            MPNetClassificationHead,
            MPNetForSequenceClassification,
            MPNetLayer,
            MPNetSelfAttention,
        )
    except ImportError:  # pragma: no cover - transformers without MPNet
        return False
    heads = [m for m in model.modules() if isinstance(m, MPNetForSequenceClassification)]
    if len(heads) != 1 or heads[0].mpnet.encoder.layer is not layers:
        return False
    head = heads[0].classifier  # peft's modules_to_save wraps the head: look at what it wraps
    head = getattr(head, "original_module", head)
    last = layers[len(layers) - 1]
    return (type(head) is MPNetClassificationHead and type(last) is MPNetLayer
            and type(last.attention.attn) is MPNetSelfAttention)


def first_token_layer(model: nn.Module, layers: nn.ModuleList) -> int | None:
    """The index of ``layers``' last layer when only its token-0 row reaches the output of
    ``model`` and its token-0 row can be computed alone: a BERT sequence classifier (the pooler
    reads token 0) with a plain encoder ``BertLayer`` last (:func:`_first_token_forward`), or an
    MPNet sequence classifier (the head reads token 0) with a plain ``MPNetLayer`` last
    (:func:`_mpnet_first_token_forward`); else None."""
    if _bert_last_layer(model, layers) or _mpnet_last_layer(model, layers):
        return len(layers) - 1
    return None


def _first_token_forward_of(layer: nn.Module, tuple_len: int | None):
    """The token-0 forward for ``layer``, given how the real layer returns its output (None: a
    tensor, n: a tuple of n), or None when there is none for that form."""
    name = type(layer).__name__
    if name == "BertLayer" and tuple_len is None:  # transformers 5's BertLayer returns a tensor
        return _first_token_forward
    if name == "MPNetLayer" and tuple_len == 1:  # (hidden,) without attentions
        return _mpnet_first_token_forward
    return None


def suffix_model(model: nn.Module, layer: int, *, layout: ParamLayout | None = None,
                 first_token: bool = True) -> nn.Module:
    """The part of ``model`` from layer ``layer`` on, fed with ``inputs_embeds`` = the hidden
    states entering that layer. Same parameters (shared) and names for layers ``≥ layer``.

    ``model`` is left as it was. ``layout`` (default: ``model``'s LoRA tensors) locates the
    layer stack and is checked to be fully inside the suffix. With ``first_token`` (default), a
    last layer whose token-0 row alone reaches the output computes that row only
    (:func:`first_token_layer`; the root's ``first_token_layer`` names it, or is None).
    """
    where = layers_path(layout if layout is not None else model)
    layers = model.get_submodule(where)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{where!r} is a {type(layers).__name__}, expected the nn.ModuleList of layers")
    if not 1 <= layer < len(layers):
        raise ValueError(f"layer must be in 1..{len(layers) - 1}, got {layer}")
    # how the real layer hands its output on (a tensor in transformers 5, a tuple in 4.x)
    probe = {"input_ids": torch.zeros(1, 2, dtype=torch.long, device=module_device(model)),
             "attention_mask": torch.ones(1, 2, dtype=torch.long, device=module_device(model))}
    _, tuple_len = _run_prefix(model, layers, layer, probe, record=True)

    parts = where.split(".")
    chain = [model]
    for part in parts:
        chain.append(chain[-1].get_submodule(part))
    copies = [_shallow_copy(m) for m in chain]
    for parent, part, child in zip(copies[:-1], parts, copies[1:]):
        parent._modules[part] = child
    new_layers = copies[-1]
    for i in range(layer):
        new_layers._modules[str(i)] = _SkippedLayer(i, tuple_len)
    # the nearest ancestor of the layer stack with a BERT-style embeddings module
    for owner in reversed(copies[:-1]):
        if isinstance(owner._modules.get("embeddings"), nn.Module):
            owner._modules["embeddings"] = _PassThroughEmbeddings()
            break
    # GPT-2 (and GPT-Neo) add learned positions to inputs_embeds inside the base model
    for owner in reversed(copies[:-1]):
        if isinstance(owner._modules.get("wpe"), nn.Embedding):
            owner._modules["wpe"] = _ZeroPositions()
            break
    # DeBERTa-v2's convolution on layer 0's output
    parent = copies[-2]
    if type(parent._modules.get("conv")).__name__ == "ConvLayer":
        parent._modules["conv"] = _PassThroughConv()
    last = first_token_layer(model, layers) if first_token else None
    one_row = _first_token_forward_of(layers[last], tuple_len) if last is not None else None
    if one_row is None:
        last = None
    else:
        single = _shallow_copy(layers[last])
        single.forward = types.MethodType(one_row, single)
        new_layers._modules[str(last)] = single
    # the base model (the deepest module above the layers taking input_ids or inputs_embeds)
    # drops the token ids; the modules above it keep them (a decoder classifier pools the last
    # token that is not padding, found from the ids)
    base = next((m for m in reversed(copies[:-1]) if _takes_inputs_embeds(m)), copies[0])
    base.forward = _DropInputIds(type(base).forward.__get__(base))
    root = copies[0]
    root.prefix_layer = layer
    root.first_token_layer = last

    if layout is not None:
        have = dict(root.named_parameters())
        missing = [n for n in layout.names if n not in have]
        if missing:
            raise ValueError(f"θ tensors {missing[:3]} lie in the cached prefix (layers < {layer})")
    return root


class SuffixFunctionalModel(FunctionalModel):
    """A :class:`FunctionalModel` over the suffix of ``full.model`` from layer ``layer``.

    Its layout is the full model's (same names, same θ); it takes the batches of a
    :class:`CachedTask` built for the same layer. ``full`` is the functional model it came from.
    """

    def __init__(self, full: FunctionalModel, layer: int):
        self.full = full
        self.layer = layer
        super().__init__(suffix_model(full.model, layer, layout=full.layout), full.layout)


def suffix_functional_model(fm: FunctionalModel, layer: int | None = None) -> SuffixFunctionalModel:
    """The suffix of ``fm`` from ``layer`` (default: its first adapted layer)."""
    return SuffixFunctionalModel(fm, _check_layer(fm.layout, layer))
