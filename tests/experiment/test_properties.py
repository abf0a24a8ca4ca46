"""Property tests (hypothesis): config parsing never fails with anything but a ConfigError that
names a key, and the metrics turn any valid probabilities into finite numbers in range."""
from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scenarios import tiny_run_config

from bayes_lora.diagnostics.metrics import summarize, uncertainty_decomposition
from bayes_lora.experiment.config import ConfigError, ExperimentConfig

BASE = tiny_run_config("/nowhere")
TABLES = ["model", "lora", "data", "anchors", "curve", "evaluation", "runtime"]
values = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=8), st.lists(st.integers(-3, 10), max_size=3), st.dictionaries(
                       st.text(max_size=4), st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=st.sampled_from(TABLES), key=st.one_of(st.sampled_from(
    ["count", "r", "alpha", "epochs", "lr", "task", "degree", "num_samples", "layers", "name", "kind",
     "perturbation", "max_length", "dropout", "threads", "seeds", "bogus"]), st.text(max_size=6)), value=values)
def test_config_parsing_accepts_or_names_the_key(table, key, value):
    cfg = {**BASE, table: {**BASE.get(table, {}), key: value}}
    try:
        ExperimentConfig.from_dict(cfg)
    except ConfigError as e:
        msg = str(e)
        assert msg and (key in msg or table in msg or "anchor" in msg or "model.kind" in msg), msg


@settings(max_examples=100, deadline=None)
@given(s=st.integers(1, 5), n=st.integers(1, 30), c=st.integers(2, 5), seed=st.integers(0, 10**6),
       sharp=st.floats(0.0, 30.0))
def test_metrics_of_any_valid_predictive_are_finite_and_in_range(s, n, c, seed, sharp):
    g = torch.Generator().manual_seed(seed)
    probs = (sharp * torch.randn(s, n, c, generator=g, dtype=torch.float64)).softmax(-1)
    labels = torch.randint(c, (n,), generator=g)
    m = summarize(probs, labels)
    assert all(math.isfinite(v) for v in m.values()), m
    assert 0 <= m["accuracy"] <= 1 and 0 <= m["ece"] <= 100 and 0 <= m["brier"] <= 2 and m["nll"] >= 0
    assert 0 <= m["aurc"] <= 1
    total, aleatoric, mi = uncertainty_decomposition(probs)
    assert (mi >= -1e-9).all() and (mi <= total + 1e-9).all() and (total <= math.log(c) + 1e-9).all()
    assert torch.allclose(total, aleatoric + mi, atol=1e-9)


def test_no_unsafe_deserialisation_in_the_package():
    """Posteriors, anchors and caches are safetensors + JSON; configs are parsed, never evaluated."""
    import re

    from conftest import REPO

    bad = []
    for path in (REPO / "bayes_lora").rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r"\bimport pickle\b|\bpickle\.loads?\(|\bimport dill\b|\bjoblib\.load\(|(?<![.\w])eval\(|(?<![.\w])exec\(", code):
                bad.append(f"{path.name}:{i}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                bad.append(f"{path.name}:{i}: {line.strip()}")
    assert not bad, bad
