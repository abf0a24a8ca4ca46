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


def _methods(model_dir, methods, **tables):
    cfg = tiny_run_config(model_dir, **tables)
    cfg["methods"] = methods
    return cfg


def _model_folder(root, name, drop=(), config=None, weights=None):
    """A copy of the tiny model folder with files removed or replaced."""
    d = root / name
    if not d.exists():
        shutil.copytree(root / "tiny-bert", d)
        for f in drop:
            (d / f).unlink()
        if config is not None:
            (d / "config.json").write_text(config)
        if weights is not None:
            (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:weights])
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
    # checks of everything the methods will use, before the first stage (the tiny model is 32 wide)
    "label with a slash": (lambda r, m, d, o: (_methods(m, {"map": {}, "a/b": {"method": "map"}}), d),
                           ['[methods."a/b"]', "names its files", "'/'", "[methods.a_b]"]),
    "label with a space": (lambda r, m, d, o: (_methods(m, {"my map": {"method": "map"}}), d), ['"my map"', "' '", "my_map"]),
    "labels differing in case": (lambda r, m, d, o: (_methods(m, {"map": {}, "MAP": {"method": "map"}}), d),
                                 ["[methods.map] and [methods.MAP]", "differ only in case"]),
    "rank above the width, adapter-core SWAG": (lambda r, m, d, o: (_methods(
        m, {"map": {}, "swag": {"space": "adapter"}}, lora={"r": 40}), d),
        ["methods.swag", "LoRA rank 40", "attention.self.query's weight (32, 32)", "r ≤ 32", "lora.r = 40"]),
    "rank above the width, LoRA-XS VI": (lambda r, m, d, o: (_methods(
        m, {"map": {}, "vi": {"kind": "projected"}}, lora={"r": 33}), d), ["methods.vi", "LoRA rank 33", "r ≤ 32"]),
    "LoRA-XS rank above the width": (lambda r, m, d, o: (_methods(
        m, {"map": {}, "vi": {"kind": "projected"}}, projected={"rank": 40}), d),
        ["[projected]", "LoRA rank 40", "r ≤ 32", "projected.rank = 40"]),
    "laplace tensors matching nothing": (lambda r, m, d, o: (_methods(m, {"map": {}, "laplace": {
        "space": "subnetwork", "hessian": "lowrank", "tensors": ["*.layer.7.*"]}}), d),
        ["methods.laplace", "['*.layer.7.*'] match none of θ's tensors"]),
    "laplace K-FAC on a core space": (lambda r, m, d, o: (_methods(m, {"map": {}, "laplace": {
        "space": "adapter", "hessian": "kron"}}), d), ["methods.laplace", "hessian='kron' is not supported"]),
    "laplace tensors outside the subnetwork space": (lambda r, m, d, o: (_methods(m, {"map": {}, "laplace": {
        "space": "full", "tensors": ["*classifier*"]}}), d), ["methods.laplace", "space='subnetwork'"]),
    "swag with one snapshot": (lambda r, m, d, o: (_methods(m, {"map": {}, "swag": {"snapshots": 1}}), d),
                               ["methods.swag", "snapshots ≥ 2"]),
    "anchor index past the anchors": (lambda r, m, d, o: (_methods(m, {"map": {}, "laplace": {
        "space": "full", "anchor": 2}}), d), ["methods.laplace.anchor = 2", "anchors.count = 2", "0..1"]),
    "lora.layers out of range": (lambda r, m, d, o: (_methods(m, {"map": {}}, lora={"layers": [0, 5]}), d),
                                 ["lora.layers = [0, 5]", "5 out of range", "2 layers", "valid indices 0..1"]),
    "empty model folder": (lambda r, m, d, o: (_methods(_model_folder(r, "m0", drop=[
        "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]), {"map": {}}), d),
        ["m0 is empty", "config.json", "save_pretrained"]),
    "model folder without weights": (lambda r, m, d, o: (_methods(_model_folder(r, "m1", drop=[
        "model.safetensors"]), {"map": {}}), d), ["m1 has no weights", "it holds config.json, tokenizer.json"]),
    "model folder without a vocabulary": (lambda r, m, d, o: (_methods(_model_folder(r, "m2", drop=[
        "tokenizer.json"]), {"map": {}}), d), ["m2 has no tokenizer vocabulary"]),
    "model config without model_type": (lambda r, m, d, o: (_methods(_model_folder(
        r, "m3", config='{"hidden_size": 32}'), {"map": {}}), d), ["m3/config.json has no model_type"]),
    "model config not JSON": (lambda r, m, d, o: (_methods(_model_folder(r, "m4", config="{oops"), {"map": {}}), d),
                              ["m4/config.json is not valid JSON", "line 1, column 2"]),
    "truncated model weights": (lambda r, m, d, o: (_methods(_model_folder(r, "m5", weights=100), {"map": {}}), d),
                                ["m5", "not a readable safetensors file"]),
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
