"""Evaluate any fitted posterior the same way: metrics, OOD scores, timings and InferenceData."""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..diagnostics import metrics as M
from ..types import EncodedTask, Prediction

#: the metric columns every evaluation reports, in table order ("mcc": classification tasks only)
METRICS = ("accuracy", "mcc", "nll", "ece", "brier", "entropy", "aleatoric", "mutual_information", "aurc")


@dataclass
class Evaluation:
    """A posterior's predictive on the test set (and OOD set) and its scalar metrics.

    ``task`` is the evaluated task and ``seed`` the seed of the predictive draws (what
    :func:`posterior_idata` needs to predict it again at other draws).
    """

    prediction: Prediction
    metrics: dict[str, float]
    ood: Prediction | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    task: EncodedTask | None = None
    seed: int = 0


def evaluate(
    posterior,
    test: EncodedTask,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    ood: EncodedTask | None = None,
    more_ood: Mapping[str, EncodedTask] | None = None,
) -> Evaluation:
    """Predict ``test`` (and ``ood``) with ``posterior`` and compute every metric.

    ``metrics`` holds :data:`METRICS`, ``fit_seconds``, ``predict_seconds``, ``num_samples``
    and, with an OOD task, ``ood_auroc`` (mutual information as the score) and
    ``ood_auroc_entropy`` (predictive entropy as the score), ``ood_mutual_information`` and
    ``ood_entropy`` (their means on the OOD set). For a classification task it
    also holds ``mcc`` (Matthews correlation) and ``per_class_accuracy`` (a list in class
    order); the choices of a multiple-choice question are no classes, so it has neither.
    ``more_ood`` ({name: task}, with ``ood``): further OOD sets, each with the same four metrics
    under ``<metric>[<name>]`` (``ood_auroc[arc_challenge]``); their predictions are in
    ``extra["more_ood"]``.
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
    ood_pred, extra = None, {}
    if more_ood and ood is None:
        raise ValueError("more_ood needs ood (the first OOD set)")
    sets = [(None, ood), *(more_ood or {}).items()] if ood is not None else []
    for name, task in sets:
        p_out = posterior.predict(task, num_samples=num_samples, seed=seed, batch_size=batch_size)
        _check_prediction(p_out, task, posterior)
        suffix = "" if name is None else f"[{name}]"
        out.update({k + suffix: v for k, v in _ood_metrics(pred, p_out).items()})
        if name is None:
            ood_pred = p_out
        else:
            extra.setdefault("more_ood", {})[name] = p_out
    return Evaluation(pred, out, ood_pred, extra=extra, task=test, seed=int(seed))


def _ood_metrics(pred: Prediction, ood_pred: Prediction) -> dict[str, float]:
    """OOD AUROC by mutual information and by entropy, and the mean MI and entropy on the OOD set."""
    h_in, _, mi_in = M.uncertainty_decomposition(pred.probs)
    h_out, _, mi_out = M.uncertainty_decomposition(ood_pred.probs)
    # the mean uncertainty out of distribution, beside the test set's ``mutual_information`` and
    # ``entropy``: whether (and by how much) a method's epistemic part grows outside the
    # fine-tuning distribution (BayesLoRA's claim)
    return {"ood_auroc": M.ood_auroc(mi_in, mi_out), "ood_auroc_entropy": M.ood_auroc(h_in, h_out),
            "ood_mutual_information": float(mi_out.mean()), "ood_entropy": float(h_out.mean())}


def _is_multiple_choice(task) -> bool:
    """Whether ``task`` (or the task a cache wraps) scores the choices of questions."""
    while task is not None:
        if getattr(task, "multiple_choice", False):
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


def posterior_idata(
    posterior,
    evaluation: Evaluation,
    *,
    train: EncodedTask,
    label: str | None = None,
    max_coords: int = 16,
    loo_examples: int = 256,
    max_draws: int = 32,
    min_draws: int = 32,
    predictions: bool = True,
    seed: int = 0,
    batch_size: int = 64,
):
    """One ArviZ InferenceData of a fitted posterior whose groups mean what ArviZ means.

    The draws are those of ``p = posterior.thinned(max_draws)`` (the protocol of
    :class:`~bayes_lora.inference.base.Posterior`): for MCMC, each chain evenly thinned to
    ``max_draws // chains`` draws; for a sampled approximation (``p is posterior``), the
    evaluation's own S draws and seed. Every sampled group shares these ``(chain, draw)``:

    * ``posterior``: the latents of the draws (the first ``max_coords`` coordinates of large
      ones); absent when the predictive is not the model at latent draws (Laplace's GLM
      predictive, MC dropout's masks, MAP);
    * ``sample_stats``: the sampler's per-draw statistics of the draws (NUTS / HMC), with its
      per-chain step size and acceptance rate;
    * ``log_likelihood``: ``y`` = log p(y_i | x_i, θ_s) on at most ``loo_examples`` examples of
      the **training** task the posterior conditioned on (``train``; for a likelihood on a
      subset, e.g. the curve's ``likelihood_examples``, rows of that subset): the first of a
      permutation of the training rows seeded by ``seed`` that the likelihood used, so posteriors
      fitted with the same seed share rows. ``obs_id`` holds the training rows; the likelihood
      temperature T is in ``log_likelihood.attrs["temperature"]``, and the log-likelihood is the
      untempered log p, so PSIS-LOO / WAIC estimate the expected log predictive density of a
      left-out training example — exactly for T = 1; for T ≠ 1 see
      :func:`~bayes_lora.diagnostics.idata.loo` (the weights remove y_i with weight 1 from a
      posterior that held it with weight 1/T);
    * ``posterior_predictive``: ``y`` = one draw y_i ~ Categorical(p(· | x_i, θ_s)) per draw
      and example (seeded by ``seed``); ``observed_data``: their labels;
    * ``predictions``: ``y_prob`` = the class probabilities of the evaluated (test) task at the
      same draws (the evaluation's own prediction when ``p is posterior``, else predicted again
      with ``p``); ``predictions_constant_data``: the test labels.

    ``predictions=False`` leaves out the test predictions whenever they would have to be
    predicted again at other draws than the evaluation's (a thinned MCMC posterior, a redrawn
    approximation): one more pass over the test set per method, which the runner skips (its test
    predictive is in the eval stage's ``predictions.safetensors``).

    A sampled approximation evaluated with fewer than ``min_draws`` draws is drawn again with
    ``min_draws`` (the same seed) for every group, the test predictions included: ArviZ fits the
    Pareto tail of PSIS to the largest ⌈S/5⌉ importance ratios and needs S ≥ 21 draws, so with
    the evaluation's 8 draws every Pareto k would be ∞ and LOO meaningless. A finite posterior
    (MAP, an ensemble of M anchors) keeps its atoms: LOO over M atoms is what it is.

    ``seed`` should be the fit's (``FitContext.seed``): it also picks the rows of a likelihood on
    a seeded subset as the fit did. ``attrs["independent_draws"]`` is 1 for a sampled
    approximation (PSIS then takes r_eff = 1).
    """
    from ..diagnostics.idata import to_inference_data

    if isinstance(loo_examples, bool) or int(loo_examples) < 1:
        raise ValueError(f"loo_examples must be ≥ 1, got {loo_examples!r}")
    name = label or posterior.method
    p = posterior.thinned(max_draws)
    own = p is posterior
    pred = evaluation.prediction
    rows = loo_rows(posterior.likelihood_rows(train, seed=seed), len(train), int(loo_examples), seed)
    n = pred.probs.shape[0] if own else None  # a thinned posterior predicts at all its draws
    redraw = own and not getattr(posterior, "num_atoms", None) and n < int(min_draws)
    if redraw:
        n = int(min_draws)
    fit = p.predict(train.subset(rows), num_samples=n, seed=evaluation.seed, batch_size=batch_size)
    S = fit.probs.shape[0]
    chains = 1 if own else int(p.num_chains)
    if S % chains:
        raise RuntimeError(f"{name}: {S} draws do not split into {chains} chains")
    if own and not redraw:
        test = pred
        if test.probs.shape[0] != S:
            raise RuntimeError(f"{name}: the evaluation has {test.probs.shape[0]} draws, the training predictive {S}")
    elif not predictions:
        test = None
    else:
        if evaluation.task is None:
            raise ValueError("posterior_idata needs evaluation.task to predict the test set at these draws")
        test = p.predict(evaluation.task, num_samples=S, seed=evaluation.seed, batch_size=batch_size)

    def by_chain(x: Tensor):
        x = x.detach().cpu()
        return x.reshape(chains, S // chains, *x.shape[1:]).numpy()

    latents = {}
    if p.predicts_at_latents:
        try:
            latents = {k: by_chain(v) for k, v in p.latent_samples(S, seed=evaluation.seed).items()}
        except NotImplementedError:
            latents = {}
    opts = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in posterior.options.items()}
    return to_inference_data(
        posterior=latents or None,
        sample_stats=_sample_stats(p, chains, S // chains) or None,
        log_likelihood=by_chain(fit.log_likelihood()),
        posterior_predictive=by_chain(draw_labels(fit.probs, seed)),
        labels=fit.labels.numpy(),
        predictions=None if test is None else by_chain(test.probs),
        prediction_labels=None if test is None else test.labels.numpy(),
        obs_id=rows.numpy(),
        temperature=float(p.temperature),
        chains=chains,
        method=name,
        options=opts,
        max_coords=max_coords,
        attrs={"independent_draws": int(own), "log_likelihood_data": "train", "seed": int(seed)},
    )


def loo_rows(likelihood_rows: Tensor | None, n_train: int, loo_examples: int, seed: int) -> Tensor:
    """At most ``loo_examples`` of the training rows a likelihood used (``None``: all
    ``n_train``), sorted: the first of them in a permutation of 0..n_train-1 seeded by ``seed``.
    A likelihood on the first rows of that same permutation (the curve's seeded
    ``likelihood_examples``) gets the same rows as one on all of them, up to its size."""
    perm = torch.randperm(int(n_train), generator=torch.Generator().manual_seed(int(seed)))
    if likelihood_rows is not None:
        used = torch.zeros(int(n_train), dtype=torch.bool)
        used[torch.as_tensor(likelihood_rows, dtype=torch.long)] = True
        perm = perm[used[perm]]
    return perm[: int(loo_examples)].sort().values


def draw_labels(probs: Tensor, seed: int) -> Tensor:
    """One draw y ~ Categorical(probs[s, i]) per draw s and example i: [S, N] class indices
    (inverse-CDF sampling from uniforms seeded by ``seed``)."""
    g = torch.Generator().manual_seed(int(seed))
    u = torch.rand(*probs.shape[:-1], 1, generator=g, dtype=torch.float64)
    cdf = probs.detach().cpu().double().cumsum(-1)
    return (cdf < u * cdf[..., -1:]).sum(-1).clamp_max(probs.shape[-1] - 1)


def _sample_stats(p, chains: int, draws: int) -> dict[str, Any]:
    """The per-draw statistics of ``p``'s draws ([chains, draws]) and, with them, the per-chain
    step size and acceptance rate of ``info.stats``."""
    stats = {}
    for k, v in dict(p.sample_stats).items():
        arr = torch.as_tensor(v)
        if arr.shape == (chains, draws):
            stats[k] = arr.numpy()
    if stats:
        raw = p.info.stats or {}
        for k in ("step_size", "acceptance_rate"):  # per chain
            v = raw.get(k)
            if isinstance(v, (list, tuple)) and len(v) == chains and all(
                    isinstance(x, (int, float)) and math.isfinite(x) for x in v):
                stats[k] = torch.tensor(v, dtype=torch.float64).numpy()
    return stats


def chains_idata(posterior, *, label: str | None = None, max_coords: int = 16):
    """Every draw of every chain (``posterior`` and ``sample_stats`` groups only), for
    convergence diagnostics — R-hat, ESS, trace and rank plots — that thinning would weaken; None
    for a sampled approximation (its draws are drawn on demand: nothing is kept)."""
    import sys

    from ..diagnostics.idata import to_inference_data

    full = posterior.thinned(sys.maxsize)
    if full is posterior or not full.predicts_at_latents:
        return None
    n = int(getattr(full, "num_draws", full.default_num_samples))
    chains = int(full.num_chains)
    lat = full.latent_samples(n, seed=0)
    if not lat or n % chains:
        return None
    latents = {k: v.detach().cpu().reshape(chains, n // chains, *v.shape[1:]).numpy() for k, v in lat.items()}
    opts = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in posterior.options.items()}
    return to_inference_data(posterior=latents, sample_stats=_sample_stats(full, chains, n // chains) or None,
                             chains=chains, method=label or posterior.method, options=opts, max_coords=max_coords,
                             attrs={"draws": "every draw of every chain"})


def loo_summary(idata) -> dict[str, Any]:
    """PSIS-LOO and WAIC of ``idata``'s log-likelihood (the training examples the posterior
    conditioned on) as JSON-able numbers: ``examples``, ``draws``, ``temperature``, ``elpd_loo``,
    ``se``, ``p_loo``, ``pareto_k_max`` (the largest finite k), ``pareto_k_gt_0.7`` (how many
    examples have an unreliable importance-sampling estimate), ``pareto_k_inf`` (how many have
    k = ∞: ArviZ fits the Pareto tail to the largest ⌈S/5⌉ ratios and needs 5 of them, so
    S ≥ 21 draws), ``elpd_waic``,
    ``p_waic``. NaN becomes None."""
    import warnings

    from ..diagnostics.idata import loo, waic

    ll = idata.log_likelihood["y"]
    draws = int(ll.sizes["chain"] * ll.sizes["draw"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ArviZ warns about high Pareto k and WAIC variance: tabulated instead
        r = loo(idata, pointwise=True)
        w = waic(idata) if draws > 1 else None
    k = np.asarray(r.pareto_k.values, dtype=float)
    lppd = float(ll.isel(chain=0, draw=0).sum()) if draws == 1 else None

    def num(x):
        x = float(x)
        return x if math.isfinite(x) else None

    return {"examples": int(ll.sizes["obs_id"]), "draws": draws,
            "temperature": num(idata.log_likelihood.attrs.get("temperature", 1.0)),
            "elpd_loo": num(r.elpd_loo), "se": num(r.se), "p_loo": num(r.p_loo),
            "pareto_k_max": float(k[np.isfinite(k)].max()) if np.isfinite(k).any() else None,
            "pareto_k_gt_0.7": int((k > 0.7).sum()),
            "pareto_k_inf": int(np.isposinf(k).sum()),
            "elpd_waic": num(w.elpd_waic) if w is not None else lppd,
            "p_waic": num(w.p_waic) if w is not None else 0.0}


def mcmc_diagnostics(idata) -> dict[str, float]:
    """R-hat and bulk/tail ESS of the curve position t (≥ 2 chains) and the number of divergent
    transitions, for a sampler's InferenceData ({} when there is no chain of t)."""
    from ..diagnostics.idata import convergence

    post = getattr(idata, "posterior", None)
    if post is None or "t" not in post or post["t"].sizes.get("chain", 1) < 2:
        return {}
    return convergence(idata, ["t"])


__all__ = ["METRICS", "Evaluation", "chains_idata", "draw_labels", "evaluate", "loo_rows", "loo_summary",
           "mcmc_diagnostics", "posterior_idata"]
