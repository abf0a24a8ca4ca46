"""Evaluate any fitted posterior the same way: metrics, OOD scores, timings and InferenceData."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..diagnostics import metrics as M
from ..types import EncodedTask, Prediction

#: the metric columns every evaluation reports, in table order ("mcc": classification tasks only)
METRICS = ("accuracy", "mcc", "nll", "ece", "brier", "entropy", "aleatoric", "mutual_information", "aurc")


@dataclass
class Evaluation:
    """A posterior's predictive on the test set (and OOD set) and its scalar metrics."""

    prediction: Prediction
    metrics: dict[str, float]
    ood: Prediction | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def evaluate(
    posterior,
    test: EncodedTask,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    ood: EncodedTask | None = None,
) -> Evaluation:
    """Predict ``test`` (and ``ood``) with ``posterior`` and compute every metric.

    ``metrics`` holds :data:`METRICS`, ``fit_seconds``, ``predict_seconds``, ``num_samples``
    and, with an OOD task, ``ood_auroc`` (mutual information as the score) and
    ``ood_auroc_entropy`` (predictive entropy as the score). For a classification task it
    also holds ``mcc`` (Matthews correlation) and ``per_class_accuracy`` (a list in class
    order); the choices of a multiple-choice question are no classes, so it has neither.
    """
    atoms = getattr(posterior, "num_atoms", None)
    if atoms:  # a finite posterior: its atoms are the exact predictive (more would repeat them)
        num_samples = atoms
    start = time.perf_counter()
    pred = posterior.predict(test, num_samples=num_samples, seed=seed, batch_size=batch_size)
    seconds = time.perf_counter() - start
    _check_prediction(pred, test, posterior)
    out: dict[str, Any] = {k: float(v) for k, v in M.summarize(pred.probs, pred.labels).items()}
    if not _is_multiple_choice(test):
        out["mcc"] = M.matthews_corrcoef(pred.probs, pred.labels)
        out["per_class_accuracy"] = M.per_class_accuracy(pred.probs, pred.labels)
    out["fit_seconds"] = float(posterior.info.seconds)
    out["predict_seconds"] = seconds
    out["num_samples"] = int(pred.probs.shape[0])
    ood_pred = None
    if ood is not None:
        ood_pred = posterior.predict(ood, num_samples=num_samples, seed=seed, batch_size=batch_size)
        _check_prediction(ood_pred, ood, posterior)
        h_in, _, mi_in = M.uncertainty_decomposition(pred.probs)
        h_out, _, mi_out = M.uncertainty_decomposition(ood_pred.probs)
        out["ood_auroc"] = M.ood_auroc(mi_in, mi_out)
        out["ood_auroc_entropy"] = M.ood_auroc(h_in, h_out)
    return Evaluation(pred, out, ood_pred)


def _is_multiple_choice(task) -> bool:
    """Whether ``task`` (or the task a cache wraps) scores the choices of questions."""
    from ..data.choice import EncodedMultipleChoice

    while task is not None:
        if isinstance(task, EncodedMultipleChoice):
            return True
        task = getattr(task, "task", None)
    return False


def _check_prediction(pred: Prediction, task: EncodedTask, posterior) -> None:
    p = pred.probs
    if p.dim() != 3 or p.shape[1] != len(task) or p.shape[2] != task.num_classes:
        raise RuntimeError(f"{posterior.method}: predict returned shape {tuple(p.shape)}, expected "
                           f"[S, {len(task)}, {task.num_classes}]")
    if not torch.isfinite(p).all():
        raise FloatingPointError(f"{posterior.method}: the predictive probabilities contain NaN or Inf")


def posterior_idata(posterior, evaluation: Evaluation, *, label: str | None = None, max_coords: int = 16):
    """One ArviZ InferenceData for a fitted posterior and its test predictive.

    ``posterior``: draws of the method's latents (t and z of the curve with their chains; the
    first ``max_coords`` coordinates of subspace cores / Gaussian latents); ``sample_stats``: the
    sampler's statistics when it has per-draw ones (NUTS/HMC); ``log_likelihood``,
    ``posterior_predictive``, ``observed_data``: from the test predictive, one chain of S draws.
    """
    from ..diagnostics.idata import to_inference_data

    pred = evaluation.prediction
    name = label or posterior.method
    attrs_opts = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in posterior.options.items()}
    idata = to_inference_data(log_likelihood=pred.log_likelihood().numpy(), probs=pred.probs.numpy(),
                              labels=pred.labels.numpy(), method=name, options=attrs_opts)
    latents, stats, chains = _latents(posterior, pred.probs.shape[0])
    if latents:
        post = to_inference_data(posterior=latents, sample_stats=stats, chains=chains, method=name,
                                 options=attrs_opts, max_coords=max_coords)
        idata.extend(post)
    return idata


def mcmc_diagnostics(idata) -> dict[str, float]:
    """R-hat and bulk/tail ESS of the curve position t (≥ 2 chains) and the number of divergent
    transitions, for a sampler's InferenceData ({} when there is no chain of t)."""
    from ..diagnostics.idata import convergence

    post = getattr(idata, "posterior", None)
    if post is None or "t" not in post or post["t"].sizes.get("chain", 1) < 2:
        return {}
    return convergence(idata, ["t"])


def _latents(posterior, n: int) -> tuple[dict[str, Any], dict[str, Any] | None, int | None]:
    t = getattr(posterior, "t", None)
    if posterior.method == "curve" and isinstance(t, Tensor):
        lat = {k: v.numpy() for k, v in posterior.latent_samples(None).items()}
        stats = None
        raw = posterior.info.stats or {}
        if "diverging" in raw:
            div = torch.as_tensor(raw["diverging"], dtype=torch.bool)
            if div.shape == t.shape:
                stats = {"diverging": div.numpy()}
                for k in ("energy", "n_steps"):  # per draw
                    if k in raw and torch.as_tensor(raw[k]).shape == t.shape:
                        stats[k] = torch.as_tensor(raw[k]).numpy()
                for k in ("step_size", "acceptance_rate"):  # per chain
                    if k in raw and len(raw[k]) == t.shape[0] and all(math.isfinite(x) for x in raw[k]):
                        stats[k] = torch.tensor(raw[k]).numpy()
        return lat, stats, int(t.shape[0])
    try:
        lat = posterior.latent_samples(n, seed=0)
    except NotImplementedError:
        lat = {}
    return {k: v.detach().numpy() for k, v in lat.items()}, None, None


__all__ = ["METRICS", "Evaluation", "evaluate", "mcmc_diagnostics", "posterior_idata"]
