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

WORDS = ["good", "great", "fine", "nice", "happy", "love", "best", "fun", "bad", "awful", "poor", "sad", "hate", "worst", "boring", "dull", "the", "a", "movie", "film", "was", "is", "it", "this", "very", "not", "plot", "acting", "story", "question", "answer", "what", "which", "sun", "moon", "water", "rock", "plant", "animal", "hot", "cold", "big", "small", "red", "blue", "green", "yes", "no"]
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


def tiny_task(n: int = 64, seed: int = 0, tokenizer=None):
    """The toy sentiment task encoded with the tiny tokenizer (an EncodedClassification)."""
    from bayes_lora.data import EncodedClassification, TextClassificationData

    texts, labels = sentiment_texts(n, seed)
    data = TextClassificationData("toy", tuple(texts), tuple(labels), 2)
    return EncodedClassification.from_data(data, tokenizer or tiny_tokenizer(), max_length=16)


def tiny_peft_model(seed: int = 0, r: int = 4, dropout: float = 0.0):
    """Tiny BERT with peft LoRA (r on query/value) and a trainable head."""
    from bayes_lora.lora.backbone import LoraSettings, add_lora

    return add_lora(tiny_bert(seed=seed), LoraSettings(r=r, alpha=2 * r, dropout=dropout), "classifier").eval()


_CONTEXT_CACHE: dict = {}


def tiny_context(n_anchors: int = 2, n_train: int = 64, steps: int = 150, dropout: float = 0.0):
    """A FitContext on the tiny model with ``n_anchors`` fine-tuned optima (cached per process).

    Returns ``(ctx, test_task)``; the anchors reach ~90 %+ accuracy on the toy task.
    """
    key = (n_anchors, n_train, steps, dropout)
    if key not in _CONTEXT_CACHE:
        import torch

        from bayes_lora.inference.base import FitContext
        from bayes_lora.lora import FullSpace, FunctionalModel
        from bayes_lora.lora.train import TrainConfig, fine_tune

        fm = FunctionalModel(tiny_peft_model(dropout=dropout))
        train = tiny_task(n_train, seed=0)
        test = tiny_task(32, seed=1)
        cfg = TrainConfig(epochs=100, max_steps=steps, batch_size=16, lr=1e-2, seed=0)
        anchors = torch.stack(
            [fine_tune(fm, FullSpace(fm.layout), train, TrainConfig(**{**cfg.__dict__, "seed": s})).latent
             for s in range(n_anchors)]
        )
        ctx = FitContext(fm=fm, train=train, anchors=anchors, train_config=cfg, projected_lr=5e-2)
        ctx.fit_projected_map()  # the LoRA-XS MAP the projected methods fit around, asked for explicitly
        _CONTEXT_CACHE[key] = (ctx, test)
    ctx, test = _CONTEXT_CACHE[key]
    return ctx, test


def write_tiny_run_setup(root, n_train: int = 96, n_test: int = 32, layers: int = 2):
    """A tiny BERT classifier saved as a local model folder and a toy SST-2-format data dir.

    Returns ``(model_dir, data_dir)``: ``model_dir`` loads with ``load_backbone(str(model_dir))``,
    ``data_dir/sst2/{train,dev,test}.tsv`` hold the toy sentiment task (5-word sentences).
    """
    from pathlib import Path

    root = Path(root)
    model_dir, data_dir = root / "tiny-bert", root / "data"
    tiny_bert(layers=layers).save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    (data_dir / "sst2").mkdir(parents=True)
    for split, n, seed in (("train", n_train, 0), ("dev", n_test, 2), ("test", n_test, 1)):
        texts, labels = sentiment_texts(n, seed)
        rows = ["sentence\tlabel"] + [f"{t}\t{y}" for t, y in zip(texts, labels)]
        (data_dir / "sst2" / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    return model_dir, data_dir


def tiny_run_config(model_dir, **tables) -> dict:
    """An experiment config (dict form) on the tiny model: every stage runs in seconds."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "model": {"name": str(model_dir), "kind": "classifier", "max_length": 16},
        "lora": {"r": 4, "alpha": 8.0, "target_modules": ["query", "value"]},
        "data": {"task": "sst2", "train_examples": 96, "min_words": 5},
        "anchors": {"count": 2, "epochs": 20.0, "lr": 1e-2, "batch_size": 16, "max_steps": 80},
        "curve": {"degree": 2, "epochs": 5.0, "max_steps": 20, "batch_size": 16}, "paths": {"points": 5},
        "posterior": {"likelihood_examples": 32},
        "evaluation": {"num_samples": 3, "batch_size": 32, "idata_draws": 6},
        "runtime": {"progress": False},
        "methods": {
            "map": {},
            "ensemble": {},
            "mc_dropout": {"p": 0.1},
            "laplace": {"space": "projected", "subset": 32},
            "swag": {"snapshots": 3, "collect_every": 2},
            "vi": {"steps": 10},
            "curve_grid": {"method": "curve", "inference": "grid", "grid_points": 21, "num_samples": 20},
            "curve_svi": {"method": "curve", "inference": "svi", "svi_steps": 10, "num_samples": 20},
        },
    }
    for name, values in tables.items():
        cfg[name] = {**cfg.get(name, {}), **values} if isinstance(values, dict) else values
    return cfg


def write_tiny_choice_setup(root, n_train: int = 48, n_test: int = 16):
    """A tiny Llama causal LM saved as a local folder and toy OpenBookQA / ARC-Easy JSONL files.

    Each question's right answer carries the question's key word's sentiment (learnable).
    Returns ``(model_dir, data_dir)``.
    """
    import json
    from pathlib import Path

    root = Path(root)
    model_dir, data_dir = root / "tiny-llama", root / "data"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer(with_cls=False).save_pretrained(model_dir)
    for task, seed0 in (("openbookqa", 0), ("arc_easy", 10), ("arc_challenge", 20)):
        (data_dir / task).mkdir(parents=True)
        for split, n, seed in (("train", n_train, seed0), ("dev", n_test, seed0 + 1), ("test", n_test, seed0 + 2)):
            texts, labels = sentiment_texts(n, seed)
            rows = []
            for i, (t, y) in enumerate(zip(texts, labels)):
                good = POSITIVE[i % len(POSITIVE)] if y else NEGATIVE[i % len(NEGATIVE)]
                bad = [NEGATIVE[(i + k) % len(NEGATIVE)] if y else POSITIVE[(i + k) % len(POSITIVE)] for k in range(3)]
                answer = i % 4
                texts4 = bad[:answer] + [good] + bad[answer:]
                rows.append(json.dumps({"id": f"{split}-{i}", "question": {"stem": t, "choices": [
                    {"text": c, "label": "ABCD"[k]} for k, c in enumerate(texts4)]}, "answerKey": "ABCD"[answer]}))
            (data_dir / task / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return model_dir, data_dir


def write_tiny_single_thread_run(root, methods: dict):
    """:func:`write_tiny_run_setup` plus a config file (3 anchors, ``methods``, one thread, no
    bars) and the environment for CLI subprocesses whose numbers are compared exactly.

    Returns ``(config_path, data_dir, env)``."""
    import os

    from bayes_lora.experiment.config import dump_toml

    model_dir, data_dir = write_tiny_run_setup(root)
    cfg = root / "c.toml"
    config = tiny_run_config(model_dir, anchors={"count": 3}, runtime={"threads": 1, "progress": False})
    config["methods"] = methods  # exactly these (a table argument would be merged into the defaults)
    cfg.write_text(dump_toml(config))
    return cfg, data_dir, {**os.environ, "OMP_NUM_THREADS": "1"}


# --- tiny models of the common families (tests/lora/test_families.py) ---------------------------

#: sequence-classifier families built by :func:`tiny_family_model`
CLASSIFIER_FAMILIES = ("bert", "roberta", "deberta-v2", "distilbert", "gpt2", "llama", "qwen2")
#: decoder families that are also causal LMs
CAUSAL_LM_FAMILIES = ("gpt2", "llama", "qwen2")


def tiny_family_config(family: str, layers: int = 3, num_labels: int = 2):
    """A transformers config of ``family`` (3 layers, width 32, 2 heads, the tiny vocabulary of
    :func:`tiny_tokenizer`, pad id 0 = ``[PAD]``, dropout off), in that family's own layout."""
    from transformers import (
        DebertaV2Config,
        DistilBertConfig,
        GPT2Config,
        Qwen2Config,
        RobertaConfig,
    )

    vocab = len(WORDS) + 5
    common = {"num_labels": num_labels, "pad_token_id": 0}
    bert_like = {"vocab_size": vocab, "hidden_size": 32, "num_hidden_layers": layers, "num_attention_heads": 2,
                 "intermediate_size": 37, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    decoder = {"vocab_size": vocab, "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": layers,
               "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
               "bos_token_id": 2, "eos_token_id": 4, "tie_word_embeddings": True}
    if family == "bert":
        return BertConfig(**bert_like, max_position_embeddings=64, **common)
    if family == "roberta":  # positions start after the padding index
        return RobertaConfig(**bert_like, max_position_embeddings=70, bos_token_id=2, eos_token_id=3, **common)
    if family == "deberta-v2":  # DeBERTa-v3 style: relative attention, no absolute positions, conv
        return DebertaV2Config(**bert_like, max_position_embeddings=64, relative_attention=True, position_buckets=8,
                               max_relative_positions=16, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                               norm_rel_ebd="layer_norm", share_att_key=True, conv_kernel_size=3, type_vocab_size=0,
                               pooler_hidden_size=32, pooler_dropout=0.0, **common)
    if family == "distilbert":
        return DistilBertConfig(vocab_size=vocab, dim=32, n_layers=layers, n_heads=2, hidden_dim=37,
                                max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                seq_classif_dropout=0.0, **common)
    if family == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=32, n_layer=layers, n_head=2, n_inner=37, n_positions=64,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0,
                          bos_token_id=2, eos_token_id=4, **common)
    if family == "llama":
        return LlamaConfig(**decoder, **common)
    if family == "qwen2":
        return Qwen2Config(**decoder, **common)
    raise ValueError(f"unknown family {family!r}")


def tiny_family_model(family: str, kind: str = "classifier", seed: int = 0, layers: int = 3,
                      num_labels: int = 2):
    """A tiny ``family`` model with random weights: a sequence classifier
    (AutoModelForSequenceClassification) or, for the decoder families, a causal LM."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = tiny_family_config(family, layers=layers, num_labels=num_labels)
    torch.manual_seed(seed)
    if kind == "classifier":
        return AutoModelForSequenceClassification.from_config(cfg).eval()
    if kind == "causal_lm":
        if family not in CAUSAL_LM_FAMILIES:
            raise ValueError(f"{family} is not a causal LM family")
        return AutoModelForCausalLM.from_config(cfg).eval()
    raise ValueError(f"unknown kind {kind!r}")


def tiny_family_tokenizer(family: str) -> PreTrainedTokenizerFast:
    """The tiny tokenizer with ``[CLS] … [SEP]`` for the encoders, plain for the decoders."""
    return tiny_tokenizer(with_cls=family not in CAUSAL_LM_FAMILIES)


# --- MPNet (sentence-transformers' all-mpnet-base-v2 family), added to the families above ----------
# Appended rather than edited in: CLASSIFIER_FAMILIES gains "mpnet" and tiny_family_config (looked
# up at call time by tiny_family_model) builds its config, every other family unchanged.

_tiny_family_config_before_mpnet = tiny_family_config
CLASSIFIER_FAMILIES = CLASSIFIER_FAMILIES + ("mpnet",)


def tiny_family_config(family: str, layers: int = 3, num_labels: int = 2):  # extends the one above
    """:func:`tiny_family_config` of the families above, and MPNet: BERT's sizes, relative
    position buckets in the encoder (32: MPNetEncoder's hard-wired count) on top of learned
    absolute positions counted RoBERTa-style past index 1 (MPNet's fixed padding index)."""
    if family != "mpnet":
        return _tiny_family_config_before_mpnet(family, layers=layers, num_labels=num_labels)
    from transformers import MPNetConfig

    return MPNetConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                       intermediate_size=37, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       max_position_embeddings=70, relative_attention_num_buckets=32, num_labels=num_labels,
                       pad_token_id=0, bos_token_id=2, eos_token_id=3)


def assert_user_error(err: str, words, case: str = "") -> None:
    """``err`` (a CLI's stderr) is one user-facing message: ``error: …``, no traceback, naming
    every one of ``words``."""
    assert err.startswith("error: ") and "Traceback" not in err, err
    for w in words:
        assert w in err, f"{case}: {w!r} not in {err!r}"
