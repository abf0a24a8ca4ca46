"""How the Laplace backend talks to laplace-torch: batches, the networks it is handed, and a
curvature backend of our own.

* :func:`to_laplace_batch` / :func:`from_laplace_batch` / :func:`task_loader`: task batches as the
  flat dicts laplace-torch iterates, in order or sorted by length.
* :class:`LatentNet` (class logits as a function of one flat latent w, for dense and diagonal
  Hessians) and :class:`ModelNet` (the peft model itself, for K-FAC, whose blocks follow its
  linear layers), with :func:`_trainable_at` switching θ's gradients on for the fit only.
* :func:`per_example_ggn_backend`: a ``GGNInterface`` whose exact GGN Σ_i J_iᵀ Λ_i J_i comes from
  per-example adapters (:func:`~bayes_lora.lora.batched.per_example_vjp`): Λ_i = U_i U_iᵀ has rank
  C − 1, so one forward and C − 1 backward passes per batch give it (one for a binary task).
* :func:`eigen_full_laplace`: laplace-torch's ``FullLaplace`` whose evidence uses one
  eigendecomposition of H instead of a d × d log-determinant per step of the prior optimisation.
* :func:`lowrank_laplace`: laplace-torch's ``LowRankLaplace`` fed by the same backend's
  ``eig_lowrank``: the exact GGN of n examples is RᵀR for its n(C − 1) rows R = (J_iᵀu_ik), so its
  nonzero eigenpairs come from the n(C − 1) × n(C − 1) Gram matrix RRᵀ = QEQᵀ (U = RᵀQE^{-1/2}),
  without ever forming a d × d matrix — the exact GGN over all 37,634 LoRA numbers of the default
  model at the cost of one training pass over the Hessian's examples.

laplace-torch itself is imported inside the functions that build its classes, on first use.
"""
from __future__ import annotations

import math
from collections import UserDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..lora.batched import per_example_jacobians, per_example_vjp
from ..lora.params import FunctionalModel
from ..lora.spaces import ParameterSpace
from ..types import Batch, EncodedTask, length_order

__all__ = [
    "EVIDENCE_PRIOR_RANGE",
    "LOWRANK_RTOL",
    "MAX_LOWRANK_ROWS",
    "LatentNet",
    "ModelNet",
    "eigen_full_laplace",
    "evidence_prior",
    "from_laplace_batch",
    "ggn_square_root",
    "lowrank_eigen",
    "lowrank_laplace",
    "per_example_ggn_backend",
    "task_loader",
    "to_laplace_batch",
]


# --- the networks handed to laplace-torch -------------------------------------------------------

#: key under which laplace-torch finds the labels (and, as ``dict_key_x``, the batch size) in a
#: dict batch; inputs are the other keys, task extras (e.g. a choice mask) are prefixed
_LABELS = "labels"
_EXTRA = "extra."


def to_laplace_batch(batch: Batch) -> UserDict:
    """A task batch as the flat dict laplace-torch iterates: the model inputs, ``labels``, and
    any other entries prefixed ``extra.`` (the example ``index`` is dropped)."""
    out = UserDict(dict(batch["inputs"]))
    out[_LABELS] = batch["labels"]
    for key, value in batch.items():
        if key not in ("inputs", "labels", "index"):
            out[_EXTRA + key] = value
    return out


def from_laplace_batch(x: Mapping[str, Any]) -> Batch:
    """Inverse of :func:`to_laplace_batch`."""
    batch: dict[str, Any] = {"inputs": {}}
    for key, value in x.items():
        if key == _LABELS:
            batch["labels"] = value
        elif key.startswith(_EXTRA):
            batch[key[len(_EXTRA):]] = value
        else:
            batch["inputs"][key] = value
    return batch


def task_loader(task: EncodedTask, batch_size: int, *, by_length: bool = False):
    """A DataLoader of laplace-torch dict batches over ``task``, in order or sorted by length
    (the curvature is a sum over examples: the order does not change it, and batches of similar
    length pad less); dynamic padding kept: every batch is the task's own batch of its examples."""
    from torch.utils.data import DataLoader

    def collate(index: list[int]) -> UserDict:
        sub = task.subset(torch.as_tensor(index, dtype=torch.long))
        return to_laplace_batch(next(iter(sub.batches(len(index)))))

    order = length_order(task).tolist() if by_length else list(range(len(task)))
    return DataLoader(order, batch_size=batch_size, shuffle=False, collate_fn=collate)


class LatentNet(nn.Module):
    """Class logits as a function of one flat parameter, the latent w of ``space``.

    The peft model is reached through the functional model (not registered as a submodule), so
    ``w`` is the only parameter laplace-torch sees; ``forward`` takes a dict batch made by
    :func:`to_laplace_batch`.
    """

    def __init__(self, fm: FunctionalModel, space: ParameterSpace, task: EncodedTask, w: Tensor):
        super().__init__()
        self.space = space
        self.w = nn.Parameter(w.detach().clone().float())
        self._fm = fm
        self._task = task

    def forward(self, x: Mapping[str, Any]) -> Tensor:
        theta = self.space.to_theta(self.w)
        return self._task.class_logits(self._fm.forward_at(theta), from_laplace_batch(x))


class ModelNet(nn.Module):
    """Class logits of the peft model itself (for K-FAC, which needs its linear layers)."""

    def __init__(self, model: nn.Module, task: EncodedTask):
        super().__init__()
        self.model = model
        self._task = task

    def forward(self, x: Mapping[str, Any]) -> Tensor:
        return self._task.class_logits(self.model, from_laplace_batch(x))


def _check_kron_layers(model: nn.Module, names: Sequence[str]) -> None:
    """K-FAC blocks are per linear layer (weight, then bias): every tensor of ``names`` (θ's, or
    a subnetwork's) must be the weight or bias of an ``nn.Linear`` whose trainable tensors are
    exactly its weight (and bias)."""
    owners: dict[str, set[str]] = {}
    for name in names:
        path, leaf = name.rsplit(".", 1)
        owners.setdefault(path, set()).add(leaf)
    for path, leaves in owners.items():
        module = model.get_submodule(path)
        if not isinstance(module, nn.Linear):
            raise ValueError(  # noqa: TRY004 - an unsupported option, not a wrong argument type
                f"laplace: hessian='kron' needs every LoRA / head tensor in an nn.Linear, but "
                f"{path!r} is a {type(module).__name__}; use hessian='diag'"
            )
        want = {"weight"} | ({"bias"} if module.bias is not None else set())
        if leaves != want:
            raise ValueError(
                f"laplace: hessian='kron' needs all of {sorted(want)} of {path!r} in θ, "
                f"got {sorted(leaves)}; use hessian='diag'"
            )


@contextmanager
def _trainable_at(fm: FunctionalModel, theta: Tensor, names: Sequence[str] | None = None) -> Iterator[None]:
    """Temporarily write θ into the model and switch on the gradients of ``names`` only (θ's
    tensors by default, or a subnetwork's); restore the stored tensors and freeze them again
    afterwards."""
    model, layout = fm.model, fm.layout
    names = tuple(layout.names if names is None else names)
    params = dict(model.named_parameters())
    saved = layout.read(model)
    layout.write_(model, theta)
    try:
        for name in names:
            params[name].requires_grad_(True)
        trainable = tuple(n for n, p in model.named_parameters() if p.requires_grad)
        if trainable != names:
            raise ValueError(
                "laplace: hessian='kron' needs θ's layout to list the model's trainable tensors "
                "in the model's own order (K-FAC blocks follow model.parameters())"
            )
        yield
    finally:
        for name in names:
            params[name].requires_grad_(False)
        layout.write_(model, saved)


# --- laplace-torch curvature through per-example adapters ---------------------------------------


def ggn_square_root(f: Tensor) -> Tensor:
    """U [B, C, C − 1] with U_i U_iᵀ = Λ_i = diag(p_i) − p_i p_iᵀ, p_i = softmax(f_i).

    Λ_i is the Hessian of the categorical NLL with respect to the logits; its null space is the
    all-ones vector, so C − 1 columns suffice. For C = 2 it is √(p₀p₁)·(1, −1)ᵀ.
    """
    p = f.double().softmax(-1)
    if p.shape[-1] == 2:
        root = (p[:, 0] * p[:, 1]).sqrt()
        u = torch.stack([root, -root], dim=-1)[..., None]
    else:
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        evals, evecs = torch.linalg.eigh(lam)  # ascending: the first is the null direction (0)
        u = evecs[..., 1:] * evals[:, None, 1:].clamp_min(0).sqrt()
    return u.to(f.dtype)


#: most GGN rows n · (C − 1) a low-rank Hessian holds (rows × d float32 numbers: 0.6 GB for the
#: default model's d = 37,634 at this limit)
MAX_LOWRANK_ROWS = 4096
#: eigenvalues of the GGN's Gram matrix below this fraction of the largest are dropped: in float32
#: their eigenvectors are noise, and curvature that small is negligible next to any usable prior
LOWRANK_RTOL = 1e-5


def _gram(rows: Tensor) -> Tensor:
    """RRᵀ, symmetric; on the CPU in float32 by BLAS ``ssyrk`` (half the products of a matmul)."""
    if rows.device.type == "cpu" and rows.dtype == torch.float32:
        from scipy.linalg.blas import ssyrk

        # rows.T is R in column-major order; trans=1 computes (Rᵀ)ᵀRᵀ = RRᵀ, upper triangle only
        upper = torch.from_numpy(ssyrk(1.0, rows.T.numpy(), trans=1))
        return upper.triu() + upper.triu(1).T
    gram = rows @ rows.T
    return (gram + gram.T) / 2


def lowrank_eigen(rows: Tensor, rtol: float = LOWRANK_RTOL) -> tuple[Tensor, Tensor]:
    """Nonzero eigenpairs of RᵀR from its rows R [m, d] through the m × m Gram matrix.

    RRᵀ = Q diag(e) Qᵀ ⇒ RᵀR = U diag(e) Uᵀ with orthonormal U = RᵀQ diag(e)^{-1/2} [d, k]; the
    k eigenvalues above ``rtol`` × the largest are kept. Returns (U [d, k], e [k]).
    """
    e, q = torch.linalg.eigh(_gram(rows).double())
    keep = e > rtol * e.max().clamp_min(torch.finfo(torch.float64).tiny)
    e, q = e[keep], q[:, keep]
    return rows.T @ (q / e.sqrt()).to(rows.dtype), e.to(rows.dtype)


_BACKENDS: dict[str, type] = {}


def per_example_ggn_backend() -> type:
    """A laplace-torch ``GGNInterface`` for :class:`LatentNet` whose curvature comes from
    per-example vector–Jacobian products (see the module docstring); built on first use so that
    laplace-torch is imported only when a Laplace is fitted."""
    if "ggn" in _BACKENDS:
        return _BACKENDS["ggn"]
    from laplace.curvature import GGNInterface

    class PerExampleGGN(GGNInterface):
        """Exact GGN (``full``, ``diag``) and Jacobians of a :class:`LatentNet` through
        per-example adapters: one forward and C − 1 (GGN) or C (Jacobians) backward passes."""

        def _square_root_rows(self, x) -> tuple[Tensor, Tensor]:
            net: LatentNet = self.model
            g, f = per_example_vjp(net._fm, net.space, net._task, from_laplace_batch(x), net.w, ggn_square_root)
            return g.reshape(-1, g.shape[-1]), f  # [B·(C−1), d]

        def full(self, x, y, **kwargs):
            rows, f = self._square_root_rows(x)
            return self.factor * self.lossfunc(f, y), rows.T @ rows

        def diag(self, x, y, **kwargs):
            rows, f = self._square_root_rows(x)
            return self.factor * self.lossfunc(f, y), rows.square().sum(0)

        def jacobians(self, x, enable_backprop: bool = False):
            net: LatentNet = self.model
            return per_example_jacobians(net._fm, net.space, net._task, from_laplace_batch(x), net.w)

        def eig_lowrank(self, data_loader):
            """(U [d, k], e [k], loss): the exact GGN of the whole loader, U diag(e) Uᵀ, from its
            n(C − 1) rows (:func:`lowrank_eigen`), and the summed NLL; sets ``n_outputs``."""
            # the rows go straight into one buffer of n(C − 1) rows, sized at the first batch
            # (a list and a final torch.cat would hold them twice: 150 MB on the default model)
            n = len(data_loader.dataset)
            rows, loss, m = None, 0.0, 0
            for x in data_loader:
                r, f = self._square_root_rows(x)
                if rows is None:
                    per_example = r.shape[0] // f.shape[0]  # C − 1
                    if n * per_example > MAX_LOWRANK_ROWS:
                        raise ValueError(
                            f"laplace: a low-rank Hessian keeps every GGN row in memory; "
                            f"{n * per_example} rows (examples × (classes − 1)) are more than "
                            f"{MAX_LOWRANK_ROWS} — pass a smaller subset"
                        )
                    rows = r.new_empty(n * per_example, r.shape[1])
                if m + r.shape[0] > rows.shape[0]:
                    raise RuntimeError("laplace: the loader gave more examples than its dataset holds")
                rows[m:m + r.shape[0]] = r.detach()
                m += r.shape[0]
                loss = loss + self.factor * self.lossfunc(f, x[_LABELS])
                self.n_outputs = f.shape[-1]
            if rows is None:
                raise ValueError("laplace: the Hessian's loader is empty")
            vectors, values = lowrank_eigen(rows[:m])
            return vectors, values, loss.detach()

    _BACKENDS["ggn"] = PerExampleGGN
    return PerExampleGGN


# --- the evidence-optimal scalar prior ------------------------------------------------------------

#: the scalar prior precisions the evidence optimum is searched between
EVIDENCE_PRIOR_RANGE = (1e-8, 1e8)


def evidence_prior(eigvals: Tensor, sq_norm: float | Tensor) -> float:
    """The scalar prior precision λ that maximises the Laplace evidence of a Gaussian posterior
    with precision H + λI around μ, prior N(μ₀, λ⁻¹I):

        log Z(λ) = log p(D | μ) − ½ [Σ_j log(1 + h_j/λ) + λ‖μ − μ₀‖²]

    (h_j: H's nonzero eigenvalues, ``eigvals``; ``sq_norm`` = ‖μ − μ₀‖²). Its stationarity
    condition is MacKay's fixed point λ‖μ − μ₀‖² = γ(λ) = Σ_j h_j/(h_j + λ), the effective number
    of parameters; −log Z is strictly convex in s = log λ, so the root is unique, found here to
    machine precision by Newton steps in s kept inside a shrinking bracket (laplace-torch's own
    ``optimize_prior_precision`` takes 100 Adam steps on log Z, each a full evidence evaluation).
    The root is clipped to :data:`EVIDENCE_PRIOR_RANGE` (e.g. when μ = μ₀ the evidence grows
    without bound in λ).
    """
    h = eigvals.detach().double().clamp_min(0)
    m = float(sq_norm)
    lo, hi = math.log(EVIDENCE_PRIOR_RANGE[0]), math.log(EVIDENCE_PRIOR_RANGE[1])

    def slope(s: float) -> tuple[float, float]:  # first and second derivative of −2 log Z in s
        lam = math.exp(s)
        frac = h / (h + lam)
        return lam * m - float(frac.sum()), lam * m + float((frac * (1 - frac)).sum())

    if slope(lo)[0] >= 0:
        return EVIDENCE_PRIOR_RANGE[0]
    if slope(hi)[0] <= 0:  # also when μ = μ₀ (m = 0)
        return EVIDENCE_PRIOR_RANGE[1]
    s = min(max(math.log(int((h > 0).sum()) / m), lo), hi)  # γ ≤ k, so λ* ≤ k/m
    for _ in range(200):
        g, curv = slope(s)
        lo, hi = (lo, s) if g > 0 else (s, hi)
        newton = s - g / curv
        s_new = newton if lo < newton < hi else 0.5 * (lo + hi)
        done = abs(s_new - s) < 1e-13
        s = s_new
        if done or hi - lo < 1e-13:
            break
    return math.exp(s)


class _ExactScalarPrior:
    """Mixin for laplace-torch Laplaces whose H has cheap eigenvalues (``_scaled_eigvals``: the
    eigenvalues of H/T): a scalar prior tuned by marglik is the exact optimum
    (:func:`evidence_prior`); any other request goes to laplace-torch."""

    def _scaled_eigvals(self) -> Tensor:
        raise NotImplementedError

    def optimize_prior_precision(self, pred_type="glm", method="marglik", *args, prior_structure="scalar",
                                 **kwargs) -> None:
        init = kwargs.get("init_prior_prec", 1.0)
        exact = (
            not args
            and str(getattr(method, "value", method)) == "marglik"
            and str(getattr(prior_structure, "value", prior_structure)) == "scalar"
            and (not isinstance(init, Tensor) or init.numel() == 1)
        )
        if not exact:
            super().optimize_prior_precision(pred_type, method, *args, prior_structure=prior_structure, **kwargs)
            return
        delta = (self.mean - self.prior_mean).double()
        lam = evidence_prior(self._scaled_eigvals(), (delta * delta).sum())
        self.prior_precision = torch.tensor([lam], dtype=self._dtype, device=self._device)


def eigen_full_laplace() -> type:
    """laplace-torch's ``FullLaplace`` whose evidence uses one eigendecomposition of H."""
    if "full" in _BACKENDS:
        return _BACKENDS["full"]
    from laplace import FullLaplace

    class EigenFullLaplace(_ExactScalarPrior, FullLaplace):
        """FullLaplace with log det(H/T + diag λ) = Σ_j log(h_j/T + λ) when λ is one scalar
        (the eigenvalues h_j of H are computed once per fit); other priors use the base class."""

        _key = ("all", "full-eigen")  # its own key: laplace-torch's factory must never pick it

        def fit(self, train_loader, override: bool = True, progress_bar: bool = False) -> None:
            self._H_eigvals = None
            super().fit(train_loader, override=override, progress_bar=progress_bar)

        def _eigvals(self) -> Tensor:
            if getattr(self, "_H_eigvals", None) is None:
                h = self.H.detach().double()
                self._H_eigvals = torch.linalg.eigvalsh((h + h.T) / 2).clamp_min(0).to(self.H.dtype)
            return self._H_eigvals

        @property
        def log_det_posterior_precision(self) -> Tensor:
            prior = self.prior_precision_diag
            if not bool((prior == prior[0]).all()):
                return super().log_det_posterior_precision
            return torch.log(self._scaled_eigvals() + prior[0]).sum()

        def _scaled_eigvals(self) -> Tensor:
            return self._H_factor * self._eigvals()

    _BACKENDS["full"] = EigenFullLaplace
    return EigenFullLaplace


def lowrank_laplace() -> type:
    """laplace-torch's ``LowRankLaplace`` (precision U diag(l) Uᵀ + diag λ) fitted by
    :func:`per_example_ggn_backend`'s ``eig_lowrank``: the exact GGN, not asdfghjkl's Hessian
    (which laplace-torch's class requires at construction, and which is not installed)."""
    if "lowrank" in _BACKENDS:
        return _BACKENDS["lowrank"]
    from laplace import LowRankLaplace, ParametricLaplace
    from torch.nn.utils import parameters_to_vector

    class ExactGGNLowRankLaplace(_ExactScalarPrior, LowRankLaplace):
        """LowRankLaplace with the exact-GGN backend; log det(U diag(l) Uᵀ + λI) =
        Σ_j log(l_j + λ) + (d − k) log λ for a scalar λ (the base class inverts a k × k matrix
        built from a d × k product at every step of the prior optimisation)."""

        _key = ("all", "lowrank-exact-ggn")  # its own key: laplace-torch's factory must never pick it

        def __init__(self, model: nn.Module, likelihood, backend, **kwargs):
            # skip LowRankLaplace.__init__, whose only addition is the asdfghjkl requirement
            ParametricLaplace.__init__(self, model, likelihood, backend=backend, **kwargs)

        def fit(self, train_loader, override: bool = True, progress_bar: bool = False) -> None:
            if not override:
                raise ValueError("laplace: a low-rank Laplace cannot be updated with more data; refit it")
            self.model.eval()
            self.mean = parameters_to_vector(self.model.parameters()).detach()
            vectors, values, loss = self.backend.eig_lowrank(train_loader)
            self.H = (vectors, values)
            self.loss = loss
            self.n_outputs = self.backend.n_outputs
            self.n_data = len(train_loader.dataset)

        @property
        def log_det_posterior_precision(self) -> Tensor:
            (_, values), prior = self.posterior_precision
            if not bool((prior == prior[0]).all()):
                return super().log_det_posterior_precision
            return torch.log(values + prior[0]).sum() + (len(prior) - len(values)) * torch.log(prior[0])

        def _scaled_eigvals(self) -> Tensor:  # the k eigenvalues; U is not touched
            return self._H_factor * self.H[1]

    _BACKENDS["lowrank"] = ExactGGNLowRankLaplace
    return ExactGGNLowRankLaplace
