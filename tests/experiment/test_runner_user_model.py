"""A user-written Pyro model named in a config (``method = "pyro"``, ``model = "file.py:function"``)
runs through ``bayes-lora run`` like a built-in method: fitted, saved, evaluated, in ArviZ."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scenarios import tiny_run_config, write_tiny_run_setup

from bayes_lora.experiment.cli import main
from bayes_lora.experiment.config import ConfigError, ExperimentConfig, dump_toml

FACTORY = '''
import pyro
import pyro.distributions as dist

import bayes_lora as bl


def beta_curve(ctx):
    """A Beta(2, 2) prior on the position along the run's curve, 32 likelihood examples."""
    lik = bl.LoRALikelihood(ctx.fm, ctx.train, examples=32, seed=ctx.seed)

    def model():
        t = pyro.sample("t", dist.Beta(2.0, 2.0))
        lik(ctx.curve(t))

    return model, lik
'''


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("user-model")
    model_dir, data_dir = write_tiny_run_setup(root)
    (root / "my_models.py").write_text(FACTORY)
    return root, model_dir, data_dir


def _config(model_dir, methods):
    cfg = tiny_run_config(model_dir)
    cfg["methods"] = methods  # these methods only (tiny_run_config merges tables)
    return cfg


def test_a_user_model_named_in_the_config_runs_like_a_builtin(setup):
    from bayes_lora.diagnostics.idata import check_idata_schema, load_idata

    root, model_dir, data_dir = setup
    mine = {"method": "pyro", "model": f"{root / 'my_models.py'}:beta_curve", "inference": "cached_nuts",
            "num_samples": 60, "warmup": 30, "num_chains": 2}
    cfg = root / "c.toml"
    cfg.write_text(dump_toml(_config(model_dir, {"map": {}, "mine": mine})))
    out = root / "run"
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())["methods"]
    assert set(res) == {"map", "mine"}
    assert 0.5 <= res["mine"]["accuracy"] <= 1.0 and res["mine"]["nll"] > 0 and res["mine"]["num_samples"] == 3
    idata = load_idata(out / "idata" / "mine.nc")
    chains, draws = check_idata_schema(idata)
    t = idata.posterior["t"].values
    assert t.shape == (chains, draws) and ((t > 0) & (t < 1)).all()
    assert idata.log_likelihood.sizes["obs_id"] == 32  # the likelihood's own examples
    saved = json.loads((out / "stages" / "fit__mine" / "posterior.json").read_text())
    assert saved["method"] == "pyro" and saved["options"]["prior"] == ["beta", [2.0, 2.0]]
    # the whole chains (2 × 60 draws of t) are kept for R-hat / ESS
    assert load_idata(out / "idata" / "chains" / "mine.nc").posterior["t"].shape == (2, 60)
    assert np.isfinite(res["mine"]["loo"]["elpd_loo"])
    # editing the model's file refits that method, and only it (its digest is part of the fit's key)
    (root / "my_models.py").write_text(FACTORY.replace("dist.Beta(2.0, 2.0)", "dist.Beta(3.0, 3.0)"))
    assert main(["run", str(cfg), "--out", str(out), "--data-dir", str(data_dir), "--quiet"]) == 0
    stages = {s["stage"]: s["status"] for s in json.loads((out / "results.json").read_text())["stages"]}
    assert {k for k, v in stages.items() if v == "ran"} == {"fit:mine", "eval:mine"}
    saved = json.loads((out / "stages" / "fit__mine" / "posterior.json").read_text())
    assert saved["options"]["prior"] == ["beta", [3.0, 3.0]]


def test_a_config_without_the_model_or_with_a_bad_one_is_refused(setup, tmp_path):
    root, model_dir, data_dir = setup
    with pytest.raises(ConfigError, match="'pyro' needs methods.mine.model"):
        ExperimentConfig.from_dict(_config(model_dir, {"mine": {"method": "pyro"}}))
    with pytest.raises(ConfigError, match="methods.mine.inference must be one of"):
        ExperimentConfig.from_dict(_config(model_dir, {"mine": {"method": "pyro", "model": "x:y", "inference": "vi"}}))
    cfg = tmp_path / "c.toml"
    cfg.write_text(dump_toml(_config(model_dir, {
        "mine": {"method": "pyro", "model": f"{root / 'my_models.py'}:no_such_function"}})))
    code = main(["run", str(cfg), "--out", str(tmp_path / "o"), "--data-dir", str(data_dir), "--quiet"])
    assert code == 2
