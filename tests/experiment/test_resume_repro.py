"""Interruption and reproducibility: a SIGKILLed run resumes to the same results as an
uninterrupted one, and the same config and seed give identical numbers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from scenarios import tiny_run_config, write_tiny_run_setup

from bayes_lora.experiment.config import dump_toml

#: a smaller method set keeps the three runs quick; every stage kind is still there
METHODS = {"map": {}, "ensemble": {}, "swag": {"snapshots": 3, "collect_every": 2},
           "curve_nuts": {"method": "curve", "inference": "nuts", "logit_cache": 9, "num_samples": 50,
                          "warmup": 20, "num_chains": 2}}


def _numbers(out):
    res = json.loads((out / "results.json").read_text())
    methods = {k: {m: v for m, v in d.items() if not m.endswith("seconds")} for k, d in res["methods"].items()}
    return methods, res["paths"]


def _cmd(cfg, out, data_dir):
    return [sys.executable, "-m", "bayes_lora", "run", str(cfg), "--out", str(out), "--data-dir", str(data_dir),
            "--quiet"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    model_dir, data_dir = write_tiny_run_setup(root)
    cfg = root / "c.toml"
    cfg.write_text(dump_toml(tiny_run_config(model_dir, anchors={"count": 3}, methods=METHODS,
                                             runtime={"threads": 1, "progress": False})))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ref = root / "ref"
    subprocess.run(_cmd(cfg, ref, data_dir), check=True, capture_output=True, env=env, cwd=REPO)
    return root, cfg, data_dir, ref, env


def test_same_config_and_seed_give_identical_results(setup):
    root, cfg, data_dir, ref, env = setup
    again = root / "again"
    subprocess.run(_cmd(cfg, again, data_dir), check=True, capture_output=True, env=env, cwd=REPO)
    assert _numbers(again) == _numbers(ref)


def test_sigkill_mid_run_resumes_to_identical_results(setup):
    root, cfg, data_dir, ref, env = setup
    out = root / "killed"
    proc = subprocess.Popen(_cmd(cfg, out, data_dir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, cwd=REPO)
    first = out / "stages" / "anchor__0" / "manifest.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the run should have finished its first anchor before the kill"
    assert not (out / "results.json").exists(), "the kill should come before the end of the run"
    done_before = {p.parent.name for p in (out / "stages").glob("*/manifest.json")}
    r = subprocess.run(_cmd(cfg, out, data_dir), capture_output=True, text=True, env=env, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr
    stages = {s["stage"].replace(":", "__"): s["status"] for s in
              json.loads((out / "results.json").read_text())["stages"]}
    assert all(stages[name] == "skipped" for name in done_before), (done_before, stages)
    assert stages.get("anchor__0") == "skipped"
    assert _numbers(out) == _numbers(ref)
