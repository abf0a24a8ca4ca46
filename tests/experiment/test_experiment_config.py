"""The declarative config: validated on load, errors name the key and what is allowed."""
from __future__ import annotations

import tomllib

import pytest
from conftest import REPO
from scenarios import tiny_run_config

from bayes_lora.experiment.cli import default_config_path
from bayes_lora.experiment.config import (
    ConfigError,
    ExperimentConfig,
    dump_toml,
    load_config,
    smoke,
)

BASE = tiny_run_config("/nonexistent/model")


def _with(**tables):
    return tiny_run_config("/nonexistent/model", **tables)


BAD = [
    # (what, config dict, words the message must contain)
    ("unknown top key", {**BASE, "modle": {}}, ["modle", "allowed"]),
    ("unknown table key", _with(anchors={"cout": 2}), ["anchors.cout", "count"]),
    ("wrong type", _with(anchors={"count": "three"}), ["anchors.count", "integer"]),
    ("bool is not an int", _with(lora={"r": True}), ["lora.r", "integer"]),
    ("out of range", _with(lora={"r": 0}), ["lora.r", "≥ 1"]),
    ("dropout range", _with(lora={"dropout": 1.5}), ["lora.dropout", "< 1"]),
    ("bad choice", _with(curve={"perturbation": "adversarial"}), ["curve.perturbation", "gaussian"]),
    ("bad js_grad", _with(curve={"js_grad": "some"}), ["curve.js_grad", "first"]),
    ("bad t_sampling", _with(curve={"t_sampling": "epoch"}), ["curve.t_sampling", "step"]),
    ("unknown task", _with(data={"task": "imdb"}), ["data.task", "sst2"]),
    ("unknown method", _with(methods={"bogus": {}}), ["methods.bogus", "unknown inference method", "laplace"]),
    ("unknown method option", _with(methods={"swag": {"snapshotz": 3}}), ["methods.swag.snapshotz", "snapshots"]),
    ("method option type", _with(methods={"swag": {"snapshots": "many"}}), ["methods.swag.snapshots", "number"]),
    ("method option choice", _with(methods={"swag": {"space": "subspace"}}), ["methods.swag.space", "'adapter'"]),
    ("laplace hessian choice", _with(methods={"lap": {"method": "laplace", "hessian": "block"}}),
     ["methods.lap.hessian", "'kron'"]),
    ("curve with one anchor", _with(anchors={"count": 1}), ["at least two anchors", "anchors.count"]),
    ("ensemble larger than anchors", _with(methods={"ensemble": {"members": 5}}), ["members", "anchors.count"]),
    ("seeds and count disagree", _with(anchors={"count": 2, "seeds": [1, 2, 3]}), ["anchors.seeds", "count"]),
    ("bad posterior", _with(posterior={"t_prior": "gamma"}), ["[posterior]", "uniform"]),
    ("no methods", {**BASE, "methods": {}}, ["[methods]", "at least one"]),
    ("classifier on multiple choice", _with(data={"task": "openbookqa"}), ["causal_lm"]),
    ("moved key", _with(curve={"path_points": 5}), ["curve.path_points is now paths.points"]),
    ("the run's seed is not a curve key", _with(curve={"seed": 3}), ["unknown key curve.seed"]),
    ("the run's seed is not an anchors key", _with(anchors={"seed": 3}), ["unknown key anchors.seed"]),
    ("curve degree bound (CurveConfig's)", _with(curve={"degree": 9}), ["curve.degree", "≤ 8"]),
    ("grad_clip bound (TrainConfig's)", _with(anchors={"grad_clip": 0.0}), ["anchors.grad_clip", "> 0"]),
    ("more_ood without ood_task", _with(data={"more_ood": ["cola"]}), ["data.more_ood", "data.ood_task"]),
    ("more_ood unknown task", _with(data={"ood_task": "cola", "more_ood": ["colla"]}), ["data.more_ood", "cola"]),
    ("more_ood repeats ood_task", _with(data={"ood_task": "cola", "more_ood": ["cola"]}), ["twice", "'cola'"]),
    ("more_ood of a causal LM is multiple choice",
     _with(model={"kind": "causal_lm"}, data={"task": "openbookqa", "ood_task": "arc_easy", "more_ood": ["cola"]},
           methods={"map": {}}), ["data.more_ood", "'cola'", "multiple-choice"]),
]


def test_the_config_tables_are_the_library_settings():
    """One type per concept: [curve] is CurveConfig and [anchors] a TrainConfig, with the
    library's defaults; the runner trains with exactly what the table holds."""
    from dataclasses import fields, replace

    from bayes_lora.lora.curve_train import CurveConfig
    from bayes_lora.lora.train import TrainConfig

    cfg = ExperimentConfig.from_dict({"methods": {"curve": {}}, "curve": {"degree": 3, "anchored": False, "lr": 1e-3}})
    assert type(cfg.curve) is CurveConfig
    assert cfg.curve == replace(CurveConfig(), degree=3, anchored=False, lr=1e-3)
    assert isinstance(cfg.anchors, TrainConfig)
    train = cfg.anchors.training(seed=7)
    assert type(train) is TrainConfig and train.seed == 7
    assert {f.name: getattr(train, f.name) for f in fields(TrainConfig) if f.name != "seed"} == \
        {f.name: getattr(cfg.anchors, f.name) for f in fields(TrainConfig) if f.name != "seed"}
    plain = ExperimentConfig.from_dict({"methods": {"map": {}}, "anchors": {"count": 1}})
    assert plain.curve == CurveConfig() and plain.anchors.training(0) == TrainConfig()
    # the library's own checks are the config's: a bad value names the field either way
    with pytest.raises(ValueError, match="degree must be ≤ 8"):
        CurveConfig(degree=9)


@pytest.mark.parametrize("what,cfg,words", BAD, ids=[b[0] for b in BAD])
def test_bad_config_names_the_key(what, cfg, words):
    with pytest.raises(ConfigError) as e:
        ExperimentConfig.from_dict(cfg)
    for w in words:
        assert w in str(e.value), f"{what}: {w!r} not in {e.value}"


def test_round_trip_through_toml_and_dict():
    cfg = ExperimentConfig.from_dict(BASE)
    again = ExperimentConfig.from_dict(tomllib.loads(dump_toml(cfg.to_dict())))
    assert again == cfg and again.digest() == cfg.digest()


def test_digest_of_a_table_changes_only_with_it():
    a = ExperimentConfig.from_dict(BASE)
    b = ExperimentConfig.from_dict(_with(methods={"mc_dropout": {"p": 0.2}}))
    assert a.digest("anchors") == b.digest("anchors") and a.digest("curve") == b.digest("curve")
    assert a.digest() != b.digest()


def test_embedded_default_is_the_repo_default_and_valid():
    assert default_config_path().read_text() == (REPO / "configs" / "default.toml").read_text()
    cfg = load_config(default_config_path())
    assert cfg.anchors.count == 3 and cfg.model.name == "all-MiniLM-L6-v2"
    assert {m.method for m in cfg.methods.values()} == {"map", "ensemble", "mc_dropout", "laplace", "swag", "vi",
                                                         "curve"}
    small = smoke(cfg)
    assert small.data.train_examples < cfg.data.train_examples and small.evaluation.num_samples <= 2


def test_every_committed_config_is_valid():
    for path in sorted((REPO / "configs").glob("*.toml")):
        load_config(path)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
