"""The runner on a causal LM scoring multiple-choice answers (the SmolLM2 / OpenBookQA path of
configs/obqa_smollm2.toml) on a tiny Llama: every stage runs, the OOD task is scored, and the
metrics are over the 4 choices."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO
from scenarios import write_tiny_choice_setup

from bayes_lora.experiment.config import dump_toml


def test_causal_lm_multiple_choice_run_end_to_end(tmp_path):
    model_dir, data_dir = write_tiny_choice_setup(tmp_path)
    cfg = {
        "name": "tiny-choice", "seed": 0,
        "model": {"name": str(model_dir), "kind": "causal_lm", "max_length": 24},
        "lora": {"r": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj"], "train_head": False, "layers": [1]},
        "data": {"task": "openbookqa", "train_examples": 48, "test_split": "test", "ood_task": "arc_easy",
                 "ood_split": "test"},
        "anchors": {"count": 2, "epochs": 2.0, "lr": 1e-2, "batch_size": 8},
        "curve": {"degree": 2, "epochs": 1.0, "batch_size": 8, "js_batch": 4}, "paths": {"points": 3},
        "posterior": {"likelihood_examples": 16},
        "evaluation": {"num_samples": 2, "batch_size": 8},
        "runtime": {"progress": False, "threads": 1},
        "methods": {"map": {}, "ensemble": {},
                    "curve_svi": {"method": "curve", "inference": "svi", "logit_cache": 5, "svi_steps": 20,
                                  "num_samples": 8}},
    }
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "bayes_lora", "run", str(path), "--out", str(out), "--data-dir",
                        str(data_dir), "--quiet"], capture_output=True, text=True, cwd=REPO, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["data"]["test_examples"] == 16 and res["data"]["ood_examples"] == 16
    for label in ("map", "ensemble", "curve_svi"):
        m = res["methods"][label]
        assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["ood_auroc"] <= 1.0
        assert 0.0 < m["nll"] < 20.0
    assert set(res["paths"]) == {"linear", "curve"}
