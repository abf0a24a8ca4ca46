"""Bézier curves: anchors reproduced exactly, continuity at joints, free vs anchored training."""
from __future__ import annotations

import math

import pytest
import torch

from bayes_lora.lora import BezierCurve, bernstein_matrix, linear_path


@pytest.mark.parametrize("segments,degree", [(1, 2), (2, 2), (2, 3), (3, 4)])
def test_anchored_curve_passes_through_anchors(segments, degree):
    anchors = torch.randn(segments + 1, 7)
    curve = BezierCurve(anchors, degree=degree, init_noise=0.5, seed=1)
    joints = curve(curve.joint_times())
    torch.testing.assert_close(joints, anchors, rtol=0, atol=1e-6)
    assert torch.equal(curve(torch.tensor(0.0)), anchors[0])
    assert torch.equal(curve(torch.tensor(1.0)), anchors[-1])


def test_curve_is_continuous_across_joints():
    curve = BezierCurve(torch.randn(4, 5), degree=3, init_noise=1.0, seed=0)
    eps = 1e-5
    for tj in (1 / 3, 2 / 3):
        left, right = curve(torch.tensor([tj - eps, tj + eps]))
        assert (left - right).abs().max() < 1e-3


def test_bezier_matches_definition():
    anchors = torch.randn(2, 3)
    curve = BezierCurve(anchors, degree=3, init_noise=1.0, seed=2)
    P = curve.control_points().detach()
    s = 0.3
    expected = sum(math.comb(3, j) * (1 - s) ** (3 - j) * s**j * P[j] for j in range(4))
    torch.testing.assert_close(curve(torch.tensor(s)).detach(), expected, rtol=1e-5, atol=1e-6)
    W = bernstein_matrix(torch.rand(10), 3, 2)
    torch.testing.assert_close(W.sum(-1), torch.ones(10))


def test_degree_two_single_segment_without_noise_is_the_line():
    a = torch.randn(2, 4)
    curve = BezierCurve(a, degree=2)
    t = torch.linspace(0, 1, 11)
    torch.testing.assert_close(curve(t).detach(), linear_path(a[0], a[1], t), atol=1e-6, rtol=0)


def test_anchored_trains_only_bends_and_free_trains_all():
    a = torch.randn(3, 4)
    anchored = BezierCurve(a, degree=2)
    free = BezierCurve(a, degree=2, anchored=False)
    assert sum(p.numel() for p in anchored.parameters()) == 2 * 1 * 4
    assert sum(p.numel() for p in free.parameters()) == (3 + 2) * 4
    opt = torch.optim.SGD(anchored.parameters(), lr=0.1)
    for _ in range(5):
        loss = anchored(torch.rand(8)).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(anchored(anchored.joint_times()).detach(), a, atol=1e-6, rtol=0)


def test_gradient_wrt_t_exists():
    curve = BezierCurve(torch.randn(3, 4), degree=2, init_noise=1.0)
    t = torch.tensor(0.3, requires_grad=True)
    curve(t).sum().backward()
    assert t.grad is not None and torch.isfinite(t.grad)


def test_too_few_anchors_is_a_clear_error():
    with pytest.raises(ValueError, match="at least two anchors"):
        BezierCurve(torch.randn(1, 4))
