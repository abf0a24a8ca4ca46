"""Property (issue 21): whatever a user puts one run folder through — runs of several configs on
several versions of the data, the data edited in place or read from another folder, ``--force``,
runs interrupted at any stage or while writing the report, stage files damaged on disk — the
folder never reports results inconsistent with its config and data.

Hypothesis draws the sequence; after every step the test checks

* the exit code is the one a small model of the folder predicts (0, 2 or 130, nothing else):
  2 exactly when the folder holds the finished run (a readable ``results.json``) of another
  config or other data and ``--force`` is not given, 130 when the run is interrupted;
* stderr holds no traceback; a refusal is one message naming what differs and ``--force``;
* a refused run changes no file of the folder; no run leaves its ``.lock`` behind;
* ``results.json``, whenever it is there, names a (config, data) pair by its config hash and the
  SHA-256 of the files read, agrees with ``config.json``, and its metrics are bit for bit those
  of a clean run of that pair in an empty folder; after a successful run that pair is the one
  just run (config hash, data digests of the files now on disk, data folder);

and every sequence ends with a ``--force`` run that must succeed with the clean run's numbers
(an interrupted or damaged folder resumes to the right results). The clean runs are made once
per module, lazily, one per pair. The tiny run of ``test_run_folder.py`` (one anchor, MAP) keeps
the default test near 20 s; the slow variant adds a second anchor, the curve, its paths and an
ensemble (8 stages) and draws more and longer sequences.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from scenarios import assert_user_error, tiny_run_config, write_tiny_run_setup

from bayes_lora.experiment import report
from bayes_lora.experiment.cli import main
from bayes_lora.experiment.config import ExperimentConfig, dump_toml
from bayes_lora.experiment.runner import Runner

#: config variants: the base one, one whose change reaches every stage (anchors.lr), one whose change
#: reaches only the evaluation (the LOO subset)
CONFIGS = {"base": {}, "lr": {"anchors": {"lr": 2e-2}}, "eval": {"evaluation": {"loo_examples": 8}}}
#: data variants: the toy SST-2 files, and the same with one training label flipped
DATA = ("orig", "flipped")


def _config(model_dir, rich: bool, **tables) -> dict:
    """The run of test_run_folder.py (one anchor, MAP); ``rich``: two anchors, curve, paths and
    an ensemble too."""
    small = {"data": {"train_examples": 32}, "anchors": {"count": 2 if rich else 1, "max_steps": 8},
             "curve": {"max_steps": 4}, "paths": {"points": 3},
             "evaluation": {"num_samples": 2, "idata_draws": 4, "loo_examples": 16}}
    for name, values in tables.items():
        small[name] = {**small.get(name, {}), **values}
    cfg = tiny_run_config(model_dir, **small)
    cfg["methods"] = {"map": {}, "ensemble": {}} if rich else {"map": {}}
    return cfg


def _flip_one_label(text: str) -> str:
    lines = text.splitlines()
    words, label = lines[1].rsplit("\t", 1)
    lines[1] = f"{words}\t{1 - int(label)}"
    return "\n".join(lines) + "\n"


def _sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _digests(record: dict) -> dict[str, str]:
    """``{role: sha256}`` of the files a run read (config.json, results.json)."""
    return {role: v["sha256"] for role, v in record["data"]["inputs"].items()}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _without_timings(x):
    """Metrics minus wall-clock times (``fit_seconds``, ``predict_seconds``, ...), which no two runs share."""
    if isinstance(x, dict):
        return {k: _without_timings(v) for k, v in x.items() if not k.endswith("seconds")}
    return x


class World:
    """The files every example shares (model, data variants, config variants) and the results of
    a clean run of each (config, data) pair, made when first asked for."""

    def __init__(self, root: Path, rich: bool):
        self.root = root
        model_dir, data_dir = write_tiny_run_setup(root, n_train=32, n_test=16, layers=1)
        flipped = shutil.copytree(data_dir, root / "data-flipped")
        train = flipped / "sst2" / "train.tsv"
        train.write_text(_flip_one_label(train.read_text()))
        self.data = {"orig": data_dir, "flipped": flipped}
        self.train_text = {d: (p / "sst2" / "train.tsv").read_text() for d, p in self.data.items()}
        self.cfgs, self.hashes = {}, {}
        for c, tables in CONFIGS.items():
            cfg = _config(model_dir, rich, **tables)
            self.cfgs[c] = root / "cfg" / f"{c}.toml"
            self.cfgs[c].parent.mkdir(exist_ok=True)
            self.cfgs[c].write_text(dump_toml(cfg))
            self.hashes[ExperimentConfig.from_dict(cfg).digest()] = c
        assert len(self.hashes) == len(CONFIGS)
        self.train_digests = {_sha256(p / "sst2" / "train.tsv"): d for d, p in self.data.items()}
        self.n_stages = 8 if rich else 3  # anchor:0 [anchor:1 curve paths] fit:map eval:map [fit:, eval:ensemble]
        self._reference: dict[tuple[str, str], dict] = {}

    def reference(self, cfg: str, data: str) -> dict:
        """The results of (cfg, data) run into an empty folder."""
        if (cfg, data) not in self._reference:
            out = self.root / "reference" / f"{cfg}-{data}"
            code, err = _main(self.cfgs[cfg], out, self.data[data])
            assert code == 0, err
            self._reference[cfg, data] = json.loads((out / "results.json").read_text())
        return self._reference[cfg, data]

    def pair_of(self, results: dict) -> tuple[str, str]:
        """The (config, data) variant that ``results`` were made from, by config hash and data digest."""
        assert results["config_hash"] in self.hashes, "results of a config no step ran"
        train = results["data"]["inputs"]["train"]["sha256"]
        assert train in self.train_digests, "results of data no step ran"
        return self.hashes[results["config_hash"]], self.train_digests[train]


def _main(cfg, out, data_dir, *more) -> tuple[int, str]:
    """``bayes-lora run`` in-process: (exit code, stderr)."""
    err = io.StringIO()
    argv = ["run", str(cfg), "--out", str(out), "--quiet", "--data-dir", str(data_dir), *more]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, err.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("prop-world"), rich=False)


@pytest.fixture(scope="module")
def rich_world(tmp_path_factory):
    return World(tmp_path_factory.mktemp("prop-world-rich"), rich=True)


# ---------------------------------------------------------------- the steps
@dataclass(frozen=True)
class Run:
    """``bayes-lora run`` of config variant ``cfg`` on data variant ``data``: read from the
    example's own data folder (edited in place to ``data`` first) or, ``elsewhere``, from a shared
    copy at another path. ``stop_at``: interrupted (KeyboardInterrupt) at the run's stop_at-th stage
    — inside its build when it has to run, right after it when it is up to date — or, at the
    number of stages, while the report is written (after results.json)."""

    cfg: str
    data: str
    force: bool = False
    elsewhere: bool = False
    stop_at: int | None = None


@dataclass(frozen=True)
class Damage:
    """One byte inverted, ``at`` of the way into a file of the ``stage``-th stage folder (sorted,
    modulo their number): its ``manifest.json``, or else one of its other files (``file``-th,
    modulo their number). A disk error, or a user's editor."""

    stage: int
    manifest: bool
    file: int
    at: float


@dataclass(frozen=True)
class TruncateResults:
    """results.json cut in half (a crash of something other than the runner)."""


def sequences(n_stages: int, max_size: int):
    """A first run (an empty folder is not interesting for long), then up to ``max_size - 1``
    runs, damaged stage files or cut results."""
    run = st.builds(Run, cfg=st.sampled_from(list(CONFIGS)), data=st.sampled_from(DATA), force=st.booleans(),
                    elsewhere=st.booleans(), stop_at=st.none() | st.integers(0, n_stages))
    damage = st.builds(Damage, stage=st.integers(0, n_stages - 1), manifest=st.booleans(), file=st.integers(0, 9),
                       at=st.floats(0, 1, exclude_max=True))
    step = st.one_of(run, run, damage, st.just(TruncateResults()))
    return st.tuples(run, st.lists(step, max_size=max_size - 1)).map(lambda t: [t[0], *t[1]])


def _interrupting(mp: pytest.MonkeyPatch, stop_at: int, n_stages: int) -> None:
    """Make this run stop with a KeyboardInterrupt at its ``stop_at``-th stage (or the report)."""
    if stop_at == n_stages:
        def figures(*a, **k):  # write_report: results.json and results.csv written, report.md not
            raise KeyboardInterrupt
        mp.setattr(report, "_figures", figures)
        return
    calls, stage = [], Runner._stage

    def interrupted(self, name, key, build):
        calls.append(name)
        if len(calls) - 1 != stop_at:
            return stage(self, name, key, build)

        def killed(folder):
            (folder / "half-written.bin").write_bytes(b"\0" * 16)
            raise KeyboardInterrupt
        stage(self, name, key, killed)
        raise KeyboardInterrupt  # the stage was up to date: interrupted right after it
    mp.setattr(Runner, "_stage", interrupted)


class Example:
    """One run folder, its own data folder, and the model of what the folder holds."""

    def __init__(self, world: World, root: Path):
        self.world, self.out = world, root / "run"
        self.home = shutil.copytree(world.data["orig"], root / "data")  # edited in place by the steps
        self.finished: tuple[str, str] | None = None  # the pair of the folder's readable results.json

    def run(self, step: Run) -> None:
        w = self.world
        if step.elsewhere:
            data_dir = w.data[step.data]
        else:
            train = self.home / "sst2" / "train.tsv"
            if train.read_text() != w.train_text[step.data]:
                train.write_text(w.train_text[step.data])
            data_dir = self.home
        pair = (step.cfg, step.data)
        refused = self.finished not in (None, pair) and not step.force
        before = _snapshot(self.out) if self.out.is_dir() else {}
        with pytest.MonkeyPatch.context() as mp:
            if step.stop_at is not None:
                _interrupting(mp, step.stop_at, w.n_stages)
            code, err = _main(w.cfgs[step.cfg], self.out, data_dir, *(["--force"] if step.force else []))
        expected = 2 if refused else 0 if step.stop_at is None else 130
        assert code == expected, f"{step}: exit {code}, expected {expected} (folder held {self.finished}); {err}"
        assert "Traceback" not in err, err
        assert not (self.out / ".lock").exists(), "the lock is released however the run ends"
        if code == 2:
            old_cfg, old_data = self.finished
            words = ["--force", *(["another config"] if old_cfg != step.cfg else []),
                     *(["other data"] if old_data != step.data else [])]
            assert_user_error(err, words, str(step))
            assert _snapshot(self.out) == before, "a refused run changes nothing in the folder"
            return
        if code == 130:
            assert "interrupted" in err
            if step.stop_at == w.n_stages:  # the new results.json was written before the interruption
                self.finished = pair
            elif self.finished != pair:  # none, or another run's results removed by --force
                self.finished = None
            return
        self.finished = pair
        res = json.loads((self.out / "results.json").read_text())
        assert res["config_hash"] == ExperimentConfig.from_dict(json.loads(
            (self.out / "config.json").read_text())["config"]).digest()
        inputs = res["data"]["inputs"]
        assert res["data"]["dir"] == str(data_dir)
        for role, name in (("train", "train.tsv"), ("test", "test.tsv")):
            assert inputs[role]["path"] == str(data_dir / "sst2" / name)
            assert inputs[role]["sha256"] == _sha256(data_dir / "sst2" / name), f"{role} digest after {step}"

    def damage(self, step: Damage) -> None:
        stages = sorted(p for p in (self.out / "stages").iterdir()) if (self.out / "stages").is_dir() else []
        if not stages:
            return
        folder = stages[step.stage % len(stages)]
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")
        if step.manifest or not files:
            files = [folder / "manifest.json"]
        f = files[step.file % len(files)]
        data = bytearray(f.read_bytes()) if f.is_file() else b""
        if data:
            data[int(step.at * len(data))] ^= 0xFF
            f.write_bytes(bytes(data))

    def truncate_results(self) -> None:
        f = self.out / "results.json"
        if f.is_file():
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2])
            self.finished = None  # unreadable: no finished run to protect (documented)

    def check(self) -> None:
        """What the folder reports agrees with the model, with its config.json and with a clean run."""
        f = self.out / "results.json"
        try:
            res = json.loads(f.read_text()) if f.is_file() else None
        except ValueError:  # cut in half by TruncateResults
            res = None
        if res is None:
            assert self.finished is None, f"results.json of {self.finished} lost"
            return
        pair = self.world.pair_of(res)
        assert pair == self.finished, f"the folder reports {pair}, the last finished run was {self.finished}"
        # config.json is the last attempt's: the same config and data contents (the folder may differ)
        cfg = json.loads((self.out / "config.json").read_text())
        assert (cfg["config_hash"], _digests(cfg)) == (res["config_hash"], _digests(res)), \
            "config.json describes another run than results.json"
        ref = self.world.reference(*pair)
        assert _without_timings(res["methods"]) == _without_timings(ref["methods"]), f"metrics of {pair}"
        assert res["paths"] == ref["paths"]


def _play(world: World, root: Path, sequence: list) -> None:
    ex = Example(world, root)
    for step in sequence:
        if isinstance(step, Run):
            ex.run(step)
        elif isinstance(step, Damage):
            ex.damage(step)
        else:
            ex.truncate_results()
        ex.check()
    last = next((s for s in reversed(sequence) if isinstance(s, Run)), Run("base", "orig"))
    ex.run(Run(last.cfg, last.data, force=True))  # resumes whatever the steps left to the right numbers
    ex.check()


#: reproducible (the same sequences every run, no example database); runs take seconds, not milliseconds
SETTINGS = {"deadline": None, "derandomize": True, "database": None, "suppress_health_check": [HealthCheck.too_slow]}


@settings(max_examples=6, **SETTINGS)
@given(sequence=sequences(3, max_size=4))
# always: the data edited in place under a finished run (refused), a forced run of another config
# interrupted in its second stage (the old results removed), damage, then a run of a third pair
@example(sequence=[Run("base", "orig"), Run("base", "flipped"), Run("lr", "flipped", force=True, stop_at=1),
                   Damage(stage=0, manifest=True, file=0, at=0.5), Run("eval", "orig")])
def test_the_run_folder_never_reports_results_of_another_config_or_data(world, tmp_path_factory, sequence):
    _play(world, tmp_path_factory.mktemp("example"), sequence)


@pytest.mark.slow
@settings(max_examples=25, **SETTINGS)
@given(sequence=sequences(8, max_size=6))
def test_the_run_folder_property_with_curve_and_ensemble(rich_world, tmp_path_factory, sequence):
    _play(rich_world, tmp_path_factory.mktemp("example"), sequence)
