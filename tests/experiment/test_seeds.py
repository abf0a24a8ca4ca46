"""Replicates over seeds: config semantics, a whole tiny seeds run, the summary and the comparison."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scenarios import tiny_run_config, write_tiny_run_setup

from bayes_lora.experiment.cli import main
from bayes_lora.experiment.config import ConfigError, ExperimentConfig, dump_toml, load_config
from bayes_lora.experiment.runner import Runner
from bayes_lora.experiment.seeds import compare_to_baseline, load_seeds, run_seeds, summarise

METHODS = {"map": {}, "ensemble": {}, "mc_dropout": {"p": 0.1}}


def _config(model_dir, **tables) -> dict:
    """The tiny run config with three methods only (the seeds' loop, not the methods, is tested)."""
    return {**tiny_run_config(model_dir, **tables), "methods": METHODS}


def _cfg(model_dir, **tables):
    return ExperimentConfig.from_dict(_config(model_dir, **tables))


# ------------------------------------------------------------------ config -------------------
def test_replicate_changes_the_training_seeds_not_the_data(tmp_path):
    cfg = _cfg(tmp_path, anchors={"count": 3})
    assert cfg.replicate(0).digest() == cfg.digest()  # the config's own seed: the same run
    r = cfg.replicate(2)
    assert (r.seed, r.data_seed, r.seeds) == (2, 0, ())
    assert r.anchor_seeds == (6, 7, 8)  # replicates never share an anchor
    assert cfg.anchor_seeds == (0, 1, 2)
    assert r.digest() != cfg.digest() and r.digest("data") != cfg.digest("data")
    # a data seed of its own survives replication; unset, it follows the run's seed
    assert cfg.with_overrides(data={"seed": 5}).replicate(1).data_seed == 5
    assert cfg.with_overrides(seed=4).data_seed == 4


def test_seeds_key_is_checked_and_left_out_of_one_seed_hashes(tmp_path):
    d = _config(tmp_path)
    plain = ExperimentConfig.from_dict(d)
    assert "seeds" not in plain.to_dict()
    with_seeds = ExperimentConfig.from_dict({**d, "seeds": [0, 1, 2]})
    assert with_seeds.seeds == (0, 1, 2) and with_seeds.to_dict()["seeds"] == [0, 1, 2]
    assert with_seeds.replicate(0).digest() == plain.digest()
    with pytest.raises(ConfigError, match="seeds must be distinct"):
        ExperimentConfig.from_dict({**d, "seeds": [1, 1]})
    with pytest.raises(ConfigError, match=r"seeds\[1\]"):
        ExperimentConfig.from_dict({**d, "seeds": [0, -1]})
    with pytest.raises(ConfigError, match="seeds must be a list of an integer"):
        ExperimentConfig.from_dict({**d, "seeds": 3})


# ------------------------------------------------------------------ a whole run --------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeds")
    model_dir, data_dir = write_tiny_run_setup(root)
    return root, model_dir, data_dir


@pytest.fixture(scope="module")
def finished(setup):
    root, model_dir, data_dir = setup
    path = root / "tiny.toml"
    path.write_text(dump_toml(_config(model_dir)))
    out = root / "seeds"
    assert main(["run", str(path), "--seeds", "0,1,2", "--out", str(out), "--data-dir", str(data_dir),
                 "--quiet"]) == 0
    return path, out


def test_every_seed_is_a_run_and_the_summary_is_their_mean_and_sd(finished):
    _path, out = finished
    res = load_seeds(out)
    assert res["seeds"] == [0, 1, 2] and res["data_seed"] == 0
    per = {s: json.loads((out / f"seed-{s}" / "results.json").read_text()) for s in (0, 1, 2)}
    assert [per[s]["config_hash"] for s in (0, 1, 2)] == [
        ExperimentConfig.from_dict(json.loads((out / f"seed-{s}" / "config.json").read_text())["config"]).digest()
        for s in (0, 1, 2)]
    # one data set for all replicates, anchors of their own
    assert len({json.dumps(per[s]["data"]["inputs"], sort_keys=True) for s in per}) == 1
    nll = {s: per[s]["methods"]["map"]["nll"] for s in per}
    assert len(set(nll.values())) == 3  # each seed trained its own anchors
    for label in METHODS:
        for metric in ("accuracy", "nll", "ece", "mutual_information"):
            vals = np.array([per[s]["methods"][label][metric] for s in (0, 1, 2)])
            cell = res["summary"][label][metric]
            assert cell["values"] == pytest.approx(vals.tolist())
            assert cell["mean"] == pytest.approx(vals.mean()) and cell["sd"] == pytest.approx(vals.std(ddof=1))
    rows = list(csv.DictReader((out / "seeds.csv").open()))
    assert len(rows) == 3 * len(METHODS)
    assert float(next(r for r in rows if r["seed"] == "1" and r["method"] == "map")["nll"]) == pytest.approx(nll[1])
    report = (out / "report.md").read_text()
    assert "## Mean ± standard deviation over seeds" in report and "## Against map" in report
    m = res["summary"]["map"]["nll"]
    assert "| map | " in report and f"{m['mean']:.4f} ± {m['sd']:.4f}" in report
    assert (out / "figures" / "seeds.png").stat().st_size > 1000
    for s in (0, 1, 2):
        assert f"(seed-{s}/report.md)" in report and (out / f"seed-{s}" / "report.md").is_file()


def test_comparison_is_against_map_and_converged(finished):
    res = load_seeds(finished[1])
    comp = res["comparison"]
    assert set(comp) == {"nll", "ece", "accuracy"}
    for metric, c in comp.items():
        assert set(c["vs_baseline"]) == {"ensemble", "mc_dropout"}
        assert c["max_rhat"] < 1.05 and c["num_divergences"] <= 5
        for v in c["vs_baseline"].values():
            assert 0.0 <= v["p_better"] <= 1.0 and v["hdi_low"] <= v["mean_diff"] <= v["hdi_high"]
        # the posterior mean difference follows the observed mean difference (a flat-ish prior)
        obs = np.mean(res["summary"]["ensemble"][metric]["values"]) - np.mean(res["summary"]["map"][metric]["values"])
        assert np.sign(c["vs_baseline"]["ensemble"]["mean_diff"]) == np.sign(obs) or abs(obs) < 1e-3


def test_a_reused_model_gives_the_numbers_of_a_fresh_run(finished, setup):
    """Seed 1 ran on seed 0's loaded model and encoded data; a fresh runner of the same replicate
    (loading everything itself) reproduces its metrics exactly."""
    path, out = finished
    _root, _model_dir, data_dir = setup
    fresh = Runner(load_config(path).replicate(1), out.parent / "fresh-1", data_dir=str(data_dir),
                   log=lambda m: None).run()
    reused = json.loads((out / "seed-1" / "results.json").read_text())
    assert fresh["config_hash"] == reused["config_hash"]
    for label in METHODS:
        for metric in ("accuracy", "nll", "ece", "brier", "mutual_information"):
            assert fresh["methods"][label][metric] == reused["methods"][label][metric], (label, metric)


def test_a_rerun_skips_every_stage(finished, setup):
    path, out = finished
    _root, _model_dir, data_dir = setup
    before = load_seeds(out)
    again = run_seeds(load_config(path), out, [0, 1, 2], data_dir=str(data_dir), compare=False, log=lambda m: None)
    for s in (0, 1, 2):
        stages = json.loads((out / f"seed-{s}" / "results.json").read_text())["stages"]
        assert {st["status"] for st in stages} == {"skipped"}
    assert again["summary"] == before["summary"]


@pytest.mark.parametrize("seeds, why", [("0", "at least two"), ("0,x", "comma-separated"), ("1,1", "distinct")])
def test_bad_seeds_exit_2(setup, tmp_path, capsys, seeds, why):
    _root, model_dir, data_dir = setup
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(_config(model_dir)))
    assert main(["run", str(path), "--seeds", seeds, "--out", str(tmp_path / "o"), "--data-dir", str(data_dir)]) == 2
    assert why in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_single_run_folder_is_not_overwritten(setup, tmp_path, capsys):
    _root, model_dir, data_dir = setup
    out = tmp_path / "single"
    out.mkdir()
    (out / "results.json").write_text("{}")
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(_config(model_dir)))
    assert main(["run", str(path), "--seeds", "0,1", "--out", str(out), "--data-dir", str(data_dir)]) == 2
    assert "holds a single run" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]


# ------------------------------------------------------------------ the summary and comparison --
def test_summary_and_comparison_known_answers():
    """Four seeds where 'good' is 0.05 below MAP's NLL every time and 'bad' 0.05 above: the
    comparison is sure of both; 'same' scatters around MAP and stays uncertain."""
    rng = np.random.default_rng(0)
    per = {}
    for s in range(4):
        base = 0.40 + 0.01 * rng.standard_normal()
        per[s] = {"map": {"nll": base, "ece": 5.0, "accuracy": 0.8},
                  "good": {"nll": base - 0.05, "ece": 4.0, "accuracy": 0.8},
                  "bad": {"nll": base + 0.05, "ece": 6.0, "accuracy": 0.8},
                  "same": {"nll": base + 0.002 * (-1) ** s, "ece": 5.0, "accuracy": 0.8}}
    summ = summarise(per)
    vals = [per[s]["good"]["nll"] for s in range(4)]
    assert summ["good"]["nll"]["mean"] == pytest.approx(np.mean(vals))
    assert summ["good"]["nll"]["sd"] == pytest.approx(np.std(vals, ddof=1))
    assert summ["map"]["ece"] == {"mean": 5.0, "sd": 0.0, "values": [5.0] * 4}
    comp = compare_to_baseline(per, "map", metrics=[("nll", True)])
    vs = comp["nll"]["vs_baseline"]
    assert vs["good"]["p_better"] > 0.95 and vs["good"]["mean_diff"] == pytest.approx(-0.05, abs=0.02)
    assert vs["bad"]["p_better"] < 0.05 and vs["bad"]["mean_diff"] == pytest.approx(0.05, abs=0.02)
    assert 0.1 < vs["same"]["p_better"] < 0.9
    assert compare_to_baseline(per, "laplace") == {}  # no such baseline: nothing to compare against
