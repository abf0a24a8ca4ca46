"""The staged pipeline behind ``bayes-lora run``.

fine-tune anchors → train the curve → paths → fit each method → evaluate → report. Each stage
is keyed by the part of the config it depends on (:class:`~.stages.StageStore`): a re-run skips
finished stages, a changed option reruns only its dependants, a killed run resumes from the
last finished stage. Everything that can be checked is checked before the first expensive
stage (:func:`prepare`).
"""
from __future__ import annotations

import inspect
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..inference.base import PROJECTED_LR, Needs
from ..lora.io import atomic_write_bytes, atomic_write_json, file_digest, load_tensors, save_tensors
from ..lora.train import NumericalError
from .config import LATER_KEYS, ConfigError, ExperimentConfig, ProjectedConfig, dump_toml, hash_json
from .config import smoke as smoke_config
from .distributed import Cluster, launched_rank
from .evaluate import (
    Evaluation,
    chains_idata,
    evaluate,
    loo_summary,
    mcmc_diagnostics,
    posterior_idata,
)
from .lock import RunLock
from .stages import StageRecord, StageStore

#: bumped when a stage's computation or files change meaning, so older stage folders are recomputed
#: (3: the first-token last layer of BERT suffixes, the exact evidence prior, the dev-chosen VI defaults;
#: 4: the curve posteriors' predictive draws stratified by t; 5: tasks loaded from their description, Matthews
#: correlation and per-class accuracy in every evaluation; 6: InferenceData groups as ArviZ means them —
#: log-likelihood and posterior predictive draws on training examples, test probabilities in `predictions`,
#: every group at the same thinned draws, the full chains in chains.nc, PSIS-LOO / WAIC in metrics.json)
STAGES_FORMAT = 6

#: the run's resolved config (every default filled in); never ``config.toml``, so that a run whose
#: ``--out`` is the folder of its own config file leaves that file alone
RESOLVED_CONFIG = "resolved_config.toml"
#: the files of a local model folder whose digests are part of the stage keys (weights, config, tokenizer)
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model", ".gguf")
#: what a finished run leaves at the top of its folder (removed when ``force`` replaces another run)
RESULT_FILES = ("results.json", "results.csv", "report.md")


@dataclass
class Prepared:
    """The loaded model and encoded data of a run (nothing trained yet)."""

    cfg: ExperimentConfig
    backbone: object
    fm: object
    train: object
    test: object
    ood: object | None
    data_info: dict = field(default_factory=dict)
    more_ood: dict = field(default_factory=dict)  # further OOD sets by task name (data.more_ood)
    dev: object | None = None  # the dev split, loaded when a method chooses a scale on it (Needs.DEV)


def _log_default(msg: str) -> None:
    print(msg, flush=True)


class Runner:
    """Runs one config into one output folder. ``run()`` returns the results dict."""

    def __init__(self, cfg: ExperimentConfig, out: str | Path, *, data_dir: str | None = None,
                 smoke: bool = False, log: Callable[[str], None] = _log_default, progress: bool | None = None,
                 force: bool = False, free_memory: Callable[[torch.device], tuple[int, int]] | None = None,
                 prepared: Prepared | None = None):
        from ..data.paths import find_data_dir

        self.cfg = smoke_config(cfg) if smoke else cfg
        self.smoke = smoke
        self.out = Path(out)
        self.force = force
        # data_dir > $BAYES_LORA_DATA_DIR > ../shared/data; none at all: relative paths from the current folder
        try:
            found, self.data_dir_from = find_data_dir(data_dir)
            self.data_dir: str | None = str(found)
        except FileNotFoundError:
            self.data_dir, self.data_dir_from = None, "none found"
        self._inputs: dict[str, dict] | None = None
        self._digests: dict[tuple, str] = {}
        self._given: Tensor | None = None
        self.log = log
        self.progress = self.cfg.runtime.progress if progress is None else progress
        self.store = StageStore(self.out)
        self.prep: Prepared | None = None
        # (free, total) bytes of the run's device; None: torch.cuda.mem_get_info on a GPU, no check on a CPU
        self.free_memory = free_memory
        # another run's loaded model and encoded data, reused when only the seed differs (replicates)
        self._reuse = prepared

    # ------------------------------------------------------------------ keys ---------------
    def key(self, stage: str, method: str | int | None = None) -> str:
        c = self.cfg
        inputs = self.input_digests()
        # only the methods that choose on the dev split depend on it (its file and data.dev_examples)
        dev = inputs.pop("dev", None)
        data = hash_json({"model": c.digest("model"), "data": c.digest("data", without=("data.dev_examples",)),
                          "seed": c.seed,
                          "format": STAGES_FORMAT, "inputs": inputs})
        # a given anchors file is one of the inputs: its contents are in ``data`` already
        anchors = hash_json([data, c.digest("lora"), c.digest("anchors"), list(c.anchor_seeds)])
        curve = hash_json([anchors, c.digest("curve")])
        if stage == "anchors":
            return anchors
        if stage == "anchor":  # one anchor: its training options and seed, not how many there are
            opts = {k: v for k, v in c.to_dict()["anchors"].items() if k not in ("count", "seeds", "path")}
            return hash_json([data, c.digest("lora"), opts, int(method)])
        if stage == "curve":
            return curve
        if stage == "paths":
            return hash_json([curve, c.digest("paths")])
        if stage == "projected_map":
            if c.projected == ProjectedConfig():  # the key it had before [projected] existed
                return hash_json([anchors, "projected_map", PROJECTED_LR])
            return hash_json([anchors, "projected_map", c.projected.lr, self.projected_rank])
        if stage == "dev":
            return hash_json([data, "dev", dev, c.data.dev_examples])
        if stage in ("fit", "eval"):
            backend, options = self.method_options(method)
            needs = backend.needs(options)
            parts = [anchors, backend.name, options, backend.fingerprint(options)]
            parts += [self.key(n.value) for n in sorted(needs) if n is not Needs.ANCHORS]
            fit = hash_json(parts)
            return fit if stage == "fit" else hash_json([fit, c.digest("evaluation")])
        raise KeyError(stage)

    def method_options(self, label: str):
        """The backend of method ``label`` and its options: the config's, with the ``[posterior]``
        table as the ``posterior`` option of a backend that takes one (unless the method sets it)."""
        from ..inference.registry import get_backend

        m = self.cfg.methods[label]
        backend = get_backend(m.method)
        options = dict(m.options)
        if "posterior" in inspect.signature(backend.fit).parameters:
            options.setdefault("posterior", self.cfg.posterior)
        return backend, options

    def uses_dev(self) -> bool:
        """Whether a configured method chooses a scale on the task's dev split (:attr:`Needs.DEV`)."""
        return Needs.DEV in self.needs()

    def method_needs(self, label: str) -> frozenset:
        """What method ``label`` fits from (:class:`~bayes_lora.inference.base.Needs`)."""
        backend, options = self.method_options(label)
        return frozenset(backend.needs(options))

    def needs(self) -> frozenset:
        """What the configured methods fit from (:class:`~bayes_lora.inference.base.Needs`)."""
        return frozenset().union(*(self.method_needs(label) for label in self.cfg.methods))

    # ------------------------------------------------------------------ inputs -------------
    def inputs(self) -> dict[str, dict]:
        """The files the run reads, by role, each ``{"path", "sha256"}`` (``{"source"}`` for a hub
        split): ``train``, ``test`` and ``ood`` (``classes`` / ``ood_classes`` when the class names
        come from another split's file), ``model/<file>`` of a local model folder and ``anchors``
        (``anchors.path``). Computed once per run; a file's digest is cached by (path, size, mtime)."""
        if self._inputs is None:
            found = self._input_files()
            self._inputs = {role: {"path": os.path.abspath(f), "sha256": self._digest(f)} if isinstance(f, Path)
                            else {"source": f} for role, f in found.items()}
        return self._inputs

    def input_digests(self) -> dict[str, str]:
        """``{role: sha256}`` of :meth:`inputs`: what the stage keys depend on (contents, not paths)."""
        return {role: v.get("sha256") or v.get("source", "") for role, v in self.inputs().items()}

    def _digest(self, path: Path) -> str:
        st = path.stat()
        k = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if k not in self._digests:
            self._digests[k] = file_digest(path)
        return self._digests[k]

    def _input_files(self) -> dict[str, Path | str]:
        from ..data.tasks import SPLITS

        c, d = self.cfg, self.cfg.data
        files: dict[str, Path | str] = {}

        def add(role: str, spec, split: str) -> None:
            path = spec.path(split, self.data_dir)
            if path is not None and path.is_file():
                files[role] = path
            elif spec.hf_dataset:
                files[role] = f"hub:{'/'.join(p for p in (spec.hf_dataset, spec.hf_config) if p)}[{split}]"
            # else: missing, prepare() says so

        def classes_split(spec) -> str | None:  # the split TaskSpec.classes reads (None: it reads none)
            if spec.kind != "classification" or spec.labels:
                return None
            return "train" if spec.has_split("train") else next((s for s in SPLITS if spec.has_split(s)), "train")

        spec = d.task_spec
        add("train", spec, "train")
        add("test", spec, d.test_split)
        src = classes_split(spec)
        if src not in (None, "train", d.test_split):
            add("classes", spec, src)
        if d.ood_spec is not None:
            add("ood", d.ood_spec, d.ood_split)
            src = classes_split(d.ood_spec)
            if src not in (None, d.ood_split):
                add("ood_classes", d.ood_spec, src)
        for more in d.more_ood_specs:
            add(f"ood:{more.name}", more, d.ood_split)
        if self.uses_dev() and spec.has_split("dev"):
            add("dev", spec, "dev")
        model = Path(c.model.name).expanduser()
        if model.is_dir():
            for f in sorted(model.iterdir()):
                if f.is_file() and not f.name.startswith(".") and f.suffix in MODEL_FILE_SUFFIXES:
                    files[f"model/{f.name}"] = f
        if c.anchors.path and Path(c.anchors.path).expanduser().is_file():
            files["anchors"] = Path(c.anchors.path).expanduser()
        return files

    def data_record(self) -> dict:
        """Where the data came from and the digest of every file read (config.json, results.json)."""
        return {"dir": os.path.abspath(self.data_dir) if self.data_dir else None, "dir_from": self.data_dir_from,
                "inputs": self.inputs()}

    # ------------------------------------------------------------------ prepare ------------
    def prepare(self) -> Prepared:
        """Load data and model and check everything checkable; no training yet."""
        from ..data import as_ood_texts, encode
        from ..lora.backbone import LoraSettings, load_backbone
        from ..lora.device import task_to
        from ..lora.params import FunctionalModel

        c = self.cfg
        if c.runtime.threads:
            torch.set_num_threads(c.runtime.threads)
        device = self.device()
        d = c.data
        spec = d.task_spec
        kw = {"data_dir": self.data_dir, "seed": c.data_seed}
        # class ids come from the training split's labels (or the spec's labels), read once
        classes = spec.classes(self.data_dir) if spec.kind == "classification" else None
        train = spec.load("train", max_examples=d.train_examples, min_words=d.min_words, classes=classes, **kw)
        # min_words selects sentence-level *training* data; the test split is used whole
        test = spec.load(d.test_split, max_examples=d.test_examples or None, min_words=0, classes=classes, **kw)

        def load_ood(ospec):
            data = ospec.load(d.ood_split, max_examples=d.ood_examples or None, min_words=0, **kw)
            if c.model.kind == "classifier":  # a classifier scores texts: any task's inputs will do
                data = as_ood_texts(data, train.num_classes, name=ospec.name)
            return data

        ood = load_ood(d.ood_spec) if d.ood_spec is not None else None
        more = {mspec.name: load_ood(mspec) for mspec in d.more_ood_specs}
        dev = None
        if self.uses_dev():
            if not spec.has_split("dev"):
                who = [label for label in c.methods if Needs.DEV in self.method_needs(label)]
                raise ConfigError(f"methods.{who[0]} chooses its scale on the dev split, but data.task = "
                                  f"{spec.name!r} has no dev split: give the task a dev file, or a fixed value "
                                  f"(e.g. prior = \"marglik\")")
            dev = spec.load("dev", max_examples=d.dev_examples or None, min_words=0, classes=classes, **kw)
        lora = LoraSettings(r=c.lora.r, alpha=c.lora.alpha, dropout=c.lora.dropout,
                            target_modules=tuple(c.lora.target_modules), train_head=c.lora.train_head,
                            layers=tuple(c.lora.layers) or None)
        n_classes = getattr(train, "num_classes", None) or train.num_choices
        self._check_memory(device, [x for x in (train, test, ood, dev, *more.values()) if x is not None])
        bb = load_backbone(c.model.name, kind=c.model.kind, num_labels=n_classes, lora=lora, dtype=c.model.dtype,
                           device=device)
        self._check_methods(bb.model)
        packed = c.model.kind != "causal_lm" or self._packing_works(bb, train)
        enc = lambda ds: task_to(encode(ds, bb.tokenizer, max_length=c.model.max_length, packed=packed), device)
        tr, te = enc(train), enc(test)
        oo = enc(ood) if ood is not None else None
        mo = {name: enc(x) for name, x in more.items()}
        dv = enc(dev) if dev is not None else None
        fm = FunctionalModel(bb.model)
        if c.runtime.prefix_cache:
            fm, tr, te, oo, mo, dv = self._prefix_cache(fm, tr, te, oo, mo, dv)
            tr, te = task_to(tr, device), task_to(te, device)  # the caches (built in host memory) too
            oo = task_to(oo, device) if oo is not None else None
            dv = task_to(dv, device) if dv is not None else None
            mo = {name: task_to(x, device) for name, x in mo.items()}
        info = {"train_examples": len(tr), "test_examples": len(te), "ood_examples": 0 if oo is None else len(oo),
                "lora_numbers": int(fm.layout.dim), "task": spec.to_dict(),
                "label_names": list(classes) if classes is not None else None}
        if d.ood_spec is not None:
            info["ood_task"] = d.ood_spec.to_dict()
        if mo:
            info["more_ood_examples"] = {name: len(x) for name, x in mo.items()}
        if dv is not None:
            info["dev_examples"] = len(dv)
        info.update(self.data_record())
        self.prep = Prepared(c, bb, fm, tr, te, oo, info, mo, dv)
        if c.anchors.path:  # checked against the model now, before anything is written
            self._given = self._given_anchors()
        return self.prep

    def reuse_or_prepare(self) -> Prepared:
        """:meth:`prepare`, or the ``prepared`` given to the runner when it was made for a config
        that differs from this one in ``seed`` only (the model, the data and their caches do not
        depend on it: :meth:`ExperimentConfig.replicate`)."""
        from dataclasses import replace

        old = self._reuse
        if old is None or old.cfg.replicate(0).digest() != self.cfg.replicate(0).digest():
            return self.prepare()
        self.prep = replace(old, cfg=self.cfg)
        if self.cfg.anchors.path:
            self._given = self._given_anchors()
        return self.prep

    def _packing_works(self, bb, train) -> bool:
        """Whether the model scores packed questions (the prompt once, every choice after it) as
        it scores one row per choice, on two training questions: within 1e-4, or, in low precision
        (rounding alone differs by ~0.05 in bfloat16), within a tenth of what a kernel ignoring the
        mask would score. If not, the run scores one row per choice and says so."""
        from ..data import packing_error

        length = self.cfg.model.max_length
        err = packing_error(bb.model, train, bb.tokenizer, max_length=length)
        if err <= 1e-4:
            return True
        unmasked = packing_error(bb.model, train, bb.tokenizer, max_length=length, ignore_mask=True)
        if err < 0.1 * unmasked:
            return True
        self.log(f"packed multiple choice disagrees with one row per choice by {err:.3g} (without its mask: "
                 f"{unmasked:.3g}): this model's attention ignores custom masks, so every choice gets its own row "
                 "(slower)")
        return False

    def device(self) -> torch.device:
        """The run's device (``runtime.device``, which ``--device`` sets); a ConfigError naming the
        key when it asks for a GPU that torch does not see."""
        from ..lora.device import resolve_device

        try:
            return resolve_device(self.cfg.runtime.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _check_memory(self, device: torch.device, tasks) -> None:
        """Log the memory estimate and refuse (ConfigError, exit 2) a run the device cannot hold:
        a GPU's free memory (``torch.cuda.mem_get_info``) or the runner's ``free_memory``."""
        from ..lora.memory import check_fits

        c = self.cfg
        k = max((int(getattr(t, "num_choices", 1)) for t in tasks), default=1)
        try:
            estimate = memory_estimate(c, device, choices=k, examples=sum(len(t) for t in tasks))
        except (OSError, ValueError, KeyError, TypeError) as e:  # the model's size cannot be told: no check
            self.log(f"memory estimate: unavailable ({type(e).__name__}: {e})")
            return
        self.log(f"memory estimate on {device} ({self.cfg.model.dtype} weights): {estimate.describe()}")
        try:
            check_fits(estimate, device, self.free_memory)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def _check_methods(self, model) -> None:
        """Every method's options against the model (:meth:`Backend.check`: values, their
        combinations, the LoRA rank a core space allows, tensor names), so that nothing is trained
        for a run that would fail at a later method."""
        for label in self.cfg.methods:
            backend, options = self.method_options(label)
            try:
                backend.check(options, model)
            except ValueError as e:
                raise ConfigError(f"methods.{label}: {e}") from None
        if Needs.PROJECTED_MAP in self.needs():
            from ..lora.params import ParamLayout
            from ..lora.spaces import check_core_ranks

            key = "projected.rank" if self.cfg.projected.rank else "lora.r"
            try:
                check_core_ranks(model, ParamLayout.from_model(model).at_rank(self.projected_rank), key)
            except ValueError as e:
                raise ConfigError(f"[projected]: {e}") from None

    def _prefix_cache(self, fm, tr, te, oo, mo, dv):
        try:
            from ..lora.prefix import with_prefix_cache
        except ImportError:  # pragma: no cover - the cache is an optimisation
            return fm, tr, te, oo, mo, dv
        start = time.perf_counter()
        tasks = [t for t in (tr, te, oo, dv, *mo.values()) if t is not None]
        fm2, *cached = with_prefix_cache(fm, *tasks)
        if fm2 is not fm:
            self.log(f"prefix cache: hidden states below the first adapted layer computed once "
                     f"({time.perf_counter() - start:.1f} s)")
        it = iter(cached)
        tr, te = next(it), next(it)
        oo = next(it) if oo is not None else None
        dv = next(it) if dv is not None else None
        return fm2, tr, te, oo, {name: next(it) for name in mo}, dv

    # ------------------------------------------------------------------ stages -------------
    def _stage(self, name: str, key: str, build: Callable[[Path], dict | None]) -> Path:
        folder = self.store.path(name)
        if self.store.done(name, key):
            self.store.skip(name, key)
            self.log(f"[{name}] up to date, skipped")
            return folder
        self.log(f"[{name}] running ...")
        folder = self.store.begin(name)
        start = time.perf_counter()
        try:
            info = build(folder)
        except NumericalError as e:  # name the stage; its periodic checkpoint stays for inspection
            raise NumericalError(f"stage {name}: {e}", last_good=e.last_good, step=e.step) from e
        seconds = time.perf_counter() - start
        self.store.finish(name, key, seconds, info)
        self.store.clear_checkpoints(name)
        self.log(f"[{name}] done in {seconds:.1f} s")
        return folder

    def _checkpoint(self, name: str, key: str):
        return self.store.checkpointer(name, key, self.cfg.runtime.checkpoint_every,
                                       log=lambda m, name=name: self.log(f"[{name}] {m}"))

    def _train_config(self, seed: int | None = None):
        return self.cfg.anchors.training(self.cfg.seed if seed is None else seed)

    def anchor(self, i: int) -> Tensor:
        """Anchor ``i``: its own stage, keyed by its seed and training options (a killed run
        keeps the finished ones; adding anchors reuses them)."""
        from ..lora.params import ParamLayout
        from ..lora.spaces import FullSpace
        from ..lora.train import fine_tune

        p = self.prep
        s = int(self.cfg.anchor_seeds[i])
        name, key = f"anchor:{i}", self.key("anchor", s)
        meta = {"layout": p.fm.layout.to_json(), "backbone": p.backbone.metadata()}

        def build(folder: Path):
            res = fine_tune(p.fm, FullSpace(p.fm.layout), p.train, self._train_config(s), progress=self.progress,
                            checkpoint=self._checkpoint(name, key))
            save_tensors(folder / "anchor.safetensors", {"theta": res.latent}, {**meta, "seed": s})
            atomic_write_json(folder / "train.json", {"seed": s, "losses": list(res.losses), "seconds": res.seconds})
            return {"seconds": res.seconds}

        folder = self._stage(name, key, build)
        tensors, saved = load_tensors(folder / "anchor.safetensors")
        p.fm.layout.check_same(ParamLayout.from_json(saved["layout"]), what=f"anchor {i} of this run")
        return tensors["theta"]

    def anchors(self) -> Tensor:
        """The M fine-tuned optima [M, D] (one stage each), or the checked contents of
        ``anchors.path``."""
        if self.cfg.anchors.path:
            if self._given is None:
                self._given = self._given_anchors()
            return self._given
        return torch.stack([self.anchor(i) for i in range(len(self.cfg.anchor_seeds))])

    def _given_anchors(self) -> Tensor:
        """Anchors from a file, checked against this run's base model, target modules and shapes."""
        from ..lora.params import ParamLayout

        p, path = self.prep, Path(self.cfg.anchors.path)
        if not path.is_file():
            raise FileNotFoundError(f"anchors.path: {path} does not exist")
        tensors, saved = load_tensors(path)
        stack = tensors.get("thetas", tensors.get("theta"))
        if stack is None:
            raise ValueError(f"anchors.path: {path} holds no 'thetas' tensor (save anchors with save_theta_stack)")
        stack = stack.reshape(-1, stack.shape[-1])
        mine = p.backbone.metadata()
        theirs = saved.get("backbone", {})
        for key in ("base_model", "target_modules", "rank", "layers"):
            if key in theirs and theirs[key] != mine[key]:
                raise ValueError(f"anchors.path: {path} was trained with {key} = {theirs[key]!r}, this run uses "
                                 f"{mine[key]!r}; train anchors for this model or change the config")
        if "layout" not in saved:
            raise ValueError(f"anchors.path: {path} has no layout in its JSON sidecar; cannot check it")
        p.fm.layout.check_same(ParamLayout.from_json(saved["layout"]), what=f"anchors.path {path}")
        if stack.shape[0] != self.cfg.anchors.count:
            raise ValueError(f"anchors.path: {path} holds {stack.shape[0]} anchors but anchors.count = "
                             f"{self.cfg.anchors.count}")
        return stack

    def curve(self, anchors: Tensor):
        from dataclasses import replace

        from ..lora.curve_train import train_curve
        from ..lora.curves import BezierCurve
        from ..lora.spaces import FullSpace

        p = self.prep
        cc = replace(self.cfg.curve, seed=self.cfg.seed)

        def build(folder: Path):
            res = train_curve(p.fm, FullSpace(p.fm.layout), p.train, anchors, cc, progress=self.progress,
                              checkpoint=self._checkpoint("curve", self.key("curve")))
            cur = res.curve
            save_tensors(folder / "curve.safetensors", {"joints": cur.joints.detach(), "bends": cur.bends.detach()},
                         {"degree": cur.degree, "anchored": cur.anchored, "segments": cur.segments})
            atomic_write_json(folder / "train.json", {"losses": list(res.losses), "js": list(res.js),
                                                      "seconds": res.seconds})
            return {"seconds": res.seconds}

        folder = self._stage("curve", self.key("curve"), build)
        tensors, meta = load_tensors(folder / "curve.safetensors")
        curve = BezierCurve(tensors["joints"], degree=int(meta["degree"]), anchored=bool(meta["anchored"]))
        with torch.no_grad():
            if isinstance(curve.joints, torch.nn.Parameter):
                curve.joints.copy_(tensors["joints"])
            curve.bends.copy_(tensors["bends"])
        return curve

    def paths(self, curve) -> dict:
        from ..lora.curve_train import linear_and_curve_paths
        from ..lora.spaces import FullSpace

        p, c = self.prep, self.cfg.paths
        task = p.test if not c.examples else p.test.subset(torch.arange(min(c.examples, len(p.test))))

        def build(folder: Path):
            res = linear_and_curve_paths(p.fm, FullSpace(p.fm.layout), task, curve, grid=c.points,
                                         batch_size=self.cfg.evaluation.batch_size)
            atomic_write_json(folder / "paths.json", {k: v.to_dict() for k, v in res.items()})

        folder = self._stage("paths", self.key("paths"), build)
        return json.loads((folder / "paths.json").read_text())

    @property
    def projected_rank(self) -> int:
        """The LoRA-XS cores' rank: ``projected.rank``, or ``lora.r`` when it is 0."""
        return self.cfg.projected.rank or self.cfg.lora.r

    def projected_map(self):
        """The LoRA-XS MAP (its own stage): the rank-``projected.rank`` cores fine-tuned with the
        anchors' schedule at learning rate ``projected.lr``, which the projected methods fit around."""
        from ..inference.base import ProjectedMAP, fit_projected_map
        from ..lora.spaces import ProjectedSpace

        p, key = self.prep, self.key("projected_map")
        space = ProjectedSpace(p.fm.model, p.fm.layout, rank=self.projected_rank)

        def build(folder: Path):
            pm = fit_projected_map(p.fm, p.train, self._train_config(), space=space, lr=self.cfg.projected.lr,
                                   progress=self.progress, checkpoint=self._checkpoint("projected_map", key))
            save_tensors(folder / "core.safetensors", {"core": pm.core}, {"seconds": pm.seconds})
            return {"seconds": pm.seconds}

        folder = self._stage("projected_map", key, build)
        tensors, meta = load_tensors(folder / "core.safetensors")
        return ProjectedMAP(space, tensors["core"], float(meta.get("seconds", 0.0)))

    def context(self, anchors: Tensor, curve, projected=None):
        """The fit context: every stage result the methods need, given explicitly."""
        from ..inference.base import FitContext

        p = self.prep
        return FitContext(p.fm, p.train, anchors=anchors, curve=curve, projected=projected,
                          train_config=self._train_config(), projected_lr=self.cfg.projected.lr,
                          projected_rank=self.projected_rank, seed=self.cfg.seed,
                          progress=self.progress, metadata=p.backbone.metadata(), dev=p.dev)

    def _fit_checkpointer(self, label: str):
        """Checkpoints of the loops inside a fit (SWAG's collection), keyed by the method's fit stage."""
        def make(loop: str):
            return self._checkpoint(f"fit:{label}:{loop}", hash_json([self.key("fit", label), loop]))
        return make

    def fit_method(self, label: str, ctx):
        from ..inference.registry import fit, load

        backend, options = self.method_options(label)

        def build(folder: Path):
            ctx.checkpointer = self._fit_checkpointer(label)
            post = fit(backend.name, ctx, **options)
            post.save(folder)
            return {"fit_seconds": post.info.seconds}

        folder = self._stage(f"fit:{label}", self.key("fit", label), build)
        return load(folder, ctx.fm, ctx)

    def evaluate_method(self, label: str, post) -> dict:
        from ..diagnostics.idata import save_idata

        p, ev = self.prep, self.cfg.evaluation

        def build(folder: Path):
            e = evaluate(post, p.test, num_samples=ev.num_samples, seed=self.cfg.seed, batch_size=ev.batch_size,
                         ood=p.ood, more_ood=p.more_ood)
            tensors = {"probs": e.prediction.probs, "labels": e.prediction.labels}
            if e.ood is not None:
                tensors["ood_probs"] = e.ood.probs
            for name, pred in e.extra.get("more_ood", {}).items():
                tensors[f"ood_probs:{name}"] = pred.probs
            save_tensors(folder / "predictions.safetensors", tensors)
            # groups at the same thinned draws, log-likelihood on training examples (seeded by the fit's seed)
            idata = posterior_idata(post, e, train=p.train, label=label, seed=self.cfg.seed, batch_size=ev.batch_size,
                                    loo_examples=ev.loo_examples, max_draws=ev.idata_draws, min_draws=ev.idata_draws,
                                    predictions=ev.idata_predictions)
            chains = chains_idata(post, label=label)  # every draw, for R-hat / ESS / trace plots
            diag = mcmc_diagnostics(chains if chains is not None else idata)
            if diag.get("num_divergences", 0) > 0 or diag.get("r_hat", 1.0) > 1.01 or diag.get("ess_bulk", 1e9) < 100:
                self.log(f"[eval:{label}] warning: MCMC diagnostics of t — R-hat {diag['r_hat']:.3f}, bulk ESS "
                         f"{diag['ess_bulk']:.0f}, {diag.get('num_divergences', 0)} divergent transitions")
            spectrum = post.covariance_spectrum()  # a Gaussian's: how few directions hold its variance
            atomic_write_json(folder / "metrics.json", {**e.metrics, **diag, "loo": loo_summary(idata),
                                                        **({"covariance_spectrum": spectrum} if spectrum else {})})
            save_idata(idata, folder / "idata.nc")
            if chains is not None:
                save_idata(chains, folder / "chains.nc")

        folder = self._stage(f"eval:{label}", self.key("eval", label), build)
        return json.loads((folder / "metrics.json").read_text())

    def predictions(self, label: str) -> dict[str, Tensor]:
        """A finished method's saved predictive: ``probs`` [S, N, C], ``labels`` [N] (and
        ``ood_probs`` with an OOD task)."""
        f = self.store.path(f"eval:{label}") / "predictions.safetensors"
        if not f.is_file():
            raise FileNotFoundError(f"method {label!r} has no finished evaluation in {self.out}")
        return load_tensors(f)[0]

    # ------------------------------------------------------------------ run ----------------
    def run(self) -> dict:
        """Lock the run folder, check and prepare everything, then run every stage and report.

        Nothing is written before :meth:`prepare` succeeded. A folder that another run is using
        raises :class:`~.lock.RunFolderBusy`; one that holds the finished run of another config or
        other data raises a ValueError unless ``force``. Of a distributed run, only the main
        process (rank 0) locks the folder and writes the config files."""
        main = launched_rank() == 0
        created = self._open_folder()
        lock = RunLock(self.out, log=self.log) if main else None
        try:
            if lock is not None:
                lock.acquire()
            return self._run(main)
        finally:
            if lock is not None:
                lock.release()
            if created and not any(self.out.iterdir()):  # a run refused before writing anything
                self.out.rmdir()

    def _open_folder(self) -> bool:
        """Create the run folder (True when it did not exist); a clear error where it cannot be."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"the run folder {out} (--out) is a file, not a folder")
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"cannot create the run folder {out} (--out): {e.strerror or e}") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise ValueError(f"the run folder {out} (--out) is not writable")
        return created

    def _check_folder(self) -> bool:
        """Whether the folder holds the finished run of another config or other data (then a
        ValueError unless ``force``)."""
        f = self.out / "results.json"
        if not f.is_file():
            return False
        try:
            old = json.loads(f.read_text())
        except (OSError, ValueError):  # unreadable: nothing to compare; it is rewritten at the end
            return False
        if not isinstance(old, dict):
            return False
        diffs, mine = [], self.cfg.digest()
        if old.get("config_hash") != mine:
            changes = self._config_changes()
            diffs.append(f"another config ({old.get('name')!r}, hash {old.get('config_hash')}; this run: "
                         f"{self.cfg.name!r}, hash {mine}" + (f"; changed: {changes}" if changes else "") + ")")
        theirs = (old.get("data") or {}).get("inputs")
        if isinstance(theirs, dict):  # runs before data digests were recorded: the config decides
            theirs = {r: (v.get("sha256") or v.get("source", "")) if isinstance(v, dict) else v
                      for r, v in theirs.items()}
            now = self.input_digests()
            changed = sorted(r for r in set(now) | set(theirs) if now.get(r) != theirs.get(r))
            if changed:
                what = [f"{r}: " + ("read now, not then" if r not in theirs else "read then, not now" if r not in now
                                    else "other contents") for r in changed]
                diffs.append(f"other data ({'; '.join(what)}; data folder then "
                             f"{old['data'].get('dir')}, now {self.data_record()['dir']})")
        if not diffs:
            return False
        what = " and ".join(diffs)
        if not self.force:
            raise ValueError(f"{self.out} holds the finished run of {what}; choose another --out, or pass "
                             "--force to replace it (stages that depend on what changed are recomputed)")
        self.log(f"--force: {self.out} holds the finished run of {what}; its results are replaced")
        return True

    def _config_changes(self, most: int = 6) -> str:
        """The keys whose values differ between the folder's config.json and this run's config,
        ``key: old → new`` ('' when config.json is missing or unreadable)."""
        try:
            old = json.loads((self.out / "config.json").read_text())["config"]
        except (OSError, ValueError, KeyError, TypeError):
            return ""

        def flat(d, prefix=""):
            out = {}
            for k, v in d.items() if isinstance(d, dict) else ():
                if isinstance(v, dict) and v:
                    out.update(flat(v, f"{prefix}{k}."))
                else:
                    out[f"{prefix}{k}"] = v
            return out

        a, b = flat(old), flat(self.cfg.to_dict())
        for (table, key), default in LATER_KEYS.items():  # a key added since, at its default: no change
            a.setdefault(f"{table}.{key}", default)
        missing = object()
        keys = [k for k in sorted(set(a) | set(b)) if a.get(k, missing) != b.get(k, missing)]
        shown = [f"{k}: {a.get(k, '(none)')!r} → {b.get(k, '(none)')!r}" for k in keys[:most]]
        return ", ".join(shown) + (f", … ({len(keys)} keys)" if len(keys) > most else "")

    def _run(self, main: bool) -> dict:
        from .report import write_report

        t0 = time.perf_counter()
        if main:
            where = self.data_record()["dir"]
            self.log(f"data: {where} (from {self.data_dir_from})" if where else
                     "data: no data folder found (relative paths start from the current folder)")
        replacing = self._check_folder()
        self.reuse_or_prepare()
        if main:  # written only now that data, model and anchors are checked
            for name in RESULT_FILES if replacing else ():
                (self.out / name).unlink(missing_ok=True)
            atomic_write_json(self.out / "config.json", {"config": self.cfg.to_dict(), "smoke": self.smoke,
                                                         "config_hash": self.cfg.digest(),
                                                         "data": self.data_record()})
            atomic_write_bytes(self.out / RESOLVED_CONFIG, dump_toml(self.cfg.to_dict()).encode())
        cluster = Cluster.current()
        if cluster.world > 1:
            self._distributed_stages(cluster)
            if not cluster.is_main:  # the main process loads every finished stage and reports
                cluster.shutdown()
                return {}
        anchors = self.anchors()
        save_tensors(self.out / "anchors.safetensors", {"thetas": anchors},  # reusable: anchors.path
                     {"layout": self.prep.fm.layout.to_json(), "backbone": self.prep.backbone.metadata()})
        curve = paths = None
        if self.cfg.anchors.count >= 2:
            curve = self.curve(anchors)
            paths = self.paths(curve)
        projected = self.projected_map() if Needs.PROJECTED_MAP in self.needs() else None
        ctx = self.context(anchors, curve, projected)
        methods = {}
        for label in self.cfg.methods:
            post = self.fit_method(label, ctx)
            methods[label] = self.evaluate_method(label, post)
            if "dev_choice" in post.info.stats:  # a scale chosen on the dev split: what, from which candidates
                methods[label]["dev_choice"] = post.info.stats["dev_choice"]
        results = {
            "config_hash": self.cfg.digest(),
            "name": self.cfg.name,
            "model": self.cfg.model.name,
            "task": self.cfg.data.task_name(),
            "ood_task": self.cfg.data.task_name("ood_task"),
            **({"more_ood": list(self.cfg.data.more_ood)} if self.cfg.data.more_ood else {}),
            "label_names": self.prep.data_info.get("label_names"),
            "smoke": self.smoke,
            "data": self.prep.data_info,
            "methods": methods,
            "paths": paths or {},
        }
        results["wall_seconds"] = time.perf_counter() - t0
        results["peak_rss_mb"] = _peak_rss_mb()
        write_report(self, results)
        self.log(f"results in {self.out}/results.json, report in {self.out}/report.md "
                 f"({results['wall_seconds']:.0f} s)")
        cluster.shutdown()
        return results

    def _distributed_stages(self, cluster) -> None:
        """Every stage, level by level, each process running its share (see :mod:`.distributed`)."""
        base_log = self.log
        if not cluster.is_main:
            self.log = lambda m: base_log(f"[process {cluster.rank}] {m}")
        level = cluster.run_level
        if not self.cfg.anchors.path:
            level([(f"anchor:{i}", lambda i=i: self.anchor(i)) for i in range(len(self.cfg.anchor_seeds))])
        anchors = self.anchors()
        jobs = []
        if self.cfg.anchors.count >= 2:
            jobs.append(("curve", lambda: self.curve(anchors)))
        needs_projected = Needs.PROJECTED_MAP in self.needs()
        if needs_projected:
            jobs.append(("projected_map", self.projected_map))
        level(jobs)
        curve = self.curve(anchors) if self.cfg.anchors.count >= 2 else None
        ctx = self.context(anchors, curve, self.projected_map() if needs_projected else None)
        jobs = [(f"fit:{label}", lambda label=label: self.fit_method(label, ctx)) for label in self.cfg.methods]
        if curve is not None:
            jobs.insert(0, ("paths", lambda: self.paths(curve)))
        level(jobs)
        level([(f"eval:{label}", lambda label=label: self.evaluate_method(label, self.fit_method(label, ctx)))
               for label in self.cfg.methods])
        ran = cluster.gather([(r.name, r.key, r.seconds) for r in self.store.records if r.status == "ran"])
        self.log = base_log
        self.store.records = [StageRecord(name, key, "ran", sec, process=rank)
                              for rank, recs in enumerate(ran) for name, key, sec in recs]


def memory_estimate(cfg: ExperimentConfig, device: torch.device, *, choices: int = 1, examples: int = 0):
    """The :class:`~bayes_lora.lora.memory.MemoryEstimate` of running ``cfg`` on ``device``, from
    the model folder's config.json (and weight headers) alone: ``choices`` per question of a causal
    LM's tasks, ``examples`` in all the tasks (train, test, OOD) whose prefixes are cached when
    ``runtime.prefix_cache`` is on and no adapter sits on layer 0. Training batches are the larger of
    ``anchors.batch_size`` and ``curve.batch_size``; an evaluation pass on a GPU folds up to
    ``evaluation.num_samples`` samples into one batch (``predict_probs``' 512 rows)."""
    from ..lora.backbone import resolve_model_path
    from ..lora.memory import estimate_memory

    gpu = device.type == "cuda"
    causal = cfg.model.kind == "causal_lm"
    k = choices if causal else 1
    batch = cfg.evaluation.batch_size
    folded = min(cfg.evaluation.num_samples, max(1, 512 // batch)) if gpu else 1
    layers = tuple(cfg.lora.layers)
    cached = cfg.runtime.prefix_cache and bool(layers) and min(layers) > 0
    return estimate_memory(
        resolve_model_path(cfg.model.name), dtype=cfg.model.dtype, max_length=cfg.model.max_length,
        train_rows=max(cfg.anchors.batch_size, cfg.curve.batch_size) * k, eval_rows=batch * k * folded,
        cached_rows=examples * k if cached else 0, targets=tuple(cfg.lora.target_modules) or ("q_proj", "v_proj"),
        r=cfg.lora.r, layers=layers or None, causal_lm=causal, gpu=gpu)


def _peak_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run(cfg: ExperimentConfig, out: str | Path, **kw) -> dict:
    """Run ``cfg`` into ``out`` (see :class:`Runner`)."""
    return Runner(cfg, out, **kw).run()


__all__ = ["RESOLVED_CONFIG", "Evaluation", "Prepared", "Runner", "memory_estimate", "run"]
