"""Piecewise Bézier curves in a parameter space (Garipov et al. 2018; LoRA-Curve, 2026).

A segment of degree n with control points P_0..P_n is φ(s) = Σ_j C(n,j)(1−s)^{n−j} s^j P_j. A
K-segment curve maps t ∈ [0, 1] to segment k = min(⌊tK⌋, K−1) at local s = tK − k; segments
share their joint points, so the curve is continuous. Control points are stored as one matrix
of K·n + 1 rows; the joints are rows 0, n, 2n, …, Kn.

*Anchored*: the joints are given optima θ^(1..K+1), fixed buffers; only the bends train.
*Free*: every control point trains (initialised the same way).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def bernstein_matrix(t: Tensor, segments: int, degree: int) -> Tensor:
    """Weights W [T, K·n+1] with φ(t) = W @ control_points, differentiable in t."""
    t = t.reshape(-1)
    k = torch.clamp(torch.floor(t.detach() * segments), 0, segments - 1).long()
    s = t * segments - k.to(t.dtype)
    j = torch.arange(degree + 1, dtype=t.dtype, device=t.device)
    binom = torch.tensor([math.comb(degree, i) for i in range(degree + 1)], dtype=t.dtype, device=t.device)
    s_ = s.unsqueeze(-1)
    weights = binom * torch.pow(s_, j) * torch.pow(1 - s_, degree - j)  # [T, n+1]
    out = torch.zeros(t.shape[0], segments * degree + 1, dtype=t.dtype, device=t.device)
    cols = k.unsqueeze(-1) * degree + j.long()
    return out.scatter(1, cols, weights)


class BezierCurve(nn.Module):
    """A K-segment, degree-n Bézier curve through ``anchors`` (rows: the K+1 joint points).

    Parameters
    ----------
    anchors: Tensor [K+1, d], the joints (independently fine-tuned optima, in a space's latent).
    degree: n ≥ 1 (n − 1 trainable bends per segment when anchored).
    anchored: joints fixed (True) or every control point trainable (False).
    init_noise: std of Gaussian noise added to the initial bends (seeded by ``seed``); bends
        start on the straight line between their joints.
    """

    def __init__(
        self,
        anchors: Tensor,
        *,
        degree: int = 2,
        anchored: bool = True,
        init_noise: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        if anchors.dim() != 2:
            raise ValueError(f"anchors must be [K+1, d], got shape {tuple(anchors.shape)}")
        if anchors.shape[0] < 2:
            raise ValueError(
                f"a curve needs at least two anchors (its end points), got {anchors.shape[0]}"
            )
        if degree < 1:
            raise ValueError(f"degree must be ≥ 1, got {degree}")
        self.segments = anchors.shape[0] - 1
        self.degree = degree
        self.anchored = anchored
        self.dim = anchors.shape[1]
        anchors = anchors.detach().float().clone()
        # bends on the straight line between consecutive joints
        frac = torch.arange(1, degree, dtype=anchors.dtype) / degree  # [n-1]
        a0, a1 = anchors[:-1].unsqueeze(1), anchors[1:].unsqueeze(1)  # [K,1,d]
        bends = a0 + frac.view(1, -1, 1) * (a1 - a0)  # [K, n-1, d]
        if init_noise > 0 and degree > 1:
            g = torch.Generator().manual_seed(int(seed))
            bends = bends + init_noise * torch.randn(bends.shape, generator=g)
        if anchored:
            self.register_buffer("joints", anchors)
            self.bends = nn.Parameter(bends)
        else:
            self.joints = nn.Parameter(anchors)
            self.bends = nn.Parameter(bends)

    @property
    def num_points(self) -> int:
        return self.segments * self.degree + 1

    def control_points(self) -> Tensor:
        """All K·n + 1 control points, joints at rows 0, n, …, Kn."""
        K, n, d = self.segments, self.degree, self.dim
        if n == 1:
            return self.joints
        body = torch.cat([self.joints[:-1].unsqueeze(1), self.bends], dim=1).reshape(K * n, d)
        return torch.cat([body, self.joints[-1:]], dim=0)

    def forward(self, t: Tensor | float) -> Tensor:
        """φ(t): [d] for a scalar t, [T, d] for t of shape [T]."""
        t = torch.as_tensor(t, dtype=self.joints.dtype)
        scalar = t.dim() == 0
        w = bernstein_matrix(t, self.segments, self.degree)
        out = w @ self.control_points()
        return out[0] if scalar else out

    point = forward

    def joint_times(self) -> Tensor:
        """The t of every joint: 0, 1/K, …, 1."""
        return torch.linspace(0, 1, self.segments + 1)


def linear_path(a: Tensor, b: Tensor, t: Tensor) -> Tensor:
    """Points (1 − t)·a + t·b for t [T] → [T, d] (the straight line between two optima)."""
    t = t.reshape(-1, 1).to(a.dtype)
    return (1 - t) * a + t * b
