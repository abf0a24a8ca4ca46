"""Bad input: one row per case, each a clear message, exit code 2, no traceback, and nothing
computed before the check (no stage folder)."""
from __future__ import annotations

import shutil

import pytest
import torch
from scenarios import assert_user_error, tiny_run_config, write_tiny_run_setup

from bayes_lora.experiment.cli import main
from bayes_lora.experiment.config import dump_toml


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input")
    model_dir, data_dir = write_tiny_run_setup(root)
    # a second base model (other weights, same architecture) and anchors made for other settings
    other_model, _ = write_tiny_run_setup(root / "other")
    return root, model_dir, data_dir, other_model


def _anchors_file(path, model_dir, **lora):
    """Anchors saved the way a run saves them, for a model loaded with these LoRA settings."""
    from bayes_lora.lora.backbone import LoraSettings, load_backbone
    from bayes_lora.lora.io import save_tensors
    from bayes_lora.lora.params import FunctionalModel

    bb = load_backbone(str(model_dir), lora=LoraSettings(**{"r": 4, "alpha": 8.0, **lora}))
    fm = FunctionalModel(bb.model)
    save_tensors(path, {"thetas": torch.zeros(2, fm.layout.dim)},
                 {"layout": fm.layout.to_json(), "backbone": bb.metadata()})
    return path


def _data_with(root, name, train_text):
    d = root / name
    shutil.copytree(root / "data", d)
    (d / "sst2" / "train.tsv").write_text(train_text)
    return d


CASES = {
    # case: (function(root, model_dir, data_dir, other) -> (config dict, data dir), words in the message)
    "unknown config key": (lambda r, m, d, o: ({**tiny_run_config(m), "epochs": 3}, d), ["epochs", "allowed"]),
    "wrong type": (lambda r, m, d, o: (tiny_run_config(m, anchors={"count": "2"}), d), ["anchors.count", "integer"]),
    "out of range": (lambda r, m, d, o: (tiny_run_config(m, lora={"r": 0}), d), ["lora.r", "≥ 1"]),
    "zero samples": (lambda r, m, d, o: (tiny_run_config(m, evaluation={"num_samples": 0}), d),
                     ["evaluation.num_samples", "≥ 1"]),
    "curve with one anchor": (lambda r, m, d, o: (tiny_run_config(m, anchors={"count": 1}), d),
                              ["at least two anchors"]),
    "missing data file": (lambda r, m, d, o: (tiny_run_config(m), r / "nowhere"), ["nowhere"]),
    "missing column": (lambda r, m, d, o: (tiny_run_config(m), _data_with(r, "d1", "text\tlabel\na b c d e\t1\n")),
                       ["sentence"]),
    "empty dataset": (lambda r, m, d, o: (tiny_run_config(m), _data_with(r, "d2", "sentence\tlabel\n")), ["empty"]),
    "label outside the classes": (lambda r, m, d, o: (tiny_run_config(m), _data_with(
        r, "d3", "sentence\tlabel\ngood film was very nice\t1\nbad film was very dull\t7\n")), ["7", "range"]),
    "model without the target modules": (lambda r, m, d, o: (tiny_run_config(m, lora={"target_modules": ["q_proj"]}),
                                                               d), ["q_proj", "no modules named"]),
    "anchors with other shapes": (lambda r, m, d, o: (tiny_run_config(m, anchors={"path": str(
        _anchors_file(r / "a_rank.safetensors", m, r=2))}), d), ["rank", "2"]),
    "anchors with other target modules": (lambda r, m, d, o: (tiny_run_config(m, anchors={"path": str(
        _anchors_file(r / "a_mod.safetensors", m, target_modules=("query",)))}), d), ["target_modules"]),
    "anchors of another base model": (lambda r, m, d, o: (tiny_run_config(m, anchors={"path": str(
        _anchors_file(r / "a_base.safetensors", o))}), d), ["base_model"]),
    "anchors file missing": (lambda r, m, d, o: (tiny_run_config(m, anchors={"path": str(r / "none.safetensors")}), d),
                             ["anchors.path", "does not exist"]),
    "config file missing": (None, ["does not exist"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_error_with_exit_code_2(case, setup, tmp_path, capsys):
    root, model_dir, data_dir, other = setup
    make, words = CASES[case]
    out = tmp_path / "out"
    if make is None:
        argv = ["run", str(tmp_path / "missing.toml"), "--out", str(out)]
    else:
        cfg, ddir = make(root, model_dir, data_dir, other)
        path = tmp_path / "c.toml"
        path.write_text(dump_toml(cfg))
        argv = ["run", str(path), "--out", str(out), "--data-dir", str(ddir), "--quiet"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert_user_error(err, words, case)
    assert not (out / "stages").exists(), "the error must come before any stage"


def test_debug_shows_the_traceback(setup, tmp_path, capsys):
    _root, model_dir, _data_dir, _ = setup
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(tiny_run_config(model_dir, lora={"r": 0})))
    assert main(["run", str(path), "--out", str(tmp_path / "o"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
