"""The pieces of posterior_idata that need no model: the training rows of the log-likelihood and
the posterior predictive draws of y."""
from __future__ import annotations

import torch

from bayes_lora.experiment.evaluate import draw_labels, loo_rows


def test_draw_labels_follow_the_probabilities():
    probs = torch.tensor([[0.1, 0.6, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]).expand(20_000, 3, 3)
    y = draw_labels(probs, seed=4)
    assert y.shape == (20_000, 3) and y.dtype == torch.long
    freq = torch.stack([(y[:, 0] == c).double().mean() for c in range(3)])
    # binomial sd of a frequency ≤ sqrt(0.25 / 20,000) ≈ 0.0035: 4 sd
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.6, 0.3], dtype=torch.float64), atol=0.014, rtol=0)
    assert (y[:, 1] == 0).all() and (y[:, 2] == 2).all()  # certain classes are always drawn
    torch.testing.assert_close(draw_labels(probs, seed=4), y, rtol=0, atol=0)
    assert not torch.equal(draw_labels(probs, seed=5), y)


def test_loo_rows_are_shared_by_likelihoods_on_a_prefix_of_the_same_permutation():
    n, seed = 100, 3
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    every = loo_rows(None, n, 20, seed)
    assert every.tolist() == sorted(perm[:20].tolist())
    # a curve likelihood on 50 seeded rows (TaskLogits: the first 50 of the same permutation, sorted)
    curve_rows = perm[:50].sort().values
    assert loo_rows(curve_rows, n, 20, seed).tolist() == every.tolist()
    assert loo_rows(curve_rows, n, 80, seed).tolist() == curve_rows.tolist()  # at most its own rows
    assert loo_rows(None, n, 500, seed).tolist() == list(range(n))
    other = torch.tensor([1, 5, 7])
    assert loo_rows(other, n, 20, seed).tolist() == [1, 5, 7]


def test_loo_summary_reports_the_likelihood_temperature_of_the_idata():
    import numpy as np

    from bayes_lora.diagnostics.idata import to_inference_data
    from bayes_lora.experiment.evaluate import loo_summary

    rng = np.random.default_rng(0)
    ll = np.log(rng.uniform(0.2, 0.9, size=(1, 30, 12)))
    idata = to_inference_data(log_likelihood=ll, labels=np.zeros(12, dtype=int), temperature=20.0, chains=1,
                              method="m")
    s = loo_summary(idata)
    assert s["temperature"] == 20.0 and s["draws"] == 30 and s["examples"] == 12
    assert s["pareto_k_inf"] == 0 and np.isfinite(s["elpd_loo"])
