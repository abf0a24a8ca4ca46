"""Parameter spaces: maps from a few latent coordinates w ∈ R^d to the LoRA vector θ ∈ R^D.

* :class:`FullSpace` — θ itself (d = D).
* :class:`MaskedSpace` — some coordinates of θ free, the rest fixed at a base θ̂: whole tensors
  chosen by name (a subnetwork, e.g. the top layer's adapters and the head), or the entries of
  every LoRA A factor (BLoB-like VI).
* :class:`ProjectedSpace` — LoRA-XS (Bałazy et al. 2024; B-LoRA-XS, Marszałek et al. 2025): per
  adapted weight W ≈ U_r Σ_r V_rᵀ (truncated SVD, frozen) the update is ΔW = U_r Σ_r R V_rᵀ with
  only the r×r core R free. It maps linearly onto peft's factors — B = U_r Σ_r, A = R V_rᵀ / s
  with s peft's scaling α/r — so an ordinary peft LoRA layer evaluates it.
* :class:`AffineSpace` — θ = g(θ̂ + P z) for a basis P (Izmailov et al. 2019): a seeded random
  orthonormal basis (a buffer rebuilt from its seed), a PCA basis of snapshots, or any matrix;
  g is an inner space (identity by default).

Every space is an ``nn.Module`` whose frozen parts are buffers; ``to_theta`` accepts latents
with any leading batch dimensions and is differentiable.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn

from .params import ParamLayout, is_lora_factor


class ParameterSpace(nn.Module):
    """Base class: ``dim`` latent coordinates mapped to θ of ``layout`` by :meth:`to_theta`."""

    layout: ParamLayout
    dim: int
    kind: str = "space"

    def to_theta(self, w: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, w: Tensor) -> Tensor:
        return self.to_theta(w)

    def theta_tensors(self, w: Tensor) -> dict[str, Tensor]:
        """θ = g(w) split by tensor, ``{name: [..., *shape]}``. A space that leaves tensors fixed
        returns them without a gradient path to w, so that a backward pass stops where the
        free tensors start (the default splits ``to_theta(w)``: every tensor depends on w)."""
        return self.layout.unflatten(self.to_theta(w))

    def initial(self) -> Tensor:
        """A sensible starting latent (the current adapter, zeros for a core, ...)."""
        return torch.zeros(self.dim)

    def _check(self, w: Tensor) -> None:
        if w.shape[-1] != self.dim:
            raise ValueError(f"{type(self).__name__} has {self.dim} coordinates, got {w.shape[-1]}")


class FullSpace(ParameterSpace):
    """θ itself: the latent is the whole LoRA vector."""

    kind = "full"

    def __init__(self, layout: ParamLayout, init: Tensor | None = None):
        super().__init__()
        self.layout = layout
        self.dim = layout.dim
        self.register_buffer("init", torch.zeros(self.dim) if init is None else init.detach().clone())

    def to_theta(self, w: Tensor) -> Tensor:
        self._check(w)
        return w

    def initial(self) -> Tensor:
        return self.init.clone()


class MaskedSpace(ParameterSpace):
    """θ = base with the coordinates at ``index`` replaced by the latent w (d = len(index)).

    Built from tensor names (:meth:`from_names`: a subnetwork such as the top layer's adapters and
    the head, for a subnetwork Laplace) or from every LoRA A entry (:meth:`lora_a`, BLoB-like VI).
    :meth:`theta_tensors` returns the tensors without a free coordinate as constants, so
    per-example gradients (:func:`~bayes_lora.lora.batched.per_example_vjp`) backpropagate only
    down to the lowest free tensor.
    """

    kind = "masked"

    def __init__(self, layout: ParamLayout, base: Tensor, index: Tensor):
        super().__init__()
        self.layout = layout
        if base.shape != (layout.dim,):
            raise ValueError(f"base θ must have length {layout.dim}, got {tuple(base.shape)}")
        index = torch.as_tensor(index, dtype=torch.long)
        if index.dim() != 1 or index.numel() == 0:
            raise ValueError("MaskedSpace needs a non-empty 1-d index")
        if int(index.min()) < 0 or int(index.max()) >= layout.dim or index.unique().numel() != index.numel():
            raise ValueError(f"MaskedSpace's index must hold distinct coordinates in [0, {layout.dim})")
        self.register_buffer("base", base.detach().clone().float())
        self.register_buffer("index", index.clone())
        self.dim = index.numel()
        # per tensor: None (fixed), a slice of w (the whole tensor free, in order), or
        # (its free local coordinates, their positions in w)
        where = torch.full((layout.dim,), -1, dtype=torch.long)
        where[index] = torch.arange(index.numel())
        self._pieces: dict[str, Any] = {}
        for name, off, k in zip(layout.names, layout.offsets, layout.numels):
            pos = where[off:off + k]
            free = pos >= 0
            if not bool(free.any()):
                self._pieces[name] = None
            elif bool(free.all()) and bool((pos == pos[0] + torch.arange(k)).all()):
                self._pieces[name] = slice(int(pos[0]), int(pos[0]) + k)
            else:
                self._pieces[name] = (free.nonzero().squeeze(1), pos[free])

    @staticmethod
    def check_patterns(layout: ParamLayout, patterns: Sequence[str]) -> None:
        """A ValueError unless ``patterns`` is a non-empty list of glob strings each matching some
        tensor of ``layout`` (shapes and names only: cheap, run before any training)."""
        if isinstance(patterns, str) or not patterns or not all(isinstance(p, str) for p in patterns):
            raise ValueError(f"tensor patterns must be a non-empty list of glob strings, got {patterns!r}")
        unused = [p for p in patterns if not any(fnmatchcase(n, p) for n in layout.names)]
        if unused:
            raise ValueError(
                f"tensor patterns {unused} match none of θ's tensors; they are: {list(layout.names)}"
            )

    @classmethod
    def from_names(cls, layout: ParamLayout, base: Tensor, patterns: Sequence[str]) -> MaskedSpace:
        """The tensors of ``layout`` whose names match any of the glob ``patterns`` (``fnmatch``,
        case-sensitive), every coordinate of each, around ``base``."""
        cls.check_patterns(layout, patterns)
        return cls._whole_tensors(layout, base, lambda name: any(fnmatchcase(name, p) for p in patterns))

    @staticmethod
    def top_layer_names(layout: ParamLayout) -> list[str]:
        """The LoRA tensors of the highest-numbered layer that holds any (the last integer in a
        LoRA tensor's name is its layer), and every tensor that is not a LoRA factor (a trained
        head): a last-layer subnetwork (Daxberger et al. 2021)."""
        layer_of = {}
        for name in layout.names:
            if is_lora_factor(name):
                numbers = re.findall(r"\.(\d+)\.", name)
                if not numbers:
                    raise ValueError(f"cannot tell the layer of LoRA tensor {name!r}; name the tensors explicitly")
                layer_of[name] = int(numbers[-1])
        if not layer_of:
            raise ValueError("the model has no LoRA factors to pick a top layer from")
        top = max(layer_of.values())
        return [n for n in layout.names if layer_of.get(n, top) == top]

    @classmethod
    def lora_a(cls, layout: ParamLayout, base: Tensor) -> MaskedSpace:
        """The space of every ``lora_A`` entry of ``layout`` around ``base``."""
        if not any(".lora_A." in name for name in layout.names):
            raise ValueError("the model has no LoRA A factors")
        return cls._whole_tensors(layout, base, lambda name: ".lora_A." in name)

    @classmethod
    def _whole_tensors(cls, layout: ParamLayout, base: Tensor, keep: Callable[[str], bool]) -> MaskedSpace:
        """Every coordinate of the tensors whose names ``keep`` accepts, in layout order."""
        parts = [torch.arange(off, off + k) for name, off, k in zip(layout.names, layout.offsets, layout.numels)
                 if keep(name)]
        return cls(layout, base, torch.cat(parts))

    @property
    def free_names(self) -> list[str]:
        """The tensors with at least one free coordinate, in layout order."""
        return [n for n, piece in self._pieces.items() if piece is not None]

    def to_theta(self, w: Tensor) -> Tensor:
        self._check(w)
        theta = self.base.to(w.dtype).expand(*w.shape[:-1], self.base.shape[0])
        return theta.index_copy(-1, self.index, w)

    def theta_tensors(self, w: Tensor) -> dict[str, Tensor]:
        self._check(w)
        batch = w.shape[:-1]
        base = self.layout.unflatten(self.base.to(w.dtype))
        out = {}
        for (name, piece), shape in zip(self._pieces.items(), self.layout.shapes):
            if piece is None:
                out[name] = base[name].expand(*batch, *shape)
            elif isinstance(piece, slice):
                out[name] = w[..., piece].reshape(*batch, *shape)
            else:
                local, pos = piece
                flat = base[name].reshape(-1).expand(*batch, base[name].numel())
                out[name] = flat.index_copy(-1, local, w[..., pos]).reshape(*batch, *shape)
        return out

    def initial(self) -> Tensor:
        return self.base[self.index].clone()


def _lora_modules(layout: ParamLayout) -> list[tuple[str, str, str]]:
    """(module path, A name, B name) for every LoRA module of the layout, in layout order."""
    out = []
    for name in layout.names:
        if ".lora_A." in name:
            path, rest = name.split(".lora_A.")
            b_name = f"{path}.lora_B.{rest}"
            if b_name not in layout.names:
                raise ValueError(f"LoRA factor {name!r} has no matching B factor")
            out.append((path, name, b_name))
    return out


def check_core_ranks(model: nn.Module, layout: ParamLayout | None = None, key: str = "lora.r") -> None:
    """A ValueError naming the LoRA modules whose rank r exceeds the smaller side of their base
    weight: an r×r core between rank-r SVD factors of that weight (LoRA-XS, or the cores around
    an update B̂Â) needs r ≤ min(out, in). The ranks are ``layout``'s (default: the model's own);
    ``key`` is the setting they came from, named in the message. Cheap (shapes only): callers run
    it before training."""
    layout = layout or ParamLayout.from_model(model)
    shapes = dict(zip(layout.names, layout.shapes))
    bad = []
    for path, a_name, _b in _lora_modules(layout):
        layer = model.get_submodule(path)
        base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer.base_layer
        r, shape = int(shapes[a_name][0]), tuple(base.weight.shape)
        if r > min(shape):
            bad.append((path.removeprefix("base_model.model."), r, shape))
    if bad:
        path, r, shape = bad[0]
        more = f" (and {len(bad) - 1} more module{'s' * (len(bad) > 2)})" if len(bad) > 1 else ""
        smallest = min(min(s) for _p, _r, s in bad)
        raise ValueError(f"LoRA rank {r} exceeds the size of {path}'s weight {shape}{more}: an r×r core "
                         f"space (LoRA-XS cores, or the cores around an adapter's update) needs r ≤ {smallest} "
                         f"({key} = {r})")


class ProjectedSpace(ParameterSpace):
    """LoRA-XS: a trainable r×r core per adapted weight between frozen truncated-SVD factors.

    Parameters
    ----------
    model: the peft LoRA model (its frozen base weights are decomposed once).
    layout: θ's layout (default: the model's trainable parameters).
    rank: the LoRA-XS rank k of every core (default: the LoRA factors' rank in ``layout``). A
        rank other than the model's makes the space's θ a rank-k LoRA vector of the same modules,
        ``layout.at_rank(k)`` (``self.layout``), evaluated by ``fm.with_layout(space.layout)``:
        the cores' size is independent of the LoRA rank (B-LoRA-XS uses k up to ~25). Not with
        ``around`` (the cores of a rank-r update are r×r).
    include_other: keep trainable tensors that are not LoRA factors (e.g. a classification
        head) as free latent coordinates after the cores (True), or fix them at their values.
    adapter_name: the peft adapter whose scaling is used.
    around: a fine-tuned θ̂ [D]. If given, the frozen factors come from the truncated SVD of each
        module's own update B̂Â = U Σ Vᵀ (rank ≤ r) instead of the base weight, so that
        ΔW = s·U Σ R Vᵀ and the core R = I reproduces θ̂'s update exactly: an r×r-core subspace
        through a full-LoRA optimum (its MAP is θ̂'s, and ``initial()`` is θ̂'s latent: identity
        cores and θ̂'s head). Without it: LoRA-XS, ΔW = U_r Σ_r R V_rᵀ of the base weight W.

    The latent is ``[vec(R_1), …, vec(R_M), head…]``; ``dim = M·r² (+ head numbers)``.
    """

    def __init__(
        self,
        model: nn.Module,
        layout: ParamLayout | None = None,
        *,
        include_other: bool = True,
        adapter_name: str = "default",
        around: Tensor | None = None,
        rank: int | None = None,
    ):
        super().__init__()
        layout = layout or ParamLayout.from_model(model)
        if rank is not None:
            if around is not None:
                raise ValueError("ProjectedSpace(around=θ̂) has the cores of θ̂'s update, r×r; it takes no rank")
            layout = layout.at_rank(rank)
        self.layout = layout
        self.include_other = include_other
        self.source = "weight" if around is None else "update"
        params = dict(model.named_parameters())
        if around is not None:
            if around.shape != (layout.dim,):
                raise ValueError(f"ProjectedSpace(around=θ̂): θ̂ must have shape ({layout.dim},), got {tuple(around.shape)}")
            values = layout.unflatten(around.detach().float())
            params = {**params, **{n: values[n] for n in layout.names}}
        self.modules_ = _lora_modules(layout)
        if not self.modules_:
            raise ValueError("ProjectedSpace needs a model with LoRA factors (lora_A / lora_B)")
        check_core_ranks(model, layout)
        self._pieces: dict[str, Callable[[Tensor, tuple], Tensor]] = {}
        offset = 0
        self.ranks: list[int] = []
        self.scalings: list[float] = []
        shape_of = dict(zip(layout.names, layout.shapes))
        for i, (path, a_name, b_name) in enumerate(self.modules_):
            layer = model.get_submodule(path)
            base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer.base_layer
            weight = base.weight.detach().float()
            if getattr(layer, "fan_in_fan_out", False):
                weight = weight.T
            r = int(shape_of[a_name][0])
            scaling = float(layer.scaling[adapter_name]) if hasattr(layer, "scaling") else 1.0
            if around is None:  # LoRA-XS: s·B·A = U_r Σ_r R V_rᵀ
                u, s, vh = torch.linalg.svd(weight, full_matrices=False)
                vt = vh[:r] / scaling
            else:  # the update's own factors: s·B·A = s·U Σ R Vᵀ, = s·B̂Â at R = I
                u, s, vh = _low_rank_svd(params[b_name].detach().float(), params[a_name].detach().float())
                if not s[0] > 0:
                    raise ValueError(
                        f"ProjectedSpace(around=θ̂): the update B̂Â of {path} is zero (an untrained "
                        "adapter has B = 0); pass a fine-tuned θ̂"
                    )
                vt = vh[:r]
            # computed where the weight is (a GPU's SVD), kept in host memory with θ (lora.device)
            self.register_buffer(f"us_{i}", (u[:, :r] * s[:r]).contiguous().cpu())  # B = U_r Σ_r
            self.register_buffer(f"vt_{i}", vt.contiguous().cpu())  # A = R V_rᵀ (/ s for LoRA-XS)
            self.ranks.append(r)
            self.scalings.append(scaling)
            self._pieces[a_name] = self._a_piece(i, offset, r)
            self._pieces[b_name] = self._b_piece(i)
            offset += r * r
        self.core_dim = offset
        other = [n for n in layout.names if not is_lora_factor(n)]
        self.other_names = tuple(other)
        for n, shape in zip(layout.names, layout.shapes):
            if n in other:
                k = int(torch.Size(shape).numel())
                if include_other:
                    self._pieces[n] = self._slice_piece(offset, k)
                    offset += k
                else:
                    buf = f"other_{len(self._buffers)}"
                    self.register_buffer(buf, params[n].detach().reshape(-1).clone().cpu())
                    self._pieces[n] = self._const_piece(buf)
        self.dim = offset
        self.register_buffer("init", torch.zeros(self.dim))
        if around is not None:
            with torch.no_grad():
                lo = 0
                for r in self.ranks:
                    self.init[lo : lo + r * r] = torch.eye(r).reshape(-1)
                    lo += r * r
        if include_other:
            with torch.no_grad():
                for n in other:
                    lo, k = self._other_slice(n)
                    self.init[lo : lo + k] = params[n].detach().reshape(-1)

    @property
    def kind(self) -> str:
        """"projected" (LoRA-XS: factors of the base weight) or "adapter" (factors of θ̂'s update)."""
        return "projected" if self.source == "weight" else "adapter"

    def _other_slice(self, name: str) -> tuple[int, int]:
        lo = self.core_dim
        for n, shape in zip(self.layout.names, self.layout.shapes):
            k = int(torch.Size(shape).numel())
            if n == name:
                return lo, k
            if n in self.other_names:
                lo += k
        raise KeyError(name)

    def _a_piece(self, i: int, offset: int, r: int):
        def piece(w: Tensor, batch: tuple) -> Tensor:
            core = w[..., offset : offset + r * r].reshape(*batch, r, r)
            return (core @ getattr(self, f"vt_{i}")).reshape(*batch, -1)

        return piece

    def _b_piece(self, i: int):
        def piece(w: Tensor, batch: tuple) -> Tensor:
            b = getattr(self, f"us_{i}").reshape(-1).to(w.dtype)
            return b.expand(*batch, b.numel())

        return piece

    @staticmethod
    def _slice_piece(offset: int, k: int):
        return lambda w, batch: w[..., offset : offset + k]

    def _const_piece(self, buf: str):
        def piece(w: Tensor, batch: tuple) -> Tensor:
            c = getattr(self, buf).to(w.dtype)
            return c.expand(*batch, c.numel())

        return piece

    def to_theta(self, w: Tensor) -> Tensor:
        self._check(w)
        batch = tuple(w.shape[:-1])
        return torch.cat([self._pieces[n](w, batch) for n in self.layout.names], dim=-1)

    def initial(self) -> Tensor:
        return self.init.clone()

    def cores(self, w: Tensor) -> list[Tensor]:
        """The r×r cores R_m held in latent ``w`` (a list, one per adapted module)."""
        out, lo = [], 0
        for r in self.ranks:
            out.append(w[..., lo : lo + r * r].reshape(*w.shape[:-1], r, r))
            lo += r * r
        return out

    def delta_weight(self, w: Tensor, m: int) -> Tensor:
        """ΔW_m = s·B·A of module m: U_r Σ_r R_m V_rᵀ (LoRA-XS), s·U Σ R_m Vᵀ (``around``)."""
        vt = getattr(self, f"vt_{m}") * self.scalings[m]
        return getattr(self, f"us_{m}") @ self.cores(w)[m] @ vt


def _low_rank_svd(b: Tensor, a: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """SVD U Σ Vᵀ of the product B A (B [m, r], A [r, n]) without forming it: QR of both factors,
    then the SVD of the small r × r middle. Returns U [m, r], Σ [r], Vᵀ [r, n]."""
    qb, rb = torch.linalg.qr(b)  # B = Q_B R_B
    qa, ra = torch.linalg.qr(a.T)  # Aᵀ = Q_A R_A
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    return qb @ u, s, vh @ qa.T


def random_basis(dim: int, d: int, seed: int) -> Tensor:
    """A seeded random orthonormal basis P [dim, d] (QR of a Gaussian matrix)."""
    g = torch.Generator().manual_seed(int(seed))
    q, _ = torch.linalg.qr(torch.randn(dim, d, generator=g))
    return q


def pca_basis(snapshots: Tensor, d: int) -> Tensor:
    """The top-``d`` principal directions [dim, d] of snapshots [K, dim] (centred)."""
    if snapshots.shape[0] < 2:
        raise ValueError("a PCA basis needs at least two snapshots")
    centred = snapshots - snapshots.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    if d > vh.shape[0]:
        raise ValueError(f"a PCA basis of {snapshots.shape[0]} snapshots has at most {vh.shape[0]} directions, asked {d}")
    return vh[:d].T.contiguous()


def orthonormal_span(vectors: Tensor, d: int | None = None) -> Tensor:
    """An orthonormal basis [dim, d] of the span of ``vectors`` [K, dim] (e.g. control-point differences)."""
    q, r = torch.linalg.qr(vectors.T)
    keep = r.diagonal().abs() > 1e-8 * r.diagonal().abs().max().clamp_min(1e-30)
    q = q[:, keep]
    return q[:, :d] if d is not None else q


class AffineSpace(ParameterSpace):
    """θ = g(origin + P z): a d-dimensional affine subspace of an inner space's latent.

    Parameters
    ----------
    origin: the point θ̂ [n] in the inner space's coordinates.
    basis: P [n, d]; or ``None`` with ``seed`` and ``d`` to rebuild a random orthonormal basis.
    inner: the space whose latent the subspace lives in (default: the identity on ``layout``).
    """

    kind = "affine"

    def __init__(
        self,
        origin: Tensor,
        basis: Tensor | None = None,
        *,
        layout: ParamLayout | None = None,
        inner: ParameterSpace | None = None,
        d: int | None = None,
        seed: int | None = None,
    ):
        super().__init__()
        if inner is None and layout is None:
            raise ValueError("AffineSpace needs a layout or an inner space")
        self.inner = inner
        self.layout = inner.layout if inner is not None else layout
        n = origin.shape[-1]
        if basis is None:
            if d is None or seed is None:
                raise ValueError("AffineSpace without a basis needs d and seed (a seeded random basis)")
            basis = random_basis(n, d, seed)
            persistent = False  # rebuilt from the seed, not saved
        else:
            persistent = True
        if basis.shape[0] != n:
            raise ValueError(f"basis has {basis.shape[0]} rows, the origin has {n} coordinates")
        self.seed = seed
        self.register_buffer("origin", origin.detach().clone())
        self.register_buffer("basis", basis.detach().clone(), persistent=persistent)
        self.dim = basis.shape[1]

    def to_theta(self, w: Tensor) -> Tensor:
        self._check(w)
        x = self.origin + w @ self.basis.T
        return self.inner.to_theta(x) if self.inner is not None else x
