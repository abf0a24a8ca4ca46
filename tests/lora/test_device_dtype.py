"""The GPU path, tested on the CPU: bfloat16 base weights under float32 θ, the device
resolution, the memory estimate and its refusal, and a whole run with a bfloat16 Qwen2.

A tiny Qwen2 (2 layers, width 32, the tiny tokenizer's vocabulary) is saved as a local folder and
loaded by :func:`load_backbone` as float32 and as bfloat16; torch runs bfloat16 matmuls on a CPU,
so the bfloat16 code path runs here as it would on a GPU, only slower.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import REPO
from scenarios import (
    NEGATIVE,
    POSITIVE,
    WORDS,
    sentiment_texts,
    tiny_family_config,
    write_tiny_choice_setup,
)

from bayes_lora.data import MultipleChoiceData, encode
from bayes_lora.experiment.config import ConfigError, ExperimentConfig, dump_toml
from bayes_lora.experiment.runner import Runner
from bayes_lora.inference.base import predict_probs
from bayes_lora.lora.backbone import LoraSettings, load_backbone
from bayes_lora.lora.device import resolve_device, resolve_dtype, task_to
from bayes_lora.lora.memory import (
    InsufficientMemory,
    check_fits,
    count_parameters,
    decoder_parameters,
    estimate_memory,
    safetensors_parameters,
)
from bayes_lora.lora.params import FunctionalModel
from bayes_lora.lora.train import init_theta

LORA = LoraSettings(r=2, alpha=4.0, target_modules=("q_proj", "v_proj"), train_head=False)


def tiny_qwen2_tokenizer():
    """A byte-level BPE tokenizer (400 tokens) learnt from the tiny vocabulary's words: loaded back
    from a folder next to a Qwen2 config, transformers builds its Qwen2Tokenizer from the vocabulary
    and merges, which a word-level tokenizer does not survive."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    corpus = [" ".join(WORDS), "Question: Answer:", " ".join(reversed(WORDS))] * 4
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def tiny_qwen2(vocab: int, kind: str = "causal_lm", seed: int = 0):
    """A 2-layer, 32-wide Qwen2 (tied embeddings, grouped key / value heads) with random weights."""
    from transformers import Qwen2ForCausalLM, Qwen2ForSequenceClassification

    cfg = tiny_family_config("qwen2", layers=2)
    cfg.vocab_size, cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = vocab, vocab - 400, vocab - 400, None
    torch.manual_seed(seed)
    return (Qwen2ForCausalLM if kind == "causal_lm" else Qwen2ForSequenceClassification)(cfg).eval()


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    """A tiny Qwen2 causal LM (2 layers, width 32) and its tokenizer in a local folder."""
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    tok = tiny_qwen2_tokenizer()
    tiny_qwen2(len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _questions(n: int = 6):
    texts, labels = sentiment_texts(n, seed=3)
    choices = [tuple(POSITIVE[i % 8] if (k == 0) == bool(y) else NEGATIVE[(i + k) % 8] for k in range(4))
               for i, y in enumerate(labels)]
    return MultipleChoiceData("toy_mc", tuple(texts), tuple(choices), tuple(0 if y else 1 for y in labels), 4)


# --- (a) dtype: bfloat16 base, float32 θ ---------------------------------------------------------


def test_bfloat16_base_keeps_lora_factors_and_theta_float32(qwen_dir):
    bb = load_backbone(str(qwen_dir), kind="causal_lm", lora=LORA, dtype="bfloat16")
    params = dict(bb.model.named_parameters())
    frozen = {p.dtype for n, p in params.items() if not p.requires_grad}
    trained = {p.dtype for n, p in params.items() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}
    assert params["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"].dtype == torch.bfloat16
    fm = FunctionalModel(bb.model)
    theta = init_theta(fm.layout, seed=0)
    assert fm.layout.read(bb.model).dtype == torch.float32 and fm.layout.dim == 2 * 2 * (2 * 32 + 32 + 16)
    task = encode(_questions(), bb.tokenizer, max_length=48)
    batch = next(iter(task.batches(3)))
    logits = task.class_logits(fm.forward_at(theta), batch)
    assert logits.dtype == torch.float32 and logits.shape == (3, 4) and torch.isfinite(logits).all()
    # gradients reach θ (float32) through the bfloat16 base
    th = theta.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(task.class_logits(fm.forward_at(th), batch), batch["labels"]).backward()
    assert th.grad.dtype == torch.float32 and float(th.grad.abs().sum()) > 0


def test_a_trained_head_over_a_bfloat16_base_is_float32(qwen_dir):
    """A classifier's head (peft's modules_to_save copy) is part of θ: float32, with its input cast."""
    folder = qwen_dir.parent / "tiny-qwen2-cls"
    tok = tiny_qwen2_tokenizer()
    tiny_qwen2(len(tok), kind="classifier").save_pretrained(folder)
    tok.save_pretrained(folder)
    lora = LoraSettings(r=2, alpha=4.0, target_modules=("q_proj", "v_proj"), train_head=True)
    out = {}
    for dtype in ("float32", "bfloat16"):
        bb = load_backbone(str(folder), kind="classifier", num_labels=2, lora=lora, dtype=dtype)
        fm = FunctionalModel(bb.model)
        head = [n for n in fm.layout.names if "modules_to_save" in n]
        assert head and all(dict(bb.model.named_parameters())[n].dtype == torch.float32 for n in head)
        ids = bb.tokenizer(["good movie", "awful plot"], return_tensors="pt", padding=True)
        out[dtype] = fm(init_theta(fm.layout, seed=1), **ids)
    assert out["bfloat16"].dtype == torch.float32
    diff = float((out["bfloat16"] - out["float32"]).abs().max())
    assert 0 < diff < 5e-2, diff


# --- (b) bfloat16 results equal the float32 model's within rounding --------------------------------


def test_bfloat16_class_logits_and_predictions_match_float32(qwen_dir):
    fms, tasks = {}, {}
    for dtype in ("float32", "bfloat16"):
        bb = load_backbone(str(qwen_dir), kind="causal_lm", lora=LORA, dtype=dtype)
        fms[dtype] = FunctionalModel(bb.model)
        tasks[dtype] = encode(_questions(), bb.tokenizer, max_length=48)
    layout = fms["float32"].layout
    assert layout == fms["bfloat16"].layout
    g = torch.Generator().manual_seed(0)
    thetas = init_theta(layout, seed=0) + 0.05 * torch.randn(3, layout.dim, generator=g)  # B ≠ 0: adapters act
    batch = next(iter(tasks["float32"].batches(6)))
    a = tasks["float32"].class_logits(fms["float32"].forward_at(thetas[0]), batch)
    b = tasks["bfloat16"].class_logits(fms["bfloat16"].forward_at(thetas[0]), batch)
    diff = float((a - b).abs().max())
    assert 0 < diff < 5e-2, diff  # bfloat16 did run (not bit-equal), within its rounding
    pa = predict_probs(fms["float32"], tasks["float32"], thetas, batch_size=4)
    pb = predict_probs(fms["bfloat16"], tasks["bfloat16"], thetas, batch_size=4)
    assert pa.shape == pb.shape == (3, 6, 4)
    assert float((pa - pb).abs().max()) < 2e-2
    assert torch.allclose(pb.sum(-1), torch.ones(3, 6))


# --- (c) the device ---------------------------------------------------------------------------------


def test_device_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto", cuda_available=lambda: False) == torch.device("cpu")
    assert resolve_device("auto", cuda_available=lambda: True) == torch.device("cuda", 0)
    assert resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    with pytest.raises(ValueError, match=r"runtime\.device = 'cuda'.*no GPU.*--device cpu"):
        resolve_device("cuda", cuda_available=lambda: False)
    with pytest.raises(ValueError, match=r"runtime\.device must be one of \['cpu', 'cuda', 'auto'\], got 'tpu'"):
        resolve_device("tpu")
    assert resolve_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match=r"model\.dtype must be one of"):
        resolve_dtype("int8")
    with pytest.raises(ConfigError, match=r"runtime\.device must be one of \['cpu', 'cuda', 'auto'\], got 'gpu'"):
        ExperimentConfig.from_dict({"runtime": {"device": "gpu"}, "methods": {"map": {}}})
    with pytest.raises(ConfigError, match=r"model\.dtype must be one of \['float32', 'bfloat16', 'float16'\]"):
        ExperimentConfig.from_dict({"model": {"dtype": "half"}, "methods": {"map": {}}})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cli_device_cuda_without_a_gpu_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(dump_toml({"name": "x", "methods": {"map": {}}}))
    r = subprocess.run([sys.executable, "-m", "bayes_lora", "run", str(cfg), "--out", str(tmp_path / "o"),
                        "--device", "cuda"], capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "runtime.device = 'cuda'" in r.stderr and "--device" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_task_to_moves_every_tensor_and_leaves_the_task_alone(qwen_dir):
    from bayes_lora.lora.device import _tensors

    bb = load_backbone(str(qwen_dir), kind="causal_lm", lora=LORA)
    task = encode(_questions(), bb.tokenizer, max_length=48)
    assert task_to(task, "cpu") is task  # nothing to move: the same object
    moved = task_to(task, "meta")
    assert moved is not task and len(_tensors(moved)) == len(_tensors(task)) >= 4
    assert {t.device.type for t in _tensors(moved)} == {"meta"}
    assert {t.device.type for t in _tensors(task)} == {"cpu"}


# --- (d) the memory estimate ------------------------------------------------------------------------


def test_parameter_count_from_config_and_safetensors_headers(qwen_dir):
    built = tiny_qwen2(400)
    n = sum(p.numel() for p in built.parameters())
    config = json.loads((qwen_dir / "config.json").read_text())
    # embeddings 400·32 (tied: the LM head is the same matrix); per layer q 32·32 + 32, k and v 32·16 + 16
    # (one key / value head of 16), o 32·32, MLP 3·32·37, two norms; the final norm
    assert n == 400 * 32 + 2 * (32 * 32 + 32 + 2 * (32 * 16 + 16) + 32 * 32 + 3 * 32 * 37 + 2 * 32) + 32
    assert decoder_parameters(config) == n
    assert safetensors_parameters(qwen_dir) == n
    assert count_parameters(qwen_dir) == (n, "config.json")
    untied = {**config, "tie_word_embeddings": False}
    assert decoder_parameters(untied) == n + 400 * 32
    assert decoder_parameters({**config, "model_type": "bert"}) is None


def test_memory_estimate_parts_and_the_refusal(qwen_dir):
    n = sum(p.numel() for p in tiny_qwen2(400).parameters())
    est = estimate_memory(qwen_dir, dtype="bfloat16", max_length=24, train_rows=32, eval_rows=64, r=2)
    assert est.parameters == n and est.weights == 2 * n
    assert est.lora == 2 * 4 * 2 * 2 * (2 * 32 + 32 + 16)  # θ and its gradient, float32: r·(in + out) per target
    assert est.cache == 0 and est.overhead == 0 and est.total > est.weights
    f32 = estimate_memory(qwen_dir, dtype="float32", max_length=24, train_rows=32, eval_rows=64, r=2)
    assert f32.weights == 2 * est.weights
    gpu = estimate_memory(qwen_dir, dtype="bfloat16", max_length=24, train_rows=32, eval_rows=64, r=2, gpu=True,
                          cached_rows=10, layers=(1,))
    assert gpu.overhead == 2**29 and gpu.cache == 10 * 24 * 32 * 2
    check_fits(est, "cpu")  # no source of free memory on a CPU: not checked
    check_fits(est, "cuda:0", free_memory=lambda d: (est.total, 2 * est.total))  # just fits
    with pytest.raises(InsufficientMemory) as e:
        check_fits(est, "cuda:1", free_memory=lambda d: (est.total - 1, 80 * 2**30))
    msg = str(e.value)
    assert "cuda:1" in msg and "runtime.device / --device" in msg and "of 80.00 GiB" in msg
    assert est.describe() in msg and "bfloat16" in msg


# --- (e) a whole run with bfloat16 weights ----------------------------------------------------------


def _choice_config(model_dir, **runtime) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": "tiny-qwen-bf16", "seed": 0,
        "model": {"name": str(model_dir), "kind": "causal_lm", "max_length": 48, "dtype": "bfloat16"},
        "lora": {"r": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj"], "train_head": False},
        "data": {"task": "openbookqa", "train_examples": 48, "test_split": "test", "ood_task": "arc_easy",
                 "ood_split": "test"},
        "anchors": {"count": 2, "epochs": 1.0, "lr": 1e-2, "batch_size": 8},
        "curve": {"degree": 2, "epochs": 1.0, "batch_size": 8, "js_batch": 4}, "paths": {"points": 3},
        "posterior": {"likelihood_examples": 16},
        "evaluation": {"num_samples": 2, "batch_size": 8, "idata_draws": 4, "loo_examples": 16},
        "runtime": {"progress": False, "threads": 1, **runtime},
        "methods": {"map": {}, "ensemble": {},
                    "curve_svi": {"method": "curve", "inference": "svi", "logit_cache": 5, "svi_steps": 10,
                                  "num_samples": 8}},
    })


def test_refused_when_the_device_cannot_hold_the_run(tmp_path, qwen_dir):
    _, data_dir = write_tiny_choice_setup(tmp_path)
    logs = []
    runner = Runner(_choice_config(qwen_dir), tmp_path / "out", data_dir=str(data_dir), log=logs.append,
                    free_memory=lambda d: (1000, 4000))
    with pytest.raises(ConfigError, match=r"does not fit on cpu .*0\.00 GiB free of 0\.00 GiB.*about"):
        runner.run()
    assert any(m.startswith("memory estimate on cpu (bfloat16 weights): about") for m in logs)
    assert not (tmp_path / "out").exists()


def test_bfloat16_run_end_to_end_on_cpu(tmp_path, qwen_dir):
    _, data_dir = write_tiny_choice_setup(tmp_path)
    logs = []
    res = Runner(_choice_config(qwen_dir, device="auto"), tmp_path / "out", data_dir=str(data_dir),
                 log=logs.append).run()
    assert any("memory estimate on cpu (bfloat16 weights)" in m for m in logs)
    assert res["data"]["test_examples"] == 16 and res["data"]["ood_examples"] == 16
    for label in ("map", "ensemble", "curve_svi"):
        m = res["methods"][label]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["ood_auroc"] <= 1.0
        assert 0.0 < m["nll"] < 20.0 and 0.0 <= m["ece"] <= 100.0  # ECE in %
        assert all(math.isfinite(v) for v in m.values() if isinstance(v, float)), m
    saved = json.loads((tmp_path / "out" / "config.json").read_text())["config"]
    assert saved["model"]["dtype"] == "bfloat16" and saved["runtime"]["device"] == "auto"


def test_new_keys_at_their_defaults_keep_the_hashes_of_older_runs():
    """model.dtype and runtime.device are left out of the digests at their defaults: the [model]
    digest of the default config is the one it had before they existed (stage keys, run folders)."""
    cfg = ExperimentConfig.from_dict({"methods": {"map": {}}})
    assert cfg.digest("model") == "5d6df0bf43a63a32"  # measured on the code before model.dtype
    bf16 = cfg.with_overrides(model={"dtype": "bfloat16"})
    gpu = cfg.with_overrides(runtime={"device": "cuda"})
    assert bf16.digest("model") != cfg.digest("model")  # another dtype: other numbers, other stages
    assert gpu.digest("model") == cfg.digest("model") and gpu.digest() != cfg.digest()
