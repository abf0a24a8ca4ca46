"""Tiny models and tokenizers built from configs in code: nothing is downloaded.

Every test that needs a transformer takes it from here, so the suite has one definition of
"tiny BERT classifier" and "tiny Llama causal LM".
"""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

WORDS = (
    "good great fine nice happy love best fun bad awful poor sad hate worst boring dull "
    "the a movie film was is it this very not plot acting story question answer what which "
    "sun moon water rock plant animal hot cold big small red blue green yes no"
).split()
POSITIVE = WORDS[:8]
NEGATIVE = WORDS[8:16]
FILLER = WORDS[16:]


def tiny_tokenizer(with_cls: bool = True) -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over :data:`WORDS` plus special tokens."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if with_cls:
        tk.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        eos_token="</s>",
    )


def tiny_bert(num_labels: int = 2, seed: int = 0, layers: int = 2) -> BertForSequenceClassification:
    """A 2-layer, 32-wide BERT sequence classifier with random weights."""
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(cfg).eval()


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer, 32-wide Llama-like causal LM with random weights."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(WORDS) + 5,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


def sentiment_texts(n: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """A learnable toy sentiment task: a sentence's label is the sentiment of its key word."""
    g = torch.Generator().manual_seed(seed)
    texts, labels = [], []
    for _ in range(n):
        y = int(torch.randint(2, (1,), generator=g))
        key = (POSITIVE if y else NEGATIVE)[int(torch.randint(8, (1,), generator=g))]
        fill = [FILLER[int(i)] for i in torch.randint(len(FILLER), (4,), generator=g)]
        pos = int(torch.randint(5, (1,), generator=g))
        words = fill[:pos] + [key] + fill[pos:]
        texts.append(" ".join(words))
        labels.append(y)
    return texts, labels
