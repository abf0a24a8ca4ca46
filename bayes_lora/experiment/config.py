"""The declarative experiment config (TOML), validated on load.

One frozen dataclass per TOML table. Every field states its type and what values it allows;
:func:`load_config` / :meth:`ExperimentConfig.from_dict` reject an unknown key, a wrong type or
an out-of-range value with a :class:`ConfigError` that names the key (``anchors.count``) and
what is allowed. Configs are parsed with :mod:`tomllib`, never evaluated.

>>> cfg = ExperimentConfig.from_dict({"anchors": {"count": 2}, "methods": {"map": {}}})
>>> cfg.anchors.count, list(cfg.methods)
(2, ['map'])
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
import re
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from dataclasses import fields as dataclass_fields
from pathlib import Path
from typing import Any, ClassVar, get_args, get_origin, get_type_hints

from ..data.tasks import SPLITS, TaskSpec, get_task, task_names
from ..inference.base import PROJECTED_LR
from ..lora.curve_train import CurveConfig
from ..lora.train import TrainConfig
from ..options import check_value, config_fields, option

#: the registered task names (a config may also describe a task by its files: a [data.task] table)
TASKS = task_names()


class ConfigError(ValueError):
    """A config that cannot be run; the message names the key and what is allowed."""


#: the default of ``data.dev_examples`` (left out of the stage keys of everything but the fits
#: that read the dev split)
DEV_EXAMPLES = 500

#: keys added to a table after runs were made, with their defaults: left out of
#: :meth:`ExperimentConfig.digest` at the default (the hash of a config that does not use them is
#: the hash it had before they existed)
LATER_KEYS = {("model", "dtype"): "float32", ("runtime", "device"): "cpu", ("data", "more_ood"): [],
              ("data", "seed"): None, ("data", "dev_examples"): DEV_EXAMPLES}

#: keys that moved, so that an older config gets told where
MOVED = {"curve.path_points": "paths.points", "curve.path_examples": "paths.examples"}


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin in (list, tuple):
        (inner, *_) = get_args(tp) or (Any,)
        return f"a list of {_type_name(inner)}"
    if origin is not None and type(None) in get_args(tp):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None))
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, str(tp))


def _coerce(value: Any, tp, key: str):
    """``value`` as type ``tp`` or a ConfigError naming ``key``."""
    origin = get_origin(tp)
    args = get_args(tp)
    if origin is not None and type(None) in args:  # Optional[X]
        if value is None:
            return None
        (tp,) = [a for a in args if a is not type(None)]
        return _coerce(value, tp, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if tp is dict or get_origin(tp) is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return dict(value)
    return value


def _check_range(value, meta: Mapping, key: str) -> None:
    why = check_value(value, meta, key)
    if why is not None:
        raise ConfigError(why)


def build(cls, data: Mapping[str, Any] | None, where: str):
    """An instance of the dataclass ``cls`` from a TOML table, validated key by key."""
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(f"[{where}] must be a table, got {data!r}")
    hints = get_type_hints(cls)
    allowed = [f.name for f in config_fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        moved = MOVED.get(f"{where}.{unknown[0]}")
        if moved:
            raise ConfigError(f"{where}.{unknown[0]} is now {moved}")
        raise ConfigError(f"unknown key {where}.{unknown[0]}; allowed keys in [{where}]: {', '.join(allowed)}")
    kwargs = {}
    for f in config_fields(cls):
        if f.name not in data:
            continue
        key = f"{where}.{f.name}"
        value = _coerce(data[f.name], hints[f.name], key)
        _check_range(value, f.metadata, key)
        kwargs[f.name] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"[{where}]: {e}") from None


# --------------------------------------------------------------------------------------------
# The tables
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    name: str = option("all-MiniLM-L6-v2", doc="a local folder, a Hugging Face hub id in the local cache, or a "
                                                      "name in KNOWN_MODELS (nothing is downloaded)")
    kind: str = option("classifier", choices=("classifier", "causal_lm"))
    max_length: int = option(64, ge=8, le=4096)
    dtype: str = option("float32", choices=("float32", "bfloat16", "float16"),
                        doc="the frozen base weights' type; θ (adapters, heads, latents, curve control points) "
                            "stays float32. bfloat16 / float16 halve the weights' memory (a GPU run) and change "
                            "the numbers at their rounding; float32 = the CPU results of docs/results.md")


@dataclass(frozen=True)
class LoraConfig:
    r: int = option(8, ge=1, le=1024)
    alpha: float = option(16.0, gt=0)
    dropout: float = option(0.0, ge=0, lt=1)
    target_modules: tuple[str, ...] = option((), doc="the modules to adapt; empty = peft's default for the "
                                            "model's architecture (BERT: query, value; Llama: q_proj, v_proj; …)")
    layers: tuple[int, ...] = option((), ge=0, doc="adapted layers; empty = all")
    train_head: bool = option(True)


@dataclass(frozen=True)
class DataConfig:
    """The task and its splits. ``task`` and ``ood_task`` are a registered name or a task
    description (a :class:`~bayes_lora.data.tasks.TaskSpec`, or its table in the config)."""

    # option returns a dataclasses.field (ruff cannot see it): noqa RUF009
    task: str | TaskSpec = option("sst2", doc="a registered task name or a [data.task] table")  # noqa: RUF009
    train_examples: int = option(2000, ge=1)
    test_split: str = option("test", choices=SPLITS)
    test_examples: int = option(0, ge=0, doc="0 = the whole split")
    min_words: int | None = option(None, ge=0, doc="keep training texts of at least this many words; "
                                  "unset: the task's own min_words (sst2: 5)")
    ood_task: str | TaskSpec = option(  # noqa: RUF009
        "", doc="'' = no OOD evaluation; a task name or a [data.ood_task] table (kind = \"texts\" for a "
                        "file of unlabelled texts)")
    ood_split: str = option("test", choices=SPLITS)
    ood_examples: int = option(0, ge=0)
    more_ood: tuple[str, ...] = option((), doc="further OOD tasks (registered names), each scored like ood_task "
                                       "(its ood_split, ood_examples) and reported beside it")
    dev_examples: int = option(DEV_EXAMPLES, ge=0, doc="examples of the task's dev split (a seeded subsample; 0 = all) on "
                               "which methods choose a scale of their own (laplace prior = \"dev\"); read only "
                               "when a method asks for it")
    seed: int | None = option(None, ge=0, doc="the seed of the subsamples (train_examples, test_examples, "
                              "ood_examples); unset = the run's seed. Replicates over seeds share it")

    def __post_init__(self) -> None:
        for key in ("task", "ood_task"):
            value = getattr(self, key)
            if key == "ood_task" and value == "":
                continue
            if not isinstance(value, (str, Mapping, TaskSpec)):
                raise ConfigError(f"data.{key} must be a task name or a table describing the task, got {value!r}")
            try:
                spec = get_task(value)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"data.{key}: {e}") from None
            if not isinstance(value, str):
                object.__setattr__(self, key, spec)

    @property
    def task_spec(self) -> TaskSpec:
        """The task's description (a registered one for a name)."""
        return get_task(self.task)

    @property
    def ood_spec(self) -> TaskSpec | None:
        return get_task(self.ood_task) if self.ood_task != "" else None

    @property
    def more_ood_specs(self) -> tuple[TaskSpec, ...]:
        return tuple(get_task(name) for name in self.more_ood)

    def task_name(self, key: str = "task") -> str | None:
        value = getattr(self, key)
        return value.name if isinstance(value, TaskSpec) else (value or None)


@dataclass(frozen=True)
class AnchorsConfig(TrainConfig):
    """How many anchors, with which seeds (or from which file), fine-tuned with these
    :class:`~bayes_lora.lora.train.TrainConfig` settings (its fields and defaults, inherited)."""

    count: int = option(3, ge=1, le=64)
    seeds: tuple[int, ...] = option((), ge=0, doc="one per anchor; empty = seed·count, seed·count + 1, …")
    path: str = option("", doc="use these fine-tuned anchors (an anchors.safetensors of an earlier run) "
                                      "instead of training them; '' = train")

    def training(self, seed: int) -> TrainConfig:
        """The fine-tuning settings alone, with ``seed``."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclass_fields(TrainConfig)} | {"seed": seed})


@dataclass(frozen=True)
class ProjectedConfig:
    """The LoRA-XS MAP that the projected methods (``space = "projected"``, VI's ``kind =
    "projected"``) fit around (B-LoRA-XS): a k×k core per adapted weight between the frozen
    rank-k truncated-SVD factors of its base weight, and the head, fine-tuned with the anchors'
    schedule and seed at its own learning rate."""

    rank: int = option(0, ge=0, le=4096, doc="the cores' rank k, independent of lora.r (the B-LoRA-XS paper "
                                             "uses up to ~25); 0 = lora.r")
    lr: float = option(PROJECTED_LR, gt=0, doc="Adam learning rate of the cores (and of SWAG's collection "
                                              "in a core space)")


@dataclass(frozen=True)
class PathsConfig:
    """The loss and accuracy along the straight line and the curve between the anchors."""

    points: int = option(11, ge=3, le=201, doc="values of t on each path")
    examples: int = option(0, ge=0, doc="test examples the paths are evaluated on; 0 = all")


@dataclass(frozen=True)
class EvaluationConfig:
    num_samples: int = option(8, ge=1, le=4096)
    batch_size: int = option(64, ge=1)
    loo_examples: int = option(256, ge=1, doc="training examples of each InferenceData's log_likelihood")
    idata_draws: int = option(32, ge=1, le=4096,
                             doc="draws of each InferenceData: MCMC chains thinned to it in all, sampled "
                                 "approximations drawn with at least this many (PSIS-LOO needs >= 21)")
    idata_predictions: bool = option(False, doc="also predict the test set at the InferenceData's draws "
                                                       "(its `predictions` group; one more test pass per method)")


@dataclass(frozen=True)
class RuntimeConfig:
    prefix_cache: bool = option(True, doc="reuse the hidden states below the first adapted layer")
    threads: int = option(0, ge=0, doc="torch threads; 0 = torch's default")
    progress: bool = option(True)
    checkpoint_every: int = option(25, ge=0, doc="optimiser steps between checkpoints inside long "
                                  "training stages (anchors, curve, projected MAP, SWAG); 0 = none")
    device: str = option("cpu", choices=("cpu", "cuda", "auto"),
                         doc="where the model, the data and the caches live: 'cuda' (refused with exit 2 when no "
                             "GPU is visible), 'auto' = cuda when torch.cuda.is_available() else cpu; the default "
                             "'cpu' keeps a config's numbers the same on every machine. --device overrides it")


@dataclass(frozen=True)
class MethodConfig:
    """One row of the comparison: a registered backend and its options."""

    label: str
    method: str
    options: dict = field(default_factory=dict)


#: options the runner supplies itself and a config must not set
_RESERVED = {"ctx", "curve"}

#: a method label names its stage folders, InferenceData and plot files: letters, digits and
#: ``_ . + -``, starting with a letter or digit (no path separators, no spaces)
_LABEL_CHARS = "A-Za-z0-9_.+-"
LABEL = re.compile(f"[A-Za-z0-9][{_LABEL_CHARS}]*")


def _check_labels(labels) -> None:
    """Each label is a valid file name, and no two are one file on a case-insensitive file system."""
    seen: dict[str, str] = {}
    for label in labels:
        if not LABEL.fullmatch(label):
            bad = sorted(set(re.sub(f"[{_LABEL_CHARS}]", "", label)))
            why = (f"contains {', '.join(map(repr, bad))}" if bad else "must start with a letter or digit")
            raise ConfigError(f"[methods.{json.dumps(label)}]: a method label names its files; it {why}. Use letters, "
                              "digits and _ . + - (starting with a letter or digit), e.g. "
                              f"[methods.{re.sub(f'[^{_LABEL_CHARS}]+', '_', label).strip('_.+-') or 'mine'}]")
        if label.lower() in seen:
            raise ConfigError(f"[methods.{seen[label.lower()]}] and [methods.{label}] differ only in case: their "
                              "files would be one on a case-insensitive file system; rename one")
        seen[label.lower()] = label


def _method_config(label: str, table: Any) -> MethodConfig:
    from ..inference.registry import available_methods, get_backend

    where = f"methods.{label}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{where}] must be a table of options, got {table!r}")
    table = dict(table)
    method = table.pop("method", label)
    if method not in available_methods():
        raise ConfigError(f"{where}.method: unknown inference method {method!r}; known: {', '.join(available_methods())}"
                          + ("" if "method" in table else " (name the backend with method = \"…\")"))
    sig = inspect.signature(get_backend(method).fit)
    allowed = [n for n, p in sig.parameters.items() if n not in _RESERVED and p.kind == p.KEYWORD_ONLY]
    for key, value in table.items():
        if key not in allowed:
            raise ConfigError(f"unknown key {where}.{key}; options of {method!r}: {', '.join(allowed)}")
        default = sig.parameters[key].default
        if "|" in str(sig.parameters[key].annotation) or default is None:
            continue  # a union (e.g. str | float): the backend checks it
        if isinstance(default, bool) and not isinstance(value, bool):
            raise ConfigError(f"{where}.{key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{key} must be a number, got {value!r}")
            if isinstance(default, int) and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{where}.{key} must be an integer, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"{where}.{key} must be a string, got {value!r}")
    missing = [n for n, p in sig.parameters.items()
               if p.kind == p.KEYWORD_ONLY and p.default is p.empty and n not in _RESERVED and n not in table]
    if missing:
        raise ConfigError(f"{where}: {method!r} needs {', '.join(f'{where}.{n}' for n in missing)}")
    for key, allowed in get_backend(method).choices.items():
        if key in table and table[key] not in allowed:
            raise ConfigError(f"{where}.{key} must be one of {', '.join(map(repr, allowed))}, got {table[key]!r}")
    return MethodConfig(label, method, table)


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole run: what to fine-tune, which curve to train, which posteriors to compare."""

    seed: int = 0
    name: str = "experiment"
    #: replicate the whole run once per seed (:func:`~bayes_lora.experiment.seeds.run_seeds`); empty = one run
    seeds: tuple[int, ...] = ()
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    anchors: AnchorsConfig = field(default_factory=AnchorsConfig)
    curve: CurveConfig = field(default_factory=CurveConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    projected: ProjectedConfig = field(default_factory=ProjectedConfig)
    posterior: dict = field(default_factory=dict)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    methods: dict = field(default_factory=dict)  # label → MethodConfig

    TABLES: ClassVar[dict[str, type]] = {"model": ModelConfig, "lora": LoraConfig, "data": DataConfig, "anchors": AnchorsConfig,
              "curve": CurveConfig, "paths": PathsConfig, "projected": ProjectedConfig,
              "evaluation": EvaluationConfig, "runtime": RuntimeConfig}

    #: tables added after runs were made: left out of :meth:`digest` while every key is at its default
    LATER_TABLES: ClassVar[tuple[str, ...]] = ("projected",)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ExperimentConfig:
        from ..models.spec import CurvePosteriorSpec

        if not isinstance(d, Mapping):
            raise ConfigError(f"a config is a table, got {type(d).__name__}")
        allowed = ["seed", "seeds", "name", "posterior", "methods", *cls.TABLES]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown key {unknown[0]!r} at the top of the config; allowed: {', '.join(allowed)}")
        kw: dict[str, Any] = {}
        if "seed" in d:
            kw["seed"] = _coerce(d["seed"], int, "seed")
            _check_range(kw["seed"], {"ge": 0}, "seed")
        if "seeds" in d:
            kw["seeds"] = _coerce(d["seeds"], tuple[int, ...], "seeds")
            for i, v in enumerate(kw["seeds"]):
                _check_range(v, {"ge": 0}, f"seeds[{i}]")
            if len(set(kw["seeds"])) != len(kw["seeds"]):
                raise ConfigError(f"seeds must be distinct, got {list(kw['seeds'])}")
        if "name" in d:
            kw["name"] = _coerce(d["name"], str, "name")
        for name, sub in cls.TABLES.items():
            kw[name] = build(sub, d.get(name), name)
        posterior = _coerce(d.get("posterior", {}), dict, "posterior")
        try:
            CurvePosteriorSpec.from_dict(posterior)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"[posterior]: {e}") from None
        kw["posterior"] = posterior
        methods = _coerce(d.get("methods", {}), dict, "methods")
        _check_labels(methods)
        kw["methods"] = {label: _method_config(label, table) for label, table in methods.items()}
        cfg = cls(**kw)
        cfg.check()
        return cfg

    def check(self) -> None:
        """Cross-table checks (each names the keys involved)."""
        if not self.methods:
            raise ConfigError("[methods] is empty: name at least one method to fit, e.g. [methods.map]")
        a = self.anchors
        if a.seeds and len(a.seeds) != a.count:
            raise ConfigError(f"anchors.seeds has {len(a.seeds)} seeds but anchors.count = {a.count}")
        if len(set(self.anchor_seeds)) != len(self.anchor_seeds):
            raise ConfigError(f"anchors.seeds must be distinct, got {list(self.anchor_seeds)}")
        if self.needs_curve and a.count < 2:
            raise ConfigError(f"a curve needs at least two anchors (its end points), but anchors.count = {a.count}; "
                              "set anchors.count ≥ 2 or remove the curve methods")
        for m in self.methods.values():
            anchor = m.options.get("anchor")
            if isinstance(anchor, int) and not 0 <= anchor < a.count:
                raise ConfigError(f"methods.{m.label}.anchor = {anchor} but anchors.count = {a.count}: the anchors "
                                  f"are 0..{a.count - 1}")
            if m.method == "ensemble" and int(m.options.get("members", a.count) or a.count) > a.count:
                raise ConfigError(f"methods.{m.label}.members = {m.options['members']} but only "
                                  f"anchors.count = {a.count} anchors are trained")
        d = self.data
        task, ood = d.task_spec, d.ood_spec
        if task.kind == "texts":
            raise ConfigError(f"data.task = {task.name!r} is kind = 'texts' (unlabelled): a task to fit needs "
                              "labels (kind = 'classification' or 'multiple_choice'); use it as data.ood_task")
        if self.model.kind == "causal_lm" and task.kind != "multiple_choice":
            raise ConfigError(f"model.kind = 'causal_lm' scores multiple-choice tasks; data.task = {task.name!r} "
                              f"is {task.kind}: set model.kind = 'classifier'")
        if self.model.kind == "classifier" and task.kind != "classification":
            raise ConfigError(f"data.task = {task.name!r} is multiple choice: set model.kind = 'causal_lm'")
        if ood is not None and self.model.kind == "causal_lm" and ood.kind != "multiple_choice":
            raise ConfigError("data.ood_task of a causal LM must be a multiple-choice task scored by the same LM; "
                              f"got data.ood_task = {ood.name!r} ({ood.kind})")
        if d.more_ood and ood is None:
            raise ConfigError(f"data.more_ood = {list(d.more_ood)} needs data.ood_task (the first OOD set)")
        more = []
        for name in d.more_ood:
            try:
                spec = get_task(name)
            except (TypeError, ValueError) as e:
                raise ConfigError(f"data.more_ood: {e}") from None
            if spec.kind != "multiple_choice" and self.model.kind == "causal_lm":
                raise ConfigError(f"data.more_ood: {name!r} is {spec.kind}; a causal LM's OOD sets are multiple-choice "
                                  "tasks scored by the same LM")
            more.append(("more_ood", spec, d.ood_split))
        names = [ood.name] + list(d.more_ood) if ood is not None else []
        if len(set(names)) != len(names):
            raise ConfigError(f"data.ood_task and data.more_ood name a task twice: {names}")
        for key, spec, split in (("task", task, "train"), ("task", task, d.test_split),
                                 ("ood_task", ood, d.ood_split), *more):
            if spec is not None and not spec.has_split(split):
                raise ConfigError(f"data.{key} = {spec.name!r} has no {split} split: set its {split} file"
                                  + (f" or data.{'test' if key == 'task' else 'ood'}_split" if split != "train" else ""))

    # ----------------------------------------------------------------------------------------
    @property
    def anchor_seeds(self) -> tuple[int, ...]:
        """``anchors.seeds``, else ``seed · count + i``: runs of different seeds (replicates) never
        share an anchor (seed 0: 0, 1, 2; seed 1: 3, 4, 5 for three anchors)."""
        n = self.anchors.count
        return self.anchors.seeds or tuple(self.seed * n + i for i in range(n))

    @property
    def data_seed(self) -> int:
        """The seed of the data subsamples: ``data.seed``, else ``seed``."""
        return self.seed if self.data.seed is None else self.data.seed

    def replicate(self, seed: int) -> ExperimentConfig:
        """This config run with another ``seed`` on the same data: the anchors' initialisation
        and batch order, the curve's, every method's sampling change; the data subsamples
        (:attr:`data_seed`) do not. ``seeds`` is cleared (a replicate is one run). The replicate
        of the config's own seed is the config itself (same hash, same stages)."""
        data_seed = self.data_seed
        return self.with_overrides(seed=seed, seeds=[], data={"seed": None if data_seed == seed else data_seed})

    @property
    def needs_curve(self) -> bool:
        return any(m.method == "curve" for m in self.methods.values())

    def to_dict(self) -> dict:
        d = {"seed": self.seed, "name": self.name}
        if self.seeds:  # absent when empty: the hashes of one-seed configs are those from before the key
            d["seeds"] = list(self.seeds)
        for name in self.TABLES:
            table = getattr(self, name)
            d[name] = _plain({f.name: _value(getattr(table, f.name)) for f in config_fields(type(table))})
        d["posterior"] = _plain(self.posterior)
        d["methods"] = {label: {"method": m.method, **_plain(m.options)} for label, m in self.methods.items()}
        return d

    def digest(self, *parts: str, without: tuple[str, ...] = ()) -> str:
        """A short hash of the named parts of the config (all of it when none are named), leaving
        out the ``table.key`` names in ``without``. Keys added after runs were made
        (:data:`LATER_KEYS`) are left out at their default, so that those runs' folders and
        stages keep their hashes."""
        d = self.to_dict()
        for (table, key), default in LATER_KEYS.items():
            if d[table].get(key) == default:
                del d[table][key]
        for table in self.LATER_TABLES:
            if getattr(self, table) == self.TABLES[table]():
                del d[table]
        for name in without:
            table, key = name.split(".")
            d[table].pop(key, None)
        sel = d if not parts else {p: _select(d, p) for p in parts}
        return hash_json(sel)

    def with_overrides(self, **tables: Mapping[str, Any]) -> ExperimentConfig:
        """A copy with some keys of some tables replaced (``methods`` as a whole); validated again."""
        d = self.to_dict()
        for name, values in tables.items():
            if isinstance(d.get(name), dict) and name != "methods":  # methods are replaced whole
                d[name] = {**d[name], **values}
            else:
                d[name] = values
        return ExperimentConfig.from_dict(d)


def _select(d: Mapping, dotted: str):
    cur: Any = d
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return cur


def _value(v):
    """A table's field as plain data (a task description as the keys the user set)."""
    if isinstance(v, TaskSpec):
        return v.to_dict()
    return asdict(v) if hasattr(v, "__dataclass_fields__") else v


def _plain(obj):
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def hash_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(_plain(obj), sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_config(path: str | Path) -> ExperimentConfig:
    """Parse and validate a TOML config (never evaluated)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML: {e}") from None
    return ExperimentConfig.from_dict(data)


def dump_toml(d: Mapping[str, Any]) -> str:
    """A config dict as TOML (scalars, lists of scalars, nested tables) — parsed back equal."""

    def scalar(v) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(scalar(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} to TOML")

    def table(prefix: str, t: Mapping[str, Any]) -> list[str]:
        # TOML has no null: a None is left out (the key's default)
        lines = [f"{k} = {scalar(v)}" for k, v in t.items() if not isinstance(v, Mapping) and v is not None]
        out = ([f"[{prefix}]"] if prefix else []) + lines
        for k, v in t.items():
            if isinstance(v, Mapping):
                key = k if _BARE.fullmatch(k) else json.dumps(k)
                out += [""] + table(f"{prefix}.{key}" if prefix else key, v)
        return out

    return "\n".join(table("", d)) + "\n"


_BARE = re.compile(r"[A-Za-z0-9_-]+")


# --------------------------------------------------------------------------------------------
# Smoke mode: the same pipeline, tiny sizes
# --------------------------------------------------------------------------------------------
_SMOKE_METHOD = {
    "curve": {"num_samples": 8, "warmup": 4, "num_chains": 2, "svi_steps": 10, "grid_points": 21},
    "swag": {"snapshots": 3, "collect_every": 1},
    "vi": {"steps": 5},
    "laplace": {"subset": 16},
}


def smoke(cfg: ExperimentConfig) -> ExperimentConfig:
    """The same config at toy sizes: every stage runs, in seconds, on the real model."""
    methods = {}
    for label, m in cfg.methods.items():
        sig = inspect.signature(_fit_fn(m.method)).parameters
        small = {k: v for k, v in _SMOKE_METHOD.get(m.method, {}).items() if k in sig}
        opts = {**m.options}
        for k, v in small.items():
            opts[k] = min(opts.get(k, v), v) if isinstance(v, (int, float)) else v
        methods[label] = {"method": m.method, **opts}
    return cfg.with_overrides(
        data={"train_examples": min(cfg.data.train_examples, 48), "test_examples": 32, "ood_examples": 32,
              "dev_examples": 32},
        anchors={"max_steps": 3, "batch_size": 8},
        curve={"max_steps": 3, "batch_size": 8},
        paths={"points": 3, "examples": 32},
        evaluation={"num_samples": 2, "idata_draws": 4, "loo_examples": 32},
        methods=methods,
    )


def _fit_fn(method: str):
    from ..inference.registry import get_backend

    return get_backend(method).fit


__all__ = ["ConfigError", "ExperimentConfig", "MethodConfig", "build", "dump_toml", "hash_json", "load_config", "smoke"]
