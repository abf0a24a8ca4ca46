"""Experiments: the declarative config, the staged runner, ``compare`` and reports.

This layer may import every other one (lora, models, inference, diagnostics, data). Names are
imported on first use, so that ``bayes_lora.experiment.cli`` starts without torch and a Ctrl-C
while the command line loads its modules is the same clean exit as one during a run."""
from __future__ import annotations

import importlib

_EXPORTS = {
    "compare": "bayes_lora.experiment.compare",
    "ConfigError": "bayes_lora.experiment.config",
    "ExperimentConfig": "bayes_lora.experiment.config",
    "load_config": "bayes_lora.experiment.config",
    "smoke": "bayes_lora.experiment.config",
    "Evaluation": "bayes_lora.experiment.evaluate",
    "evaluate": "bayes_lora.experiment.evaluate",
    "posterior_idata": "bayes_lora.experiment.evaluate",
    "Runner": "bayes_lora.experiment.runner",
    "run": "bayes_lora.experiment.runner",
    "run_seeds": "bayes_lora.experiment.seeds",
}

__all__ = ["ConfigError", "Evaluation", "ExperimentConfig", "Runner", "compare", "evaluate", "load_config",
           "posterior_idata", "run", "run_seeds", "smoke"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bayes_lora.experiment' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
