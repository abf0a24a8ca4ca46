"""The CLI end to end on a tiny config: every stage, every output, skipping and resuming."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO
from scenarios import tiny_run_config, write_tiny_run_setup

from bayes_lora.experiment.cli import main
from bayes_lora.experiment.config import dump_toml


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-run")
    model_dir, data_dir = write_tiny_run_setup(root)
    return root, model_dir, data_dir


def _config(model_dir, **tables):
    """The tiny config with InferenceData of 24 draws (PSIS needs ≥ 21) and the test predictions
    at those draws."""
    return tiny_run_config(model_dir, evaluation={"idata_draws": 24, "idata_predictions": True}, **tables)


def _write(path, cfg):
    path.write_text(dump_toml(cfg))
    return path


def _stages(out):
    return {s["stage"]: s["status"] for s in json.loads((out / "results.json").read_text())["stages"]}


@pytest.fixture(scope="module")
def finished(setup):
    root, model_dir, data_dir = setup
    cfg = _write(root / "tiny.toml", _config(model_dir))
    out = root / "run"
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--quiet"]) == 0
    return cfg, out


def test_every_output_is_written_and_loadable(finished):
    import arviz as az

    _cfg, out = finished
    res = json.loads((out / "results.json").read_text())
    assert set(res) >= {"config_hash", "model", "task", "methods", "paths"}
    labels = ["map", "ensemble", "mc_dropout", "laplace", "swag", "vi", "curve_grid", "curve_svi"]
    assert set(res["methods"]) == set(labels)
    for label, m in res["methods"].items():
        assert {"accuracy", "nll", "ece", "brier", "entropy", "aleatoric", "mutual_information", "aurc",
                "fit_seconds", "predict_seconds", "num_samples"} <= set(m)
        assert 0.0 <= m["accuracy"] <= 1.0 and m["nll"] > 0 and m["mutual_information"] >= -1e-9
        idata = az.from_netcdf(out / "idata" / f"{label}.nc")
        assert {"log_likelihood", "posterior_predictive", "observed_data", "predictions",
                "predictions_constant_data"} <= set(idata.groups())
        _check_semantics(label, idata, m, res)
    assert res["methods"]["map"]["mutual_information"] == pytest.approx(0.0, abs=1e-9)
    assert res["methods"]["map"]["accuracy"] > 0.7  # the toy task is learnable in 80 steps
    for name in ("linear", "curve"):
        p = res["paths"][name]
        assert len(p["t"]) == len(p["loss"]) == len(p["accuracy"]) == 5
        assert p["barrier"] == pytest.approx(max(p["loss"]) - max(p["loss"][0], p["loss"][-1]))
    # the curve's ends are the anchors: same loss at t = 0 and t = 1 on both paths
    assert res["paths"]["curve"]["loss"][0] == pytest.approx(res["paths"]["linear"]["loss"][0], rel=1e-5)
    assert res["paths"]["curve"]["loss"][-1] == pytest.approx(res["paths"]["linear"]["loss"][-1], rel=1e-5)
    csv = (out / "results.csv").read_text().splitlines()
    assert csv[0].startswith("method,accuracy") and len(csv) == 1 + len(labels)
    report = (out / "report.md").read_text()
    assert "| curve_svi |" in report and "figures/paths.png" in report
    assert "## PSIS-LOO and WAIC on training examples" in report and "Pareto k > 0.7" in report
    assert (out / "idata" / "chains" / "curve_svi.nc").is_file()  # every draw, for R-hat / trace plots
    assert not (out / "idata" / "chains" / "vi.nc").exists()  # sampled approximations keep no chains
    assert (out / "figures" / "paths.png").stat().st_size > 1000
    assert (out / "figures" / "risk_coverage.png").is_file()
    # the Gaussian with a covariance of its own (SWAG) reports how few directions hold its variance
    sp = res["methods"]["swag"]["covariance_spectrum"]
    assert sp["exact"] and sp["eigenvalues"] == sorted(sp["eigenvalues"], reverse=True) and sp["trace"] > 0
    assert [k for k, m in res["methods"].items() if "covariance_spectrum" in m] == ["swag"]
    top1 = sp["eigenvalues"][0] / sp["trace"]
    assert f"| swag | {sp['dim']} | {top1:.1%} |" in report and "## Covariance spectra" in report
    assert (out / "figures" / "spectrum_swag.png").stat().st_size > 1000
    assert (out / "resolved_config.toml").is_file()


def _check_semantics(label, idata, metrics, res):
    """Every group at the same draws; log-likelihood on the training rows the posterior conditioned
    on (the curve's 32 likelihood examples, all training rows for the others); test probabilities
    in `predictions`."""
    import numpy as np
    import torch

    from bayes_lora.diagnostics.idata import check_idata_schema
    from bayes_lora.experiment.evaluate import loo_rows

    chains, draws = check_idata_schema(idata)
    n_train, n_test = res["data"]["train_examples"], res["data"]["test_examples"]
    curve = label.startswith("curve")
    # the curve keeps its 20 draws (≤ idata_draws = 24); the sampled approximations are drawn again
    # with 24 (the evaluation's S = 3 is too few for PSIS); MAP and the probit GLM Laplace: 1, the
    # ensemble: its 2 members
    expected = {"map": 1, "laplace": 1, "ensemble": 2}.get(label, 20 if curve else 24)
    assert (chains, draws) == (1, expected) and metrics["num_samples"] == min(expected, 3)
    perm = torch.randperm(n_train, generator=torch.Generator().manual_seed(0))
    rows = perm[:32].sort().values if curve else torch.arange(n_train)  # TaskLogits' seeded subset
    assert list(idata.log_likelihood["obs_id"].values) == loo_rows(rows, n_train, 256, 0).tolist() == rows.tolist()
    assert idata.log_likelihood.attrs["temperature"] == 1.0  # the tiny config tempers nothing
    assert idata.predictions["y_prob"].shape == (chains, draws, n_test, 2)
    assert idata.predictions_constant_data["y"].shape == (n_test,)
    assert idata.posterior_predictive["y"].dtype.kind == "i"
    assert ("posterior" in idata.groups()) == (label in ("ensemble", "swag", "vi") or curve)
    loo = metrics["loo"]
    assert loo["examples"] == len(rows) and loo["draws"] == draws and loo["temperature"] == 1.0
    lppd = float(np.log(np.exp(idata.log_likelihood["y"].values).mean((0, 1))).sum())
    if draws == 1:  # nothing to leave out: elpd = the log predictive density, k undefined
        assert loo["elpd_loo"] == pytest.approx(lppd, rel=1e-9) and loo["pareto_k_max"] is None
    else:
        assert loo["elpd_loo"] <= lppd + 1e-9 and 0 <= loo["pareto_k_gt_0.7"] <= loo["examples"]
        if draws >= 21:  # ArviZ fits the tail to ⌈S/5⌉ ≥ 5 ratios: a finite k for every example
            assert loo["pareto_k_inf"] == 0 and loo["pareto_k_max"] is not None
        else:  # under the 5 ratios it needs: k = ∞ for every example
            assert loo["pareto_k_inf"] == loo["pareto_k_gt_0.7"] == loo["examples"] and loo["pareto_k_max"] is None


def test_rerun_skips_everything_and_gives_the_same_numbers(finished, setup):
    cfg, out = finished
    _, _, data_dir = setup
    before = json.loads((out / "results.json").read_text())["methods"]
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--quiet"]) == 0
    assert set(_stages(out).values()) == {"skipped"}
    assert json.loads((out / "results.json").read_text())["methods"] == before


def test_changed_option_reruns_only_its_dependants(finished, setup):
    root, model_dir, data_dir = setup
    _, out = finished
    cfg = _write(root / "tiny2.toml", _config(model_dir, methods={
        **tiny_run_config(model_dir)["methods"], "mc_dropout": {"p": 0.3}}))
    # the folder holds the finished run of another config: --force reuses it
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--quiet", "--force"]) == 0
    ran = {k for k, v in _stages(out).items() if v == "ran"}
    assert ran == {"fit:mc_dropout", "eval:mc_dropout"}


def test_a_corrupted_stage_file_is_recomputed(finished, setup):
    _, out = finished
    root, _, data_dir = setup
    cfg = root / "tiny2.toml"  # the config of the last run
    f = out / "stages" / "eval__vi" / "metrics.json"
    f.write_text("{}")
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--quiet"]) == 0
    assert {k for k, v in _stages(out).items() if v == "ran"} == {"eval:vi"}
    assert "accuracy" in json.loads(f.read_text())


def test_stage_results_are_passed_in_and_keyed_by_what_each_method_needs(finished, setup):
    """The LoRA-XS MAP is a stage of its own (the projected methods need it); a changed
    [posterior] refits only the methods that take it, a changed [curve] retrains the curve and
    refits only what samples along it; nothing else reruns."""
    root, model_dir, data_dir = setup
    _, out = finished
    assert "projected_map" in _stages(out)  # from the runs above: laplace/vi fit around it
    methods = {**tiny_run_config(model_dir)["methods"], "mc_dropout": {"p": 0.3}}  # as tiny2.toml
    curve_methods = {"fit:curve_grid", "eval:curve_grid", "fit:curve_svi", "eval:curve_svi"}
    cfg = _write(root / "tiny3.toml", _config(model_dir, methods=methods, posterior={"temperature": 2.0}))
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--quiet", "--force"]) == 0
    assert {k for k, v in _stages(out).items() if v == "ran"} == curve_methods
    cfg = _write(root / "tiny4.toml", _config(model_dir, methods=methods, posterior={"temperature": 2.0},
                                              curve={"lr": 2e-3}))
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--quiet", "--force"]) == 0
    assert {k for k, v in _stages(out).items() if v == "ran"} == curve_methods | {"curve", "paths"}


def test_compare_tabulates_runs(finished, capsys, tmp_path):
    _, out = finished
    assert main(["compare", str(out), "--csv", str(tmp_path / "t.csv")]) == 0
    text = capsys.readouterr().out
    assert "curve_grid" in text and "mc_dropout" in text
    assert (tmp_path / "t.csv").read_text().count("\n") == 9
    # a run of another task is not comparable: refused (exit 2, naming what differs) unless --mix
    other = tmp_path / "other"
    other.mkdir()
    res = json.loads((out / "results.json").read_text())
    (other / "results.json").write_text(json.dumps({**res, "task": "rte"}))
    capsys.readouterr()
    assert main(["compare", str(out), str(other)]) == 2
    err = capsys.readouterr().err
    assert "not comparable" in err and "'sst2'" in err and "'rte'" in err and "Traceback" not in err
    assert main(["compare", str(out), str(other), "--mix"]) == 0
    assert " | rte | " in capsys.readouterr().out


def test_the_lora_xs_rank_is_a_setting_of_its_own(finished, setup):
    """[projected] rank = 6 over the tiny model's rank-4 LoRA: only the LoRA-XS MAP and the
    methods fitted around it (Laplace, SWAG and VI over the cores) rerun, not the anchors or the
    curve; their saved posteriors hold rank-6 factors; a rerun skips everything."""
    import tomllib

    from bayes_lora.experiment.runner import RESOLVED_CONFIG

    root, _model_dir, data_dir = setup
    _, out = finished
    last = tomllib.loads((out / RESOLVED_CONFIG).read_text())  # the folder's last run, whichever test made it
    assert last["projected"] == {"rank": 0, "lr": 2e-2}  # the default: lora.r, PROJECTED_LR
    cfg = _write(root / "tiny_xs.toml", {**last, "projected": {"rank": 6, "lr": 3e-2}})
    args = ["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--quiet", "--force"]
    assert main(args) == 0
    projected = {f"{stage}:{m}" for m in ("laplace", "swag", "vi") for stage in ("fit", "eval")}
    assert {k for k, v in _stages(out).items() if v == "ran"} == projected | {"projected_map"}
    for label in ("laplace", "swag", "vi"):
        layout = json.loads((out / "stages" / f"fit__{label}" / "posterior.json").read_text())["layout"]
        ranks = [s[0] for n, s in zip(layout["names"], layout["shapes"]) if ".lora_A." in n]
        assert ranks == [6] * 4, label
    res = json.loads((out / "results.json").read_text())
    assert res["methods"]["swag"]["nll"] > 0 and 0 <= res["methods"]["laplace"]["accuracy"] <= 1
    assert main(args[:-1]) == 0
    assert not {k for k, v in _stages(out).items() if v == "ran"}


def test_bad_input_exits_2_without_traceback(setup, tmp_path):
    _root, model_dir, _data_dir = setup
    cfg = _write(tmp_path / "c.toml", tiny_run_config(model_dir))
    r = subprocess.run([sys.executable, "-m", "bayes_lora", "run", str(cfg), "--out", str(tmp_path / "o"),
                        "--data-dir", str(tmp_path / "no-data")], capture_output=True, text=True, cwd=REPO,
                       check=False)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "error:" in r.stderr and "no-data" in r.stderr
