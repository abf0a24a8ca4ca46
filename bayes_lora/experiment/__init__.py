"""Experiments: the declarative config, the staged runner, ``compare`` and reports.

This layer may import every other one (lora, models, inference, diagnostics, data)."""
from .compare import compare
from .config import ConfigError, ExperimentConfig, load_config, smoke
from .evaluate import Evaluation, evaluate, posterior_idata
from .runner import Runner, run

__all__ = ["ConfigError", "Evaluation", "ExperimentConfig", "Runner", "compare", "evaluate", "load_config",
           "posterior_idata", "run", "smoke"]
