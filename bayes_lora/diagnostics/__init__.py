"""Diagnostics of sampled predictives: predictive-quality and uncertainty metrics.

This package imports no inference backend and nothing from bayes_lora beyond
``bayes_lora.types``; heavy optional libraries (scikit-learn, ...) are imported lazily inside
the functions that need them.
"""
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
)

__all__ = [
    "ReliabilityBins",
    "RiskCoverage",
    "accuracy",
    "aurc",
    "brier",
    "ece",
    "entropy",
    "nll",
    "ood_auroc",
    "predictive_mean",
    "reliability_bins",
    "risk_coverage",
    "summarize",
    "uncertainty_decomposition",
]
