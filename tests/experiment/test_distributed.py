"""Scale-out: `accelerate launch --num_processes 2 -m bayes_lora run` on a CPU-only machine runs
the stages of a tiny config on 2 processes (gloo) and gives exactly the metrics of a single-process
run."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from scenarios import write_tiny_single_thread_run

METHODS = {"map": {}, "ensemble": {}, "laplace": {"space": "projected", "subset": 32},
           "swag": {"snapshots": 3, "collect_every": 2},
           "curve_svi": {"method": "curve", "inference": "svi", "svi_steps": 10, "num_samples": 20}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(out: Path):
    res = json.loads((out / "results.json").read_text())
    return ({k: {m: v for m, v in d.items() if not m.endswith("seconds")} for k, d in res["methods"].items()},
            res["paths"], res["stages"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    cfg, data_dir, env = write_tiny_single_thread_run(root, METHODS)
    return root, cfg, data_dir, env


@pytest.mark.slow  # two processes of a whole tiny run (~35 s): make test-all
def test_two_accelerate_processes_give_the_single_process_metrics(setup):
    root, cfg, data_dir, env = setup
    accelerate = Path(sys.executable).with_name("accelerate")
    if not accelerate.exists():
        pytest.skip("the accelerate launcher is not installed beside this Python")
    one, two = root / "one", root / "two"
    run = [sys.executable, "-m", "bayes_lora", "run", str(cfg), "--data-dir", str(data_dir), "--quiet"]
    subprocess.run([*run, "--out", str(one)], check=True, capture_output=True, env=env, cwd=REPO)
    r = subprocess.run([str(accelerate), "launch", "--num_processes", "2", "--num_machines", "1",
                        "--mixed_precision", "no", "--dynamo_backend", "no",
                        "--main_process_port", str(_free_port()),
                        "-m", "bayes_lora", "run", str(cfg), "--data-dir", str(data_dir), "--quiet", "--out", str(two)],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-3000:] + "\n".join(l for l in r.stderr.splitlines() if "error" in l.lower())[-3000:]
    m1, p1, s1 = _metrics(one)
    m2, p2, s2 = _metrics(two)
    assert m2 == m1 and p2 == p1
    ran = {s["stage"]: s["process"] for s in s2 if s["status"] == "ran"}
    assert set(ran) == {s["stage"] for s in s1 if s["status"] == "ran"}, "every stage ran exactly once"
    assert set(ran.values()) == {0, 1}, "both processes ran stages"
    assert ran["anchor:0"] == 0 and ran["anchor:1"] == 1 and ran["anchor:2"] == 0
    assert "[process 1]" in r.stdout
    assert "relaunching with torchrun (2 processes, gloo)" in r.stderr
