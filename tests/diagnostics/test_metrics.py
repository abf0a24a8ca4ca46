"""Known-answer tests for bayes_lora.diagnostics.metrics."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayes_lora.diagnostics import (
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
from bayes_lora.diagnostics import metrics as M

LN2 = math.log(2.0)


def synthetic_predictor(
    rng: np.random.Generator, n: int, c: int, conf: np.ndarray, p_correct: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """probs [1, n, c] predicting a random class with ``conf``; label right w.p. ``p_correct``."""
    pred = rng.integers(0, c, n)
    probs = np.repeat(((1.0 - conf) / (c - 1))[:, None], c, axis=1)
    probs[np.arange(n), pred] = conf
    right = rng.random(n) < p_correct
    other = (pred + rng.integers(1, c, n)) % c  # a uniformly random wrong class
    labels = np.where(right, pred, other)
    return probs[None], labels


# --------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------
def test_ece_of_calibrated_predictor_is_small():
    rng = np.random.default_rng(0)
    n, c = 20_000, 3
    conf = rng.uniform(1.0 / c, 1.0, n)
    probs, labels = synthetic_predictor(rng, n, c, conf, p_correct=conf)
    assert ece(probs, labels) < 1.0


def test_ece_of_overconfident_predictor_is_29_percent():
    rng = np.random.default_rng(1)
    n, c = 20_000, 4
    conf = np.full(n, 0.99)
    probs, labels = synthetic_predictor(rng, n, c, conf, p_correct=np.full(n, 0.7))
    assert accuracy(probs, labels) == pytest.approx(0.7, abs=0.015)
    assert ece(probs, labels) == pytest.approx(29.0, abs=1.5)


def test_ece_matches_torchmetrics():
    from torchmetrics.classification import MulticlassCalibrationError

    gen = torch.Generator().manual_seed(0)
    for s, n, c in [(1, 500, 2), (4, 1000, 5), (8, 300, 10)]:
        logits = 2.0 * torch.randn(s, n, c, generator=gen)
        probs = logits.softmax(-1)
        labels = torch.randint(0, c, (n,), generator=gen)
        metric = MulticlassCalibrationError(num_classes=c, n_bins=15, norm="l1")
        expected = 100.0 * float(metric(probs.mean(0), labels))
        assert ece(probs, labels) == pytest.approx(expected, abs=1e-4)


def test_reliability_bins_hand_example():
    # confidences 0.95 (right), 0.95 (wrong), 0.6 (right), 1.0 (right), 5 bins of width 0.2
    probs = np.array([[[0.95, 0.05], [0.05, 0.95], [0.6, 0.4], [0.0, 1.0]]])
    labels = np.array([0, 0, 0, 1])
    rb = reliability_bins(probs, labels, n_bins=5)
    assert isinstance(rb, ReliabilityBins)
    np.testing.assert_allclose(rb.edges, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_array_equal(rb.counts, [0, 0, 0, 1, 3])  # 0.6 is in [0.6, 0.8)
    assert np.isnan(rb.confidence[:3]).all() and np.isnan(rb.accuracy[:3]).all()
    np.testing.assert_allclose(rb.confidence[3:], [0.6, (0.95 + 0.95 + 1.0) / 3])
    np.testing.assert_allclose(rb.accuracy[3:], [1.0, 2.0 / 3.0])
    expected = 100 * (0.25 * 0.4 + 0.75 * abs(2.0 / 3.0 - 2.9 / 3.0))
    assert rb.ece == pytest.approx(expected, abs=1e-10)
    assert ece(probs, labels, n_bins=5) == pytest.approx(expected, abs=1e-10)
    with pytest.raises(dataclasses_frozen_error()):
        rb.counts = np.zeros(5)  # type: ignore[misc]


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


# --------------------------------------------------------------------------------------------
# Entropy and the uncertainty decomposition
# --------------------------------------------------------------------------------------------
def test_entropy_known_values_and_zero_log_zero():
    h = entropy(torch.tensor([[0.5, 0.5], [1.0, 0.0], [0.25, 0.75]]))
    assert h.dtype == torch.float64 and h.shape == (3,)
    assert torch.isfinite(h).all()
    expected = [LN2, 0.0, -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))]
    np.testing.assert_allclose(h.numpy(), expected, atol=1e-12)
    assert float(entropy(np.full(7, 1 / 7))) == pytest.approx(math.log(7))


def test_mutual_information_zero_for_identical_samples():
    rng = np.random.default_rng(2)
    one = rng.dirichlet(np.ones(4), size=50)
    probs = np.stack([one] * 6)
    total, aleatoric, epistemic = uncertainty_decomposition(probs)
    assert float(epistemic.abs().max()) <= 1e-9
    torch.testing.assert_close(total, aleatoric, atol=1e-12, rtol=0)


def test_mutual_information_equals_hand_jensen_shannon():
    # Example 0: disagreeing one-hots -> MI = ln 2.
    # Example 1: [0.5, 0.5] and [1, 0] -> mean [0.75, 0.25]; MI = H(0.75) - (ln 2 + 0) / 2.
    probs = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [1.0, 0.0]]])
    total, aleatoric, epistemic = uncertainty_decomposition(probs)
    h_mean = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    np.testing.assert_allclose(total.numpy(), [LN2, h_mean], atol=1e-12)
    np.testing.assert_allclose(aleatoric.numpy(), [0.0, LN2 / 2], atol=1e-12)
    np.testing.assert_allclose(epistemic.numpy(), [LN2, h_mean - LN2 / 2], atol=1e-12)
    assert h_mean - LN2 / 2 == pytest.approx(0.2157615543388357, abs=1e-12)


def test_decomposition_adds_up_and_mi_nonnegative():
    gen = torch.Generator().manual_seed(3)
    probs = (3.0 * torch.randn(10, 200, 6, generator=gen)).softmax(-1)
    total, aleatoric, epistemic = uncertainty_decomposition(probs)
    torch.testing.assert_close(total, aleatoric + epistemic, atol=1e-12, rtol=0)
    assert (epistemic >= 0).all()
    assert epistemic.max() > 0.1  # the samples disagree, so MI is clearly positive
    torch.testing.assert_close(total, entropy(predictive_mean(probs)))


def test_single_sample_has_zero_mi():
    probs = torch.tensor([[[0.2, 0.8], [0.6, 0.4]]])
    total, aleatoric, epistemic = uncertainty_decomposition(probs)
    torch.testing.assert_close(total, aleatoric)
    assert float(epistemic.abs().max()) == 0.0


# --------------------------------------------------------------------------------------------
# Accuracy, NLL, Brier
# --------------------------------------------------------------------------------------------
HAND_PROBS = np.array(
    [
        [[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]],
        [[0.8, 0.1, 0.1], [0.4, 0.4, 0.2]],
    ]
)  # mean: [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]]
HAND_LABELS = np.array([0, 1])


def test_hand_example_accuracy_nll_brier():
    np.testing.assert_allclose(
        predictive_mean(HAND_PROBS).numpy(), [[0.7, 0.2, 0.1], [0.3, 0.3, 0.4]], atol=1e-12
    )
    assert accuracy(HAND_PROBS, HAND_LABELS) == 0.5
    # NLL of the *averaged* predictive, not the mean of per-sample NLLs.
    assert nll(HAND_PROBS, HAND_LABELS) == pytest.approx(-(math.log(0.7) + math.log(0.3)) / 2)
    # ((0.3² + 0.2² + 0.1²) + (0.3² + 0.7² + 0.4²)) / 2 = (0.14 + 0.74) / 2
    assert brier(HAND_PROBS, HAND_LABELS) == pytest.approx(0.44)


def test_numpy_and_torch_inputs_agree():
    a = summarize(HAND_PROBS, HAND_LABELS)
    b = summarize(torch.tensor(HAND_PROBS, dtype=torch.float32), torch.tensor(HAND_LABELS))
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key], abs=1e-6)


def test_oracle_accuracy_one_and_nll_zero():
    labels = torch.tensor([0, 2, 1, 1, 0])
    probs = torch.nn.functional.one_hot(labels, 3).double()[None].repeat(3, 1, 1)
    assert accuracy(probs, labels) == 1.0
    assert nll(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert brier(probs, labels) == pytest.approx(0.0, abs=1e-12)
    assert ece(probs, labels) == pytest.approx(0.0, abs=1e-10)
    assert aurc(probs, labels) == 0.0


def test_nll_is_clamped_for_zero_probability():
    probs = torch.tensor([[[1.0, 0.0]]])
    assert nll(probs, [1]) == pytest.approx(-math.log(1e-12))


# --------------------------------------------------------------------------------------------
# OOD AUROC
# --------------------------------------------------------------------------------------------
def test_auroc_separable_and_reversed():
    s_in = torch.linspace(0.0, 1.0, 50)
    s_out = np.linspace(2.0, 3.0, 30)
    assert ood_auroc(s_in, s_out) == 1.0
    assert ood_auroc(s_out, s_in) == 0.0


def test_auroc_identical_distributions_is_chance():
    rng = np.random.default_rng(4)
    assert ood_auroc(rng.normal(size=5000), rng.normal(size=5000)) == pytest.approx(0.5, abs=0.03)


def test_auroc_hand_example_with_tie():
    # pairs (out > in): 3 vs {1, 2} -> 2 wins; 2 vs {1, 2} -> 1 win + 1 tie -> (3.5) / 4
    assert ood_auroc([1.0, 2.0], [2.0, 3.0]) == pytest.approx(3.5 / 4)


@pytest.mark.parametrize("s_in,s_out,expected", [
    # every score tied: each pair counts 1/2
    ([1.0, 1.0, 1.0], [1.0, 1.0], 0.5),
    # Mann–Whitney with mid-ranks: pooled sorted 0(in) 1(in) 1(out) 1(out) 2(in) 3(out);
    # ranks 1, 3, 3, 3, 5, 6 -> R_out = 3 + 3 + 6 = 12, U = 12 - 3·4/2 = 6, AUROC = 6 / 9
    ([0.0, 1.0, 2.0], [1.0, 1.0, 3.0], 6 / 9),
    # pair by pair: out 0.5 vs in (0.5, 0.9, 0.5) -> ½ + 0 + ½ = 1;
    # out 0.7 vs in (0.5, 0.9, 0.5) -> 1 + 0 + 1 = 2; AUROC = 3 / 6
    ([0.5, 0.9, 0.5], [0.5, 0.7], 3 / 6),
    # one in, one out
    ([2.0], [2.0], 0.5),
    ([2.0], [1.0], 0.0),
])
def test_auroc_hand_computed_with_ties(s_in, s_out, expected):
    assert ood_auroc(s_in, s_out) == pytest.approx(expected, abs=1e-15)
    assert ood_auroc(s_out, s_in) == pytest.approx(1 - expected, abs=1e-15)  # the roles swapped


def test_auroc_is_the_pairwise_probability_on_tied_integer_scores():
    """Many ties (scores in 0..4): the brute-force pair count, exactly."""
    rng = np.random.default_rng(7)
    s_in, s_out = rng.integers(0, 5, size=37), rng.integers(1, 6, size=23)
    diff = s_out[:, None] - s_in[None, :]
    brute = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert ood_auroc(s_in, s_out) == pytest.approx(brute, abs=1e-15)
    assert ood_auroc(torch.as_tensor(s_in, dtype=torch.float32), s_out.tolist()) == pytest.approx(brute, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    # rounded scores: plenty of ties within and across the two groups
    s_in = np.round(rng.normal(size=200), 1)
    s_out = np.round(rng.normal(0.4, 1.2, size=150), 1)
    y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    ref = sklearn_metrics.roc_auc_score(y, np.r_[s_in, s_out])
    assert ood_auroc(s_in, s_out) == pytest.approx(ref, abs=1e-12)


# --------------------------------------------------------------------------------------------
# Risk-coverage / AURC
# --------------------------------------------------------------------------------------------
def random_predictions(seed: int, n: int, c: int = 3):
    gen = torch.Generator().manual_seed(seed)
    probs = (2.0 * torch.randn(2, n, c, generator=gen)).softmax(-1)
    labels = torch.randint(0, c, (n,), generator=gen)
    return probs, labels


def test_risk_coverage_hand_example():
    # per example: conf .7 right, conf .9 right, conf .6 wrong, conf .8 right
    probs = np.array([[[0.3, 0.7], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8]]])
    labels = np.array([1, 0, 1, 1])
    rc = risk_coverage(probs, labels)
    assert isinstance(rc, RiskCoverage)
    np.testing.assert_allclose(rc.coverage, [0.25, 0.5, 0.75, 1.0])
    # ranked by confidence: .9 R, .8 R, .7 R, .6 W
    np.testing.assert_allclose(rc.risk, [0.0, 0.0, 0.0, 0.25])
    assert rc.aurc == pytest.approx(0.25 / 4)
    # an explicit score ranks the wrong example first, then three tied correct ones
    rc2 = risk_coverage(probs, labels, score=[0.0, 0.0, -1.0, 0.0])
    np.testing.assert_allclose(rc2.risk, [1.0, 0.5, 1.0 / 3.0, 0.25])


def test_risk_coverage_ties_are_order_invariant():
    probs = np.full((1, 4, 2), 0.5)  # all tied at confidence 0.5, prediction class 0
    labels = np.array([0, 1, 0, 1])
    rc = risk_coverage(probs, labels)
    np.testing.assert_allclose(rc.risk, [0.5] * 4)
    rc_perm = risk_coverage(probs, labels[::-1].copy())
    np.testing.assert_allclose(rc_perm.risk, rc.risk)


def oracle_aurc(n: int, m: int) -> float:
    """Closed form for the oracle ranking: (1/N) Σ_{k=N-m+1}^{N} (k - (N - m)) / k."""
    n_right = n - m
    harmonic = sum(1.0 / k for k in range(n_right + 1, n + 1))
    return (m - n_right * harmonic) / n


def test_aurc_oracle_order_is_minimal_and_closed_form():
    probs, labels = random_predictions(5, 2000)
    wrong = (predictive_mean(probs).argmax(-1) != labels).double()
    m = int(wrong.sum())
    assert 0 < m < 2000
    oracle = aurc(probs, labels, score=wrong)
    assert oracle == pytest.approx(oracle_aurc(2000, m), abs=1e-12)
    err = m / 2000
    # large-N approximation err + (1 - err) log(1 - err)
    assert oracle == pytest.approx(err + (1 - err) * math.log(1 - err), abs=5e-3)
    rng = np.random.default_rng(6)
    random_aurc = aurc(probs, labels, score=rng.random(2000))
    assert oracle < random_aurc
    assert random_aurc == pytest.approx(err, abs=0.05)  # a random ranking has risk ≈ error rate
    assert oracle <= aurc(probs, labels)  # confidence ranking cannot beat the oracle


def test_aurc_matches_risk_coverage():
    probs, labels = random_predictions(7, 100)
    rc = risk_coverage(probs, labels)
    assert aurc(probs, labels) == rc.aurc == pytest.approx(float(np.mean(rc.risk)))
    assert rc.risk[-1] == pytest.approx(1.0 - accuracy(probs, labels))


# --------------------------------------------------------------------------------------------
# summarize
# --------------------------------------------------------------------------------------------
def test_summarize_keys_and_consistency():
    probs, labels = random_predictions(8, 300)
    out = summarize(probs, labels)
    assert list(out) == [
        "accuracy", "nll", "ece", "brier", "entropy", "aleatoric", "mutual_information", "aurc"
    ]
    assert all(type(v) is float for v in out.values())
    assert out["accuracy"] == accuracy(probs, labels)
    assert out["nll"] == nll(probs, labels)
    assert out["ece"] == ece(probs, labels)
    assert out["brier"] == brier(probs, labels)
    assert out["aurc"] == aurc(probs, labels)
    total, aleatoric, mi = uncertainty_decomposition(probs)
    assert out["entropy"] == pytest.approx(float(total.mean()))
    assert out["aleatoric"] == pytest.approx(float(aleatoric.mean()))
    assert out["mutual_information"] == pytest.approx(float(mi.mean()))
    assert out["entropy"] == pytest.approx(out["aleatoric"] + out["mutual_information"])


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
GOOD = np.full((2, 3, 2), 0.5)


@pytest.mark.parametrize(
    ("probs", "labels", "match"),
    [
        (np.full((3, 2), 0.5), [0, 1, 0], r"3-D.*probs\[None\]"),
        (np.full((2, 2, 3, 2), 0.5), [0, 1, 0], "3-D"),
        (np.zeros((0, 3, 2)), [0, 1, 0], "S = 0"),
        (np.zeros((2, 0, 2)), [], "N = 0"),
        (GOOD, [0, 1], "length 2.*N = 3"),
        (GOOD, [0, 1, 2], r"\[0, 2\).*label 2"),
        (GOOD, [0, -1, 1], r"\[0, 2\).*label -1"),
        (GOOD, [0.0, 1.0, 0.0], "integers"),
        (GOOD, [[0, 1, 0]], "1-D"),
        (np.full((2, 3, 2), 0.6), [0, 1, 0], "sum to 1"),
        (np.where(np.arange(12).reshape(2, 3, 2) == 5, np.nan, 0.5), [0, 1, 0], "NaN/Inf"),
        (np.where(np.arange(12).reshape(2, 3, 2) == 5, np.inf, 0.5), [0, 1, 0], "NaN/Inf"),
        (np.array([[[1.5, -0.5]]]), [0], "non-negative"),
    ],
)
def test_validation_errors(probs, labels, match):
    with pytest.raises(ValueError, match=match):
        summarize(probs, labels)


def test_validation_in_other_entry_points():
    with pytest.raises(ValueError, match=r"probs\[None\]"):
        uncertainty_decomposition(torch.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="sum to 1"):
        predictive_mean(torch.full((1, 3, 2), 0.4))
    with pytest.raises(ValueError, match="score has length 2"):
        risk_coverage(GOOD, [0, 1, 0], score=[0.1, 0.2])
    with pytest.raises(ValueError, match="n_bins"):
        ece(GOOD, [0, 1, 0], n_bins=0)
    with pytest.raises(ValueError, match="score_out is empty"):
        ood_auroc([0.1, 0.2], [])
    with pytest.raises(ValueError, match="score_in contains NaN"):
        ood_auroc([0.1, float("nan")], [0.3])


def test_round_off_row_sums_are_accepted():
    probs = np.array([[[0.5 + 4e-4, 0.5]]])
    assert accuracy(probs, [0]) == 1.0


# --------------------------------------------------------------------------------------------
# Property test
# --------------------------------------------------------------------------------------------
@st.composite
def valid_inputs(draw):
    s = draw(st.integers(1, 4))
    n = draw(st.integers(1, 20))
    c = draw(st.integers(2, 5))
    raw = np.array(
        draw(
            st.lists(
                st.one_of(st.just(0.0), st.floats(0.0, 1.0), st.floats(1e-300, 1e-6)),
                min_size=s * n * c,
                max_size=s * n * c,
            )
        )
    ).reshape(s, n, c)
    sums = raw.sum(-1, keepdims=True)
    probs = np.where(sums > 0, raw / np.where(sums > 0, sums, 1.0), 1.0 / c)
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    return probs, labels


@settings(max_examples=150, deadline=None)
@given(valid_inputs())
def test_summarize_properties(data):
    probs, labels = data
    out = summarize(probs, labels)
    assert all(math.isfinite(v) for v in out.values())
    assert 0.0 <= out["accuracy"] <= 1.0
    assert 0.0 <= out["ece"] <= 100.0
    assert out["mutual_information"] >= 0.0
    assert 0.0 <= out["aurc"] <= 1.0
    assert 0.0 <= out["brier"] <= 2.0 + 1e-12
    assert out["nll"] >= -1e-12
    assert out["entropy"] <= math.log(probs.shape[-1]) + 1e-9
    assert out["entropy"] == pytest.approx(
        out["aleatoric"] + out["mutual_information"], abs=1e-9
    )


# --------------------------------------------------------------------------------------------
# Matthews correlation and per-class accuracy
# --------------------------------------------------------------------------------------------
def _onehot_probs(pred, c):
    return torch.nn.functional.one_hot(torch.as_tensor(pred), c).double()[None] * 0.9 + 0.1 / c


def test_mcc_binary_hand_example_and_torchmetrics():
    from torchmetrics.classification import MulticlassMatthewsCorrCoef

    y = torch.tensor([1, 1, 1, 0, 0, 0, 0, 1])
    pred = torch.tensor([1, 1, 0, 0, 0, 1, 0, 1])  # TP 3, TN 3, FP 1, FN 1
    expected = (3 * 3 - 1 * 1) / math.sqrt(4 * 4 * 4 * 4)  # = 0.5
    assert M.matthews_corrcoef(_onehot_probs(pred, 2), y) == pytest.approx(expected)
    g = torch.Generator().manual_seed(0)
    y3 = torch.randint(3, (200,), generator=g)
    p3 = torch.randn(4, 200, 3, generator=g).softmax(-1)
    ref = MulticlassMatthewsCorrCoef(num_classes=3)(p3.mean(0), y3)
    assert M.matthews_corrcoef(p3, y3) == pytest.approx(float(ref), abs=1e-6)


def test_mcc_perfect_reversed_and_constant():
    y = torch.tensor([0, 1, 0, 1])
    assert M.matthews_corrcoef(_onehot_probs(y, 2), y) == pytest.approx(1.0)
    assert M.matthews_corrcoef(_onehot_probs(1 - y, 2), y) == pytest.approx(-1.0)
    assert M.matthews_corrcoef(_onehot_probs([0, 0, 0, 0], 2), y) == 0.0  # no variance: 0


def test_per_class_accuracy_is_the_recall_of_each_class():
    y = torch.tensor([0, 0, 1, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 0])
    assert M.per_class_accuracy(_onehot_probs(pred, 4), y) == [0.5, pytest.approx(2 / 3), 0.0, None]
