"""Scales chosen on the dev split inside a run: the runner loads the dev split only for methods
that ask for it, keys only their fits by it, records and reports the choice, and refuses a task
without a dev split before training."""
from __future__ import annotations

import json

import pytest
from scenarios import tiny_run_config, write_tiny_run_setup

from bayes_lora.experiment.cli import main
from bayes_lora.experiment.config import dump_toml
from bayes_lora.inference.laplace import DEV_PRIOR_GRID

METHODS = {"map": {}, "laplace": {"space": "full", "hessian": "kron", "subset": 32},
           "laplace_dev": {"method": "laplace", "space": "full", "hessian": "kron", "subset": 32, "prior": "dev"}}


def _config(model_dir, methods=METHODS, **data) -> dict:
    return {**tiny_run_config(model_dir, data={"dev_examples": 24, **data}), "methods": methods}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dev-choice")
    model_dir, data_dir = write_tiny_run_setup(root)
    return root, model_dir, data_dir


def _run(path, out, data_dir, *extra) -> dict:
    assert main(["run", str(path), "--out", str(out), "--data-dir", str(data_dir), "--quiet", *extra]) == 0
    return json.loads((out / "results.json").read_text())


def _status(res) -> dict:
    return {s["stage"]: s["status"] for s in res["stages"]}


def test_the_dev_split_is_read_for_the_method_that_asks_and_keys_only_it(setup, tmp_path, capsys):
    _root, model_dir, data_dir = setup
    data = tmp_path / "data"
    (data / "sst2").mkdir(parents=True)  # a copy: its dev file is edited below
    for split in ("train", "test", "dev"):
        (data / "sst2" / f"{split}.tsv").write_text((data_dir / "sst2" / f"{split}.tsv").read_text())
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(_config(model_dir)))
    out = tmp_path / "run"
    res = _run(path, out, data)
    assert res["data"]["dev_examples"] == 24 and "dev" in res["data"]["inputs"]
    choice = res["methods"]["laplace_dev"]["dev_choice"]
    assert choice["parameter"] == "prior_precision" and choice["examples"] == 24
    assert len(choice["grid"]) == len(DEV_PRIOR_GRID) and choice["chosen"] == choice["grid"][choice["index"]]
    assert choice["dev_nll"][choice["index"]] == min(choice["dev_nll"])
    # without the dev split: the evidence's λ, which is the reference of the dev choice
    saved = json.loads((out / "stages" / "fit__laplace" / "posterior.json").read_text())["info"]["stats"]
    assert choice["reference"] == pytest.approx(saved["prior_precision"], rel=1e-5)
    assert "dev_choice" not in res["methods"]["laplace"]
    report = (out / "report.md").read_text()
    assert "## Scales chosen on the dev split" in report and "| laplace_dev | prior_precision | 7 |" in report
    # other dev contents (a folder of other data: --force): only the fit that read them and its evaluation rerun
    lines = (data / "sst2" / "dev.tsv").read_text().splitlines()
    (data / "sst2" / "dev.tsv").write_text("\n".join(lines[:1] + lines[1:][::-1]) + "\n")
    again = _status(_run(path, out, data, "--force"))
    assert again.pop("fit:laplace_dev") == "ran" and again.pop("eval:laplace_dev") == "ran"
    assert set(again.values()) == {"skipped"}, again
    # so does another data.dev_examples (a config change: --force again, which names only that key)
    path.write_text(dump_toml(_config(model_dir, dev_examples=16)))
    capsys.readouterr()
    res = _run(path, out, data, "--force")
    said = capsys.readouterr().out
    assert "changed: data.dev_examples: 24 → 16)" in said, said
    again = _status(res)
    assert again.pop("fit:laplace_dev") == "ran" and again.pop("eval:laplace_dev") == "ran"
    assert set(again.values()) == {"skipped"}, again
    assert res["methods"]["laplace_dev"]["dev_choice"]["examples"] == 16


def test_a_run_without_dev_choices_reads_no_dev_split(setup, tmp_path):
    _root, model_dir, data_dir = setup
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(_config(model_dir, methods={"map": {}})))
    res = _run(path, tmp_path / "run", data_dir)
    assert "dev" not in res["data"]["inputs"] and "dev_examples" not in res["data"]


def test_a_task_without_a_dev_split_is_refused_before_training(setup, tmp_path, capsys):
    _root, model_dir, data_dir = setup
    task = {"name": "nodev", "train": "sst2/train.tsv", "test": "sst2/test.tsv", "text": "sentence", "label": "label"}
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(_config(model_dir, task=task)))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--data-dir", str(data_dir)]) == 2
    err = capsys.readouterr().err
    assert "methods.laplace_dev chooses its scale on the dev split" in err and "'nodev' has no dev split" in err
    assert not out.exists()
