"""The runner on a causal LM scoring multiple-choice answers (the SmolLM2 / OpenBookQA path of
configs/obqa_smollm2.toml) on a tiny Llama: every stage runs, the OOD task is scored, and the
metrics are over the 4 choices; a second OOD set (data.more_ood) gets its own metrics, predictions
and report table."""
from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO
from scenarios import write_tiny_choice_setup

from bayes_lora.diagnostics import metrics as M
from bayes_lora.experiment.config import dump_toml
from bayes_lora.lora.io import load_tensors


def test_causal_lm_multiple_choice_run_end_to_end(tmp_path):
    model_dir, data_dir = write_tiny_choice_setup(tmp_path)
    cfg = {
        "name": "tiny-choice", "seed": 0,
        "model": {"name": str(model_dir), "kind": "causal_lm", "max_length": 24},
        "lora": {"r": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj"], "train_head": False, "layers": [1]},
        "data": {"task": "openbookqa", "train_examples": 48, "test_split": "test", "ood_task": "arc_easy",
                 "ood_split": "test", "more_ood": ["arc_challenge"]},
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
    assert res["more_ood"] == ["arc_challenge"] and res["data"]["more_ood_examples"] == {"arc_challenge": 16}
    report = (out / "report.md").read_text()
    assert "## In- vs out-of-distribution (arc_easy)" in report
    assert "## In- vs out-of-distribution (arc_challenge)" in report
    for label in ("map", "ensemble", "curve_svi"):
        m = res["methods"][label]
        preds = load_tensors(out / "stages" / f"eval__{label}" / "predictions.safetensors")[0]
        h_in, _, mi_in = M.uncertainty_decomposition(preds["probs"])
        for key, suffix in (("ood_probs", ""), ("ood_probs:arc_challenge", "[arc_challenge]")):
            h_out, _, mi_out = M.uncertainty_decomposition(preds[key])
            assert m[f"ood_auroc{suffix}"] == M.ood_auroc(mi_in, mi_out)
            assert m[f"ood_auroc_entropy{suffix}"] == M.ood_auroc(h_in, h_out)
            assert abs(m[f"ood_entropy{suffix}"] - float(h_out.mean())) < 1e-12
        # the two OOD sets are different questions: different predictions
        assert not preds["ood_probs"].equal(preds["ood_probs:arc_challenge"])
