"""Diagnostics of sampled predictives: predictive-quality and uncertainty metrics, ArviZ
conversion, path / barrier analysis, plots and Bayesian comparison of methods.

This package imports no inference backend and nothing from bayes_lora beyond
``bayes_lora.types``; it works on arrays. Heavy optional libraries (scikit-learn, arviz,
matplotlib, jax / numpyro) are imported lazily: the submodules ``idata``, ``paths``, ``plots``
and ``compare`` are loaded on first access of one of their names below (module-level
``__getattr__``), and import those libraries inside their functions.
"""
import importlib

from bayes_lora.diagnostics.metrics import (
    ReliabilityBins,
    RiskCoverage,
    accuracy,
    aurc,
    brier,
    ece,
    entropy,
    nll,
    ood_auroc,
    predictive_mean,
    reliability_bins,
    risk_coverage,
    summarize,
    uncertainty_decomposition,
    variance_shares,
)

#: Lazily re-exported names → the submodule that defines them.
_LAZY = {
    "to_inference_data": "idata",
    "save_idata": "idata",
    "load_idata": "idata",
    "loo": "idata",
    "waic": "idata",
    "compare_loo": "idata",
    "check_idata_schema": "idata",
    "PathResult": "paths",
    "barrier": "paths",
    "MethodComparison": "compare",
    "compare_methods": "compare",
    "comparison_plot": "plots",
    "mi_histogram": "plots",
    "path_plot": "plots",
    "rank_plot": "plots",
    "reliability_diagram": "plots",
    "risk_coverage_plot": "plots",
    "spectrum_plot": "plots",
    "trace_plot": "plots",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "MethodComparison",
    "PathResult",
    "ReliabilityBins",
    "RiskCoverage",
    "accuracy",
    "aurc",
    "barrier",
    "brier",
    "check_idata_schema",
    "compare_loo",
    "compare_methods",
    "comparison_plot",
    "ece",
    "entropy",
    "load_idata",
    "loo",
    "mi_histogram",
    "nll",
    "ood_auroc",
    "path_plot",
    "predictive_mean",
    "rank_plot",
    "reliability_bins",
    "reliability_diagram",
    "risk_coverage",
    "risk_coverage_plot",
    "save_idata",
    "spectrum_plot",
    "summarize",
    "to_inference_data",
    "trace_plot",
    "uncertainty_decomposition",
    "variance_shares",
    "waic",
]
