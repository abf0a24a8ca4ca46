"""Loss barriers along paths between LoRA optima (straight lines and Bézier curves).

A path is evaluated on a grid ``0 = t_0 < t_1 < ... < t_G = 1`` that includes both ends; its
*barrier* is how far the loss rises above the worse of its two endpoints,

.. math:: B = \\max_t L(t) - \\max(L(0), L(1)),

as used for mode connectivity by Garipov et al. (2018), "Loss Surfaces, Mode Connectivity, and
Fast Ensembling of DNNs", and by LoRA-Curve (2026). B >= 0 always (the endpoints are on the
grid); B = 0 means the path is no worse anywhere than its worse end.

Only numpy is imported.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["PathResult", "barrier"]

#: Largest allowed distance of the first / last grid point from 0 / 1.
T_END_TOL = 1e-6


def _as_1d(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN/Inf")
    return arr


def barrier(losses: Any) -> float:
    """Loss barrier of a path: ``max_t L(t) - max(L(0), L(1))``.

    Parameters
    ----------
    losses : array_like, shape [G]
        The loss on a grid of t in [0, 1] that *includes both ends*: ``losses[0]`` is L(0) and
        ``losses[-1]`` is L(1). G >= 2.

    Returns
    -------
    float >= 0 (in the units of the loss, e.g. nats).
    """
    loss = _as_1d(losses, "losses")
    if loss.shape[0] < 2:
        raise ValueError(f"losses needs at least the two endpoints, got {loss.shape[0]} value(s)")
    return float(loss.max() - max(loss[0], loss[-1]))


@dataclass(frozen=True, eq=False)
class PathResult:
    """Loss and accuracy along one path, on a grid of the path parameter.

    Build it with :meth:`from_grid`, which validates the grid and computes the barrier.

    Attributes
    ----------
    t : ndarray, shape [G]
        Increasing grid of the path parameter, ``t[0] = 0`` and ``t[-1] = 1``.
    loss : ndarray, shape [G]
        Mean loss (NLL, nats) of the model at each grid point.
    accuracy : ndarray, shape [G], or None
        Accuracy (fraction) at each grid point, when measured.
    barrier : float
        ``max(loss) - max(loss[0], loss[-1])`` (see :func:`barrier`).
    """

    t: np.ndarray
    loss: np.ndarray
    accuracy: np.ndarray | None
    barrier: float

    @classmethod
    def from_grid(cls, t: Any, loss: Any, accuracy: Any = None) -> PathResult:
        """Validate a grid evaluation and compute its barrier.

        Parameters
        ----------
        t : array_like, shape [G]
            Strictly increasing, from 0 to 1 (both ends included, within ``T_END_TOL``).
        loss : array_like, shape [G]
        accuracy : array_like, shape [G], optional

        Returns
        -------
        PathResult
        """
        tt = _as_1d(t, "t")
        ll = _as_1d(loss, "loss")
        if tt.shape != ll.shape:
            raise ValueError(f"t has shape {tt.shape} but loss has shape {ll.shape}")
        if tt.shape[0] < 2:
            raise ValueError("a path needs at least the two endpoints t = 0 and t = 1")
        if np.any(np.diff(tt) <= 0):
            raise ValueError("t must be strictly increasing")
        if abs(tt[0]) > T_END_TOL or abs(tt[-1] - 1.0) > T_END_TOL:
            raise ValueError(
                f"the grid must include both ends t = 0 and t = 1, got [{tt[0]:.6g}, {tt[-1]:.6g}]"
            )
        acc = None
        if accuracy is not None:
            acc = _as_1d(accuracy, "accuracy")
            if acc.shape != tt.shape:
                raise ValueError(f"t has shape {tt.shape} but accuracy has shape {acc.shape}")
        return cls(t=tt, loss=ll, accuracy=acc, barrier=barrier(ll))

    @property
    def t_max(self) -> float:
        """The grid point of the highest loss (first one on ties)."""
        return float(self.t[int(np.argmax(self.loss))])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"t", "loss", "accuracy", "barrier"}`` (lists of floats, a float).

        ``"accuracy"`` is None when not measured. The dict is what :func:`plots.path_plot`
        takes for each path.
        """
        return {
            "t": [float(v) for v in self.t],
            "loss": [float(v) for v in self.loss],
            "accuracy": None if self.accuracy is None else [float(v) for v in self.accuracy],
            "barrier": float(self.barrier),
        }
