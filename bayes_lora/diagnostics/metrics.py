"""Predictive-quality and uncertainty metrics for sampled predictives.

Every function takes the probabilities of S posterior samples, ``probs`` of shape [S, N, C]
(S samples, N examples, C classes), as a :class:`torch.Tensor` or anything :func:`numpy.asarray`
accepts, and computes in float64 torch on the tensor's device. ``labels`` are integers of shape
[N]. A single (deterministic) predictor is passed as ``probs[None]`` (S = 1).

Notation: ``p_s`` is the predictive of sample s, ``p̄ = (1/S) Σ_s p_s`` the Bayesian model
average, ``ŷ_n = argmax_c p̄_nc`` the prediction and ``conf_n = max_c p̄_nc`` its confidence.

Only torch and numpy are used.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ReliabilityBins",
    "RiskCoverage",
    "accuracy",
    "aurc",
    "brier",
    "ece",
    "entropy",
    "matthews_corrcoef",
    "nll",
    "ood_auroc",
    "per_class_accuracy",
    "predictive_mean",
    "reliability_bins",
    "risk_coverage",
    "summarize",
    "uncertainty_decomposition",
    "variance_shares",
]

#: Largest allowed |Σ_c p_c − 1| of any probability row.
SUM_TOL = 1e-3
#: Entries below −NEG_TOL are rejected; entries in [−NEG_TOL, 0) are round-off and clamped to 0.
NEG_TOL = 1e-6
#: Floor applied to p̄_y before the log in :func:`nll`.
NLL_CLAMP = 1e-12

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


# --------------------------------------------------------------------------------------------
# Input conversion and validation
# --------------------------------------------------------------------------------------------
def _to_float64(x: Any, name: str) -> Tensor:
    """``x`` as a float64 tensor (tensors keep their device; everything else goes to CPU)."""
    if isinstance(x, Tensor):
        if x.is_complex():
            raise ValueError(f"{name} must be real, got dtype {x.dtype}")
        return x.detach().to(torch.float64)
    try:
        arr = np.array(x, dtype=np.float64)  # a copy: never shares memory with the caller
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a tensor or array of numbers: {err}") from err
    return torch.from_numpy(arr)


def _check_probs(probs: Any) -> Tensor:
    """Validate ``probs`` [S, N, C] and return it as float64."""
    p = _to_float64(probs, "probs")
    if p.ndim != 3:
        hint = " (a single predictor with probs [N, C] should pass probs[None])" if p.ndim == 2 else ""
        raise ValueError(
            f"probs must be 3-D [S samples, N examples, C classes], got shape "
            f"{tuple(p.shape)}{hint}"
        )
    s, n, c = p.shape
    if s == 0:
        raise ValueError("probs has S = 0 posterior samples; need at least one")
    if n == 0:
        raise ValueError("probs has N = 0 examples; need at least one")
    if c == 0:
        raise ValueError("probs has C = 0 classes; need at least one")
    if not torch.isfinite(p).all():
        bad = int((~torch.isfinite(p)).sum())
        raise ValueError(f"probs contains {bad} NaN/Inf value(s)")
    low = float(p.min())
    if low < -NEG_TOL:
        raise ValueError(f"probs must be non-negative, found a value {low:.3g}")
    dev = (p.sum(-1) - 1.0).abs()
    worst = float(dev.max())
    if worst > SUM_TOL:
        flat = int(dev.argmax())
        si, ni = divmod(flat, n)
        raise ValueError(
            f"probs rows must sum to 1 (within {SUM_TOL:g}) over the class axis; row "
            f"[sample {si}, example {ni}] sums to {float(p[si, ni].sum()):.6g}"
        )
    if low < 0:
        p = p.clamp_min(0.0)
    return p


def _check_labels(labels: Any, n: int, c: int, device: torch.device) -> Tensor:
    """Validate integer ``labels`` [N] with values in [0, C); return a LongTensor on ``device``."""
    if isinstance(labels, Tensor):
        if labels.dtype not in _INT_DTYPES:
            raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
        y = labels.detach()
    else:
        arr = np.asarray(labels)
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"labels must be integers, got dtype {arr.dtype}")
        y = torch.from_numpy(arr.astype(np.int64))
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"labels has length {y.shape[0]} but probs has N = {n} examples")
    y = y.to(device=device, dtype=torch.int64)
    if n and (int(y.min()) < 0 or int(y.max()) >= c):
        bad = y[(y < 0) | (y >= c)]
        raise ValueError(f"labels must lie in [0, C) = [0, {c}); found label {int(bad[0])}")
    return y


def _check_scores(score: Any, name: str, n: int | None = None) -> Tensor:
    """A finite 1-D float64 score vector (of length ``n`` when given)."""
    t = _to_float64(score, name)
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if n is not None and t.shape[0] != n:
        raise ValueError(f"{name} has length {t.shape[0]} but probs has N = {n} examples")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/Inf")
    return t


def _check_n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    return int(n_bins)


# --------------------------------------------------------------------------------------------
# Predictive mean and entropy decomposition
# --------------------------------------------------------------------------------------------
def predictive_mean(probs: Any) -> Tensor:
    """Bayesian model average over posterior samples.

    .. math:: \\bar p_{nc} = \\frac{1}{S} \\sum_{s=1}^{S} p_{snc}

    Parameters
    ----------
    probs : Tensor or array_like, shape [S, N, C]
        Per-sample predictive probabilities.

    Returns
    -------
    Tensor, float64, shape [N, C]
    """
    return _check_probs(probs).mean(0)


def entropy(p: Any) -> Tensor:
    """Shannon entropy (natural log, nats) of probability vectors along the last axis.

    .. math:: H[p] = -\\sum_c p_c \\log p_c, \\qquad 0 \\cdot \\log 0 := 0

    Parameters
    ----------
    p : Tensor or array_like, shape [..., C]
        Probability vectors on the last axis (not re-validated here).

    Returns
    -------
    Tensor, float64, shape [...]
    """
    t = _to_float64(p, "p")
    if t.ndim == 0:
        raise ValueError("entropy needs probability vectors on the last axis, got a scalar")
    return -torch.special.xlogy(t, t).sum(-1)


def _decompose(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    total = entropy(p.mean(0))
    aleatoric = entropy(p).mean(0)
    # MI >= 0 by concavity of H; the clamp only removes floating-point round-off.
    epistemic = (total - aleatoric).clamp_min(0.0)
    return total, aleatoric, epistemic


def uncertainty_decomposition(probs: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Split predictive entropy into aleatoric and epistemic parts, per example.

    .. math::

        \\text{total}_n = H[\\bar p_n], \\qquad
        \\text{aleatoric}_n = \\frac{1}{S} \\sum_s H[p_{sn}], \\qquad
        \\text{epistemic}_n = \\text{total}_n - \\text{aleatoric}_n = I(y_n; \\theta)

    The epistemic part is the mutual information between label and parameters (the
    generalised Jensen–Shannon divergence of the S predictives); it is >= 0 mathematically and
    clamped at 0 to remove round-off only. With S = 1 it is 0.

    Parameters
    ----------
    probs : Tensor or array_like, shape [S, N, C]

    Returns
    -------
    total, aleatoric, epistemic : Tensor, float64, shape [N] each (nats)
    """
    return _decompose(_check_probs(probs))


# --------------------------------------------------------------------------------------------
# Label-based metrics
# --------------------------------------------------------------------------------------------
def _prepare(probs: Any, labels: Any) -> tuple[Tensor, Tensor, Tensor]:
    """Validated ``(probs, p̄, labels)``."""
    p = _check_probs(probs)
    y = _check_labels(labels, p.shape[1], p.shape[2], p.device)
    return p, p.mean(0), y


def _accuracy(pbar: Tensor, y: Tensor) -> float:
    return float((pbar.argmax(-1) == y).double().mean())


def _nll(pbar: Tensor, y: Tensor) -> float:
    py = pbar.gather(-1, y[:, None]).squeeze(-1)
    return float(-py.clamp_min(NLL_CLAMP).log().mean())


def _brier(pbar: Tensor, y: Tensor) -> float:
    onehot = torch.nn.functional.one_hot(y, pbar.shape[-1]).to(pbar.dtype)
    return float(((pbar - onehot) ** 2).sum(-1).mean())


def accuracy(probs: Any, labels: Any) -> float:
    """Top-1 accuracy of the model average.

    .. math:: \\mathrm{acc} = \\frac{1}{N} \\sum_n \\mathbb{1}[\\arg\\max_c \\bar p_{nc} = y_n]

    Ties in p̄ go to the lowest class index.

    Parameters
    ----------
    probs : Tensor or array_like, shape [S, N, C]
    labels : integer Tensor or array_like, shape [N]

    Returns
    -------
    float in [0, 1]
    """
    _, pbar, y = _prepare(probs, labels)
    return _accuracy(pbar, y)


def _confusion(pbar: Tensor, y: Tensor) -> Tensor:
    """Counts [C, C]: row = true class, column = predicted class (argmax of p̄)."""
    c = pbar.shape[-1]
    flat = y * c + pbar.argmax(-1)
    return torch.bincount(flat, minlength=c * c).reshape(c, c).double()


def _mcc(pbar: Tensor, y: Tensor) -> float:
    m = _confusion(pbar, y)
    s, correct = m.sum(), m.diagonal().sum()
    t, p = m.sum(1), m.sum(0)  # true and predicted counts per class
    num = correct * s - (t * p).sum()
    den = ((s * s - (p * p).sum()) * (s * s - (t * t).sum())).sqrt()
    return float(num / den) if den > 0 else 0.0


def matthews_corrcoef(probs: Any, labels: Any) -> float:
    r"""Matthews correlation coefficient of the model average's top-1 predictions (CoLA's metric).

    The multi-class form (Gorodkin 2004) from the confusion matrix :math:`M` (rows true,
    columns predicted), :math:`s = \sum M`, :math:`c = \operatorname{tr} M`, true counts
    :math:`t_k` and predicted counts :math:`p_k`:

    .. math:: \mathrm{MCC} = \frac{c s - \sum_k p_k t_k}
              {\sqrt{(s^2 - \sum_k p_k^2)(s^2 - \sum_k t_k^2)}}

    It is the Pearson correlation of the one-hot truth and prediction; for two classes it equals
    ``(TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN))``. A constant prediction (zero
    denominator) gives 0, as scikit-learn does.

    Returns
    -------
    float in [-1, 1]
    """
    _, pbar, y = _prepare(probs, labels)
    return _mcc(pbar, y)


def per_class_accuracy(probs: Any, labels: Any) -> list[float | None]:
    """The accuracy (recall) of the model average on the examples of each true class, in class
    order; ``None`` for a class with no example."""
    _, pbar, y = _prepare(probs, labels)
    m = _confusion(pbar, y)
    rows = m.sum(1)
    return [float(m[k, k] / rows[k]) if rows[k] > 0 else None for k in range(m.shape[0])]


def nll(probs: Any, labels: Any) -> float:
    """Negative log-likelihood of the model average (nats per example).

    .. math:: \\mathrm{NLL} = -\\frac{1}{N} \\sum_n \\log \\max(\\bar p_{n y_n}, 10^{-12})

    Note the log is taken of the *averaged* predictive, not averaged over samples.

    Parameters
    ----------
    probs : Tensor or array_like, shape [S, N, C]
    labels : integer Tensor or array_like, shape [N]

    Returns
    -------
    float >= 0 (at most -log 1e-12 ≈ 27.6)
    """
    _, pbar, y = _prepare(probs, labels)
    return _nll(pbar, y)


def brier(probs: Any, labels: Any) -> float:
    """Multiclass Brier score of the model average.

    .. math:: \\mathrm{Brier} = \\frac{1}{N} \\sum_n \\sum_c (\\bar p_{nc} - \\mathbb{1}[c = y_n])^2

    Parameters
    ----------
    probs : Tensor or array_like, shape [S, N, C]
    labels : integer Tensor or array_like, shape [N]

    Returns
    -------
    float in [0, 2]
    """
    _, pbar, y = _prepare(probs, labels)
    return _brier(pbar, y)


@dataclass(frozen=True, eq=False)
class ReliabilityBins:
    """Equal-width confidence bins of the model average, for a reliability diagram.

    Attributes
    ----------
    edges : ndarray, shape [B + 1]
        Bin edges ``linspace(0, 1, B + 1)``; bin b is ``[edges[b], edges[b+1])``, the last bin
        also holds confidence 1.
    confidence : ndarray, shape [B]
        Mean confidence ``max_c p̄`` of the examples in each bin (NaN for an empty bin).
    accuracy : ndarray, shape [B]
        Fraction of correct top-1 predictions in each bin (NaN for an empty bin).
    counts : ndarray of int64, shape [B]
        Number of examples in each bin; sums to N.
    """

    edges: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """Expected calibration error in percent, ``100 Σ_b (n_b/N) |acc_b − conf_b|``."""
        filled = self.counts > 0
        gap = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(100.0 * np.sum(self.counts[filled] / self.counts.sum() * gap))


def _reliability(pbar: Tensor, y: Tensor, n_bins: int) -> ReliabilityBins:
    conf, pred = pbar.max(-1)
    correct = (pred == y).to(torch.float64)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64, device=pbar.device)
    idx = (torch.bucketize(conf, edges, right=True) - 1).clamp(0, n_bins - 1)
    counts = torch.zeros(n_bins, dtype=torch.float64, device=pbar.device)
    counts.scatter_add_(0, idx, torch.ones_like(conf))
    conf_sum = torch.zeros_like(counts).scatter_add_(0, idx, conf)
    acc_sum = torch.zeros_like(counts).scatter_add_(0, idx, correct)
    with np.errstate(invalid="ignore", divide="ignore"):
        counts_np = counts.cpu().numpy()
        conf_b = conf_sum.cpu().numpy() / counts_np
        acc_b = acc_sum.cpu().numpy() / counts_np
    return ReliabilityBins(
        edges=edges.cpu().numpy(),
        confidence=conf_b,
        accuracy=acc_b,
        counts=counts_np.astype(np.int64),
    )


def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> ReliabilityBins:
    """Bin examples by the confidence of the model average (equal-width bins on [0, 1]).

    With ``conf_n = max_c p̄_nc``, bin b holds the examples with
    ``edges[b] <= conf_n < edges[b+1]`` (confidence 1 goes to the last bin); per bin it reports
    the count ``n_b``, mean confidence ``conf_b`` and accuracy ``acc_b``.

    Parameters
    ----------
    probs : Tensor or array_like, shape [S, N, C]
    labels : integer Tensor or array_like, shape [N]
    n_bins : int, default 15

    Returns
    -------
    ReliabilityBins
    """
    n_bins = _check_n_bins(n_bins)
    _, pbar, y = _prepare(probs, labels)
    return _reliability(pbar, y, n_bins)


def ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error of the model average, in percent.

    .. math:: \\mathrm{ECE} = 100 \\sum_{b=1}^{B} \\frac{n_b}{N} \\left| \\mathrm{acc}_b -
              \\mathrm{conf}_b \\right|

    over ``n_bins`` equal-width bins of the confidence ``max_c p̄_nc`` (see
    :func:`reliability_bins`; empty bins contribute nothing). This is the top-label L1
    calibration error of ``torchmetrics.classification.MulticlassCalibrationError`` times 100;
    the only difference is at confidence exactly 1, which torchmetrics puts in a bin of its own
    and this function puts in the last bin.

    Parameters
    ----------
    probs : Tensor or array_like, shape [S, N, C]
    labels : integer Tensor or array_like, shape [N]
    n_bins : int, default 15

    Returns
    -------
    float in [0, 100]
    """
    return reliability_bins(probs, labels, n_bins).ece


# --------------------------------------------------------------------------------------------
# Out-of-distribution detection and selective prediction
# --------------------------------------------------------------------------------------------
def ood_auroc(score_in: Any, score_out: Any) -> float:
    """Area under the ROC curve for telling out-of-distribution from in-distribution examples.

    OOD examples are the positive class and a higher score means "more OOD" (e.g. mutual
    information or predictive entropy). Equals the probability that a random OOD example
    scores higher than a random in-distribution one, ties counting 1/2: the Mann–Whitney
    statistic U of the OOD scores (ranks of tied scores averaged) over N_in·N_out,

        AUROC = (1 / (N_in N_out)) Σ_j [ #{i : in_i < out_j} + ½ #{i : in_i = out_j} ],

    the same number as :func:`sklearn.metrics.roc_auc_score` (the trapezoidal ROC area). The
    pair counts are integers (from a sort and two binary searches), so the result is exact up
    to the final division.

    Parameters
    ----------
    score_in : Tensor or array_like, shape [N_in]
        Scores of in-distribution examples.
    score_out : Tensor or array_like, shape [N_out]
        Scores of out-of-distribution examples.

    Returns
    -------
    float in [0, 1]; 0.5 is chance, 1 perfect separation.
    """
    s_in = _check_scores(score_in, "score_in")
    s_out = _check_scores(score_out, "score_out").to(s_in.device)
    ref = torch.sort(s_in).values
    below = torch.searchsorted(ref, s_out, right=False)  # #{in < out_j}
    not_above = torch.searchsorted(ref, s_out, right=True)  # #{in ≤ out_j}
    twice_u = int((below + not_above).sum())  # 2U = Σ_j 2·#{in < out_j} + #{in = out_j}
    return twice_u / (2 * s_in.shape[0] * s_out.shape[0])


@dataclass(frozen=True, eq=False)
class RiskCoverage:
    """Risk–coverage curve of selective prediction.

    Attributes
    ----------
    coverage : ndarray, shape [N]
        ``k / N`` for k = 1..N (the fraction of examples kept).
    risk : ndarray, shape [N]
        Error rate of the model average among the k examples it is most confident about.
    aurc : float
        Area under the curve, ``mean_k risk_k``.
    """

    coverage: np.ndarray
    risk: np.ndarray
    aurc: float


def _risk_coverage(pbar: Tensor, y: Tensor, score: Tensor | None) -> RiskCoverage:
    conf, pred = pbar.max(-1)
    errors = (pred != y).to(torch.float64)
    n = errors.shape[0]
    key = -conf if score is None else score.to(pbar.device)
    order = torch.argsort(key, stable=True)
    key_sorted = key[order]
    cum = errors[order].cumsum(0)
    # Examples with equal keys are exchangeable: within a tie group, errors accrue linearly,
    # i.e. the expected curve over a random order of the ties. The result is order-invariant.
    _, counts = torch.unique_consecutive(key_sorted, return_counts=True)
    ends = counts.cumsum(0)
    starts = ends - counts
    before = torch.where(starts > 0, cum[(starts - 1).clamp_min(0)], torch.zeros_like(cum[:1]))
    in_group = cum[ends - 1] - before
    group = torch.repeat_interleave(torch.arange(len(counts), device=pbar.device), counts)
    k = torch.arange(1, n + 1, dtype=torch.float64, device=pbar.device)
    cum_err = before[group] + (k - starts[group]) * in_group[group] / counts[group]
    risk = cum_err / k
    return RiskCoverage(
        coverage=(k / n).cpu().numpy(), risk=risk.cpu().numpy(), aurc=float(risk.mean())
    )


def risk_coverage(probs: Any, labels: Any, score: Any = None) -> RiskCoverage:
    """Risk–coverage curve and its area (AURC) for selective prediction.

    Examples are ranked by confidence ``max_c p̄_nc`` descending, or, when ``score`` is given,
    by that uncertainty score ascending (most certain first). With ``e_(i)`` the top-1 error of
    the i-th ranked example,

    .. math::

        \\mathrm{coverage}_k = \\frac{k}{N}, \\qquad
        \\mathrm{risk}_k = \\frac{1}{k} \\sum_{i \\le k} e_{(i)}, \\qquad
        \\mathrm{AURC} = \\frac{1}{N} \\sum_{k=1}^{N} \\mathrm{risk}_k

    Tied ranking keys are treated as exchangeable: within a tie group the errors are spread
    evenly (the expected curve over a random order of the ties), so the result does not depend
    on the order of the inputs. Lower AURC is better; it is at least that of the oracle ranking
    (all correct examples first), ``(1/N) Σ_{k>N−m} (k − N + m)/k`` for m errors.

    Parameters
    ----------
    probs : Tensor or array_like, shape [S, N, C]
    labels : integer Tensor or array_like, shape [N]
    score : Tensor or array_like, shape [N], optional
        Uncertainty per example (higher = less certain), e.g. mutual information.

    Returns
    -------
    RiskCoverage
    """
    _, pbar, y = _prepare(probs, labels)
    s = None if score is None else _check_scores(score, "score", pbar.shape[0])
    return _risk_coverage(pbar, y, s)


def aurc(probs: Any, labels: Any, score: Any = None) -> float:
    """Area under the risk–coverage curve, ``risk_coverage(probs, labels, score).aurc``.

    .. math:: \\mathrm{AURC} = \\frac{1}{N} \\sum_{k=1}^{N} \\frac{1}{k} \\sum_{i \\le k} e_{(i)}

    Returns
    -------
    float in [0, 1]
    """
    return risk_coverage(probs, labels, score).aurc


# --------------------------------------------------------------------------------------------
# Summary
# --------------------------------------------------------------------------------------------
def summarize(probs: Any, labels: Any) -> dict[str, float]:
    """All scalar metrics of a sampled predictive at once.

    Parameters
    ----------
    probs : Tensor or array_like, shape [S, N, C]
    labels : integer Tensor or array_like, shape [N]

    Returns
    -------
    dict with float values and exactly the keys
        ``"accuracy"`` (fraction), ``"nll"`` (nats), ``"ece"`` (percent, 15 bins),
        ``"brier"``, ``"entropy"`` (mean H[p̄]), ``"aleatoric"`` (mean of mean_s H[p_s]),
        ``"mutual_information"`` (mean epistemic part) and ``"aurc"`` (confidence ranking).
    """
    p, pbar, y = _prepare(probs, labels)
    total, aleatoric, epistemic = _decompose(p)
    out = {
        "accuracy": _accuracy(pbar, y),
        "nll": _nll(pbar, y),
        "ece": _reliability(pbar, y, 15).ece,
        "brier": _brier(pbar, y),
        "entropy": float(total.mean()),
        "aleatoric": float(aleatoric.mean()),
        "mutual_information": float(epistemic.mean()),
        "aurc": _risk_coverage(pbar, y, None).aurc,
    }
    return out


def variance_shares(spectrum: Mapping[str, Any], ks: Sequence[int] = (1, 3, 10)) -> dict[int, float]:
    """Share of a covariance's variance (its trace) in its ``k`` largest eigen-directions, from a
    ``covariance_spectrum()`` dict (a lower bound when the spectrum is not ``exact``)."""
    eig = np.asarray(spectrum["eigenvalues"], dtype=np.float64)
    trace = float(spectrum["trace"])
    return {k: float(eig[:k].sum() / trace) if trace > 0 else float("nan") for k in ks}
