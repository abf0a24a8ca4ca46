"""The one inference layer: a :class:`Posterior` base every method implements, a fit context,
and the batched evaluation every sampled method shares.

Every method is fitted by a registered function ``fit(ctx, **options) -> Posterior`` (see
:mod:`bayes_lora.inference.registry`), and every posterior can

* draw samples of its latents / LoRA vectors (``sample_thetas``, ``latent_samples``),
* give per-sample predictive probabilities [S, N, C] on a task (``predict``) and
  per-observation log-likelihoods [S, N] (``Prediction.log_likelihood``),
* report its own statistics (``info``), and
* be saved to and loaded from safetensors + JSON with identical predictions (``save`` / ``load``).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..lora.checkpoint import LoopCheckpoint
from ..lora.io import atomic_write_json, load_tensors, save_tensors
from ..lora.params import FunctionalModel
from ..lora.spaces import FullSpace, MaskedSpace, ParameterSpace, ProjectedSpace, check_core_ranks
from ..lora.train import TrainConfig, fine_tune
from ..types import EncodedTask, FitInfo, Prediction, over_batches


class Method(str, Enum):
    """The inference methods of bayes_lora."""

    MAP = "map"
    """One fine-tuned adapter (a point mass)."""
    ENSEMBLE = "ensemble"
    """Independently fine-tuned optima, equally weighted (Lakshminarayanan et al. 2017)."""
    MC_DROPOUT = "mc_dropout"
    """Dropout on the LoRA path kept on at prediction (BayesLoRA)."""
    LAPLACE = "laplace"
    """Laplace approximation through laplace-torch (Daxberger et al. 2021; Yang et al. 2024)."""
    SWAG = "swag"
    """SWA-Gaussian over projected cores (Maddox et al. 2019; B-LoRA-XS)."""
    VI = "vi"
    """Variational inference with Pyro SVI (mean-field / low-rank; BLoB-like)."""
    CURVE = "curve"
    """The curve posterior: t (and z) on a Bézier curve through optima (LoRA-Curve)."""


class SpaceKind(str, Enum):
    """The parameter space a Gaussian approximation (Laplace, SWAG) lives in."""

    PROJECTED = "projected"
    """LoRA-XS cores (and head) around the LoRA-XS MAP ``ctx.projected`` (B-LoRA-XS)."""
    ADAPTER = "adapter"
    """r×r cores (and head) between the frozen SVD factors of a fine-tuned anchor's own update
    B̂Â, around that anchor (identity cores): a small subspace through the full-LoRA MAP."""
    FULL = "full"
    """Every LoRA tensor and the head (θ) around a fine-tuned anchor."""
    SUBNETWORK = "subnetwork"
    """Some of θ's tensors (by name; by default the top adapted layer's LoRA tensors and the
    head) around a fine-tuned anchor, the rest fixed there: a subnetwork Laplace."""


class Needs(str, Enum):
    """What a method fits from, besides the model and the training task: a backend declares these
    for its options (:func:`~bayes_lora.inference.registry.register`'s ``needs``) so that a caller
    (the runner) can produce them first and key the fit by them, without knowing the backend."""

    ANCHORS = "anchors"
    """Fine-tuned optima ``FitContext.anchors``."""
    CURVE = "curve"
    """A trained Bézier curve ``FitContext.curve``."""
    PROJECTED_MAP = "projected_map"
    """A MAP core in the LoRA-XS space ``FitContext.projected`` (:func:`fit_projected_map`)."""
    DEV = "dev"
    """Held-out labelled examples ``FitContext.dev`` (the task's dev split) on which a method
    chooses a scale of its own (e.g. the Laplace prior precision, ``prior="dev"``)."""


#: spaces of r×r cores between rank-r SVD factors (``ProjectedSpace``): LoRA rank ≤ every adapted
#: weight's smaller side
CORE_SPACES = (SpaceKind.PROJECTED.value, SpaceKind.ADAPTER.value)


def check_space(option: str) -> Callable[[Mapping[str, Any], nn.Module], None]:
    """The ``check`` of a backend whose option ``option`` names its space: a core space needs
    ranks its weights allow (:func:`~bayes_lora.lora.spaces.check_core_ranks`)."""

    def check(options: Mapping[str, Any], model: nn.Module) -> None:
        if options.get(option) in CORE_SPACES:
            check_core_ranks(model)

    return check


def needs_for_space(option: str, *, dev: str | None = None) -> Callable[[Mapping[str, Any]], tuple[Needs, ...]]:
    """The ``needs`` of a backend whose option ``option`` names its space: the LoRA-XS MAP for
    "projected", the anchors for any other space; and the dev task when the option ``dev``
    (e.g. ``"prior"``, ``"scale"``) is ``"dev"``."""
    def needs(o: Mapping[str, Any]) -> tuple[Needs, ...]:
        space = (Needs.PROJECTED_MAP,) if o.get(option) == "projected" else (Needs.ANCHORS,)
        return (*space, *((Needs.DEV,) if dev is not None and o.get(dev) == "dev" else ()))

    return needs


def check_scale(scale: Any, method: str, *, allow_dev: bool = True) -> None:
    """A covariance multiplier: a finite number > 0, or ``"dev"`` (chosen on the dev split) when
    ``allow_dev``; else a ValueError naming ``method``."""
    if allow_dev and scale == "dev":
        return
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"{method}: scale must be a number > 0{' or dev (chosen on the dev split)' if allow_dev else ''}"
                         f", got {scale!r}")


@dataclass
class ProjectedMAP:
    """A MAP in the LoRA-XS space (B-LoRA-XS): the r×r cores (and head) fine-tuned between the
    frozen truncated-SVD factors of the base weights. The projected Laplace, SWAG and VI fit
    around it.

    Attributes
    ----------
    space: the projected space (its SVD factors).
    core: the MAP latent ŵ [d] in ``space``.
    seconds: the fine-tuning time (reported in the methods' statistics).
    """

    space: ProjectedSpace
    core: Tensor
    seconds: float = 0.0


#: Adam learning rate of the LoRA-XS cores (chosen on the SST-2 dev split; docs/tuning.md)
PROJECTED_LR = 2e-2


def fit_projected_map(
    fm: FunctionalModel,
    train: EncodedTask,
    config: TrainConfig | None = None,
    *,
    space: ProjectedSpace | None = None,
    lr: float = PROJECTED_LR,
    rank: int | None = None,
    progress: bool = False,
    checkpoint: LoopCheckpoint | None = None,
) -> ProjectedMAP:
    """Fine-tune the LoRA-XS cores (and head) of ``fm`` on ``train``: ``config``'s schedule and
    seed with learning rate ``lr`` (the cores' own), starting from zero cores. ``rank``: the
    cores' rank k (default: the LoRA rank of ``fm``); ignored when ``space`` is given.

    >>> pm = fit_projected_map(fm, train, rank=25)           # doctest: +SKIP
    >>> ctx = FitContext(fm, train, projected=pm)            # doctest: +SKIP
    """
    space = space if space is not None else ProjectedSpace(fm.model, fm.layout, rank=rank)
    cfg = replace(config if config is not None else TrainConfig(), lr=lr)
    res = fine_tune(fm.with_layout(space.layout), space, train, cfg, progress=progress, checkpoint=checkpoint)
    return ProjectedMAP(space, res.latent, res.seconds)


@dataclass
class FitContext:
    """What a backend fits from: the model and training task, and the results of earlier stages
    given explicitly. A backend never trains what it needs and was not given (it refuses, naming
    the call that makes it).

    Attributes
    ----------
    fm: the functional peft model (frozen base, θ layout).
    train: the training task.
    anchors: independently fine-tuned optima θ^(m) [M, D] in the full LoRA space (or None).
    curve: a trained Bézier curve through the anchors (``lora.curve_train.train_curve``), what the
        curve posterior samples along (None: the curve posterior refuses to fit).
    projected: the LoRA-XS MAP (:func:`fit_projected_map` or :meth:`fit_projected_map`) the
        projected Laplace / SWAG / VI fit around (None: they refuse).
    train_config: the training schedule of loops a backend runs itself (SWAG's collection, a
        fresh MAP) and of :meth:`fit_projected_map`.
    projected_lr: learning rate of the LoRA-XS cores (SWAG's projected collection,
        :meth:`fit_projected_map`).
    projected_rank: the LoRA-XS cores' rank k of :meth:`projected_space` and
        :meth:`fit_projected_map` (None: the LoRA rank of ``fm``; B-LoRA-XS uses k up to ~25).
    seed: the run's seed.
    progress: show tqdm bars.
    checkpointer: ``name -> LoopCheckpoint | None``; long training loops inside a fit (SWAG's
        collection) checkpoint through it and resume from it (the runner sets it).
    dev: held-out labelled examples of the task (its dev split, never the test set) on which a
        method chooses a scale (:attr:`Needs.DEV`; None: such a method refuses).
    """

    fm: FunctionalModel
    train: EncodedTask
    anchors: Tensor | None = None
    curve: Any = None
    projected: ProjectedMAP | None = None
    train_config: TrainConfig = field(default_factory=TrainConfig)
    projected_lr: float = PROJECTED_LR
    projected_rank: int | None = None
    seed: int = 0
    progress: bool = False
    metadata: dict = field(default_factory=dict)
    checkpointer: Callable[[str], LoopCheckpoint | None] | None = None
    dev: EncodedTask | None = None
    _memo: dict = field(default_factory=dict, init=False, repr=False)

    def checkpoint(self, name: str) -> LoopCheckpoint | None:
        """The checkpoint of the named training loop, or None when the caller keeps none."""
        return self.checkpointer(name) if self.checkpointer is not None else None

    def memo(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """``build()`` computed once per key: for pure functions of the context (SVD factors, a
        curve's logit grid) that several methods share — never for trained state, which is given
        explicitly (``anchors``, ``curve``, ``projected``)."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def require_dev(self, what: str) -> EncodedTask:
        """The dev task, or a ValueError saying that ``what`` needs one."""
        if self.dev is None or len(self.dev) == 0:
            raise ValueError(f"{what} chooses its value on held-out data: give the context a dev task "
                             "(FitContext(..., dev=encode(task_dev, tokenizer))); the runner loads the task's "
                             "dev split")
        return self.dev

    def require_anchors(self, k: int = 1) -> Tensor:
        if self.anchors is None or self.anchors.shape[0] < k:
            have = 0 if self.anchors is None else self.anchors.shape[0]
            raise ValueError(f"this method needs at least {k} fine-tuned anchors, the context has {have}")
        return self.anchors

    def require_projected(self) -> ProjectedMAP:
        """The LoRA-XS MAP, or a ValueError naming how to make one."""
        if self.projected is None:
            raise ValueError(
                "this method fits around the LoRA-XS MAP core and the FitContext has none: call "
                "ctx.fit_projected_map() first (it fine-tunes the r×r cores with ctx.train_config and "
                "lr = ctx.projected_lr), or pass FitContext(projected=bayes_lora.fit_projected_map(fm, train))")
        return self.projected

    def fit_projected_map(self) -> ProjectedMAP:
        """Fine-tune the LoRA-XS MAP (:func:`fit_projected_map`, seeded by ``seed``) into
        ``projected`` and return it."""
        cfg = replace(self.train_config, seed=self.seed)
        self.projected = fit_projected_map(self.fm, self.train, cfg, space=self.projected_space(),
                                           lr=self.projected_lr, progress=self.progress,
                                           checkpoint=self.checkpoint(Needs.PROJECTED_MAP.value))
        return self.projected

    def projected_space(self) -> ProjectedSpace:
        """The LoRA-XS space of the model: the given MAP's, else the truncated SVD computed once."""
        if self.projected is not None:
            return self.projected.space
        rank = self.projected_rank
        return self.memo(("projected_space", rank),
                         lambda: ProjectedSpace(self.fm.model, self.fm.layout, rank=rank))

    def adapter_space(self, anchor: int = 0) -> ProjectedSpace:
        """The r×r-core space through anchor ``anchor`` (SVD of its update), computed once."""
        theta = self.require_anchors(anchor + 1)[anchor]
        return self.memo(("adapter_space", anchor),
                         lambda: ProjectedSpace(self.fm.model, self.fm.layout, around=theta))


def space_state(space: ParameterSpace) -> tuple[dict[str, Tensor], dict]:
    """Tensors and JSON from which :func:`space_from_state` rebuilds a full, subnetwork,
    projected (LoRA-XS) or adapter space. A subnetwork's base θ and free coordinates are saved;
    so are the SVD factors of a core space: a core latent means nothing under other singular
    vector signs (another LAPACK may flip them), and an adapter space's factors come from θ̂."""
    if isinstance(space, FullSpace):
        return {}, {"space": SpaceKind.FULL.value}
    if isinstance(space, MaskedSpace):
        return {"space.base": space.base, "space.index": space.index}, {"space": SpaceKind.SUBNETWORK.value}
    if isinstance(space, ProjectedSpace):
        tensors = {f"space.{k}": v for k, v in space.state_dict().items()}
        return tensors, {"space": space.kind, "include_other": space.include_other}
    raise TypeError(f"cannot save a {type(space).__name__}: only full, subnetwork, projected and adapter spaces")


def space_from_state(
    fm: FunctionalModel, tensors: Mapping[str, Tensor], meta: Mapping, ctx: FitContext | None = None
) -> ParameterSpace:
    """The space saved by :func:`space_state`. A projected space saved without its factors (older
    files) is recomputed from the frozen base weights (or taken from ``ctx``)."""
    kind = SpaceKind(meta["space"])
    if kind is SpaceKind.FULL:
        return FullSpace(fm.layout)
    if kind is SpaceKind.SUBNETWORK:
        return MaskedSpace(fm.layout, tensors["space.base"], tensors["space.index"])
    include_other = meta.get("include_other", True)
    saved = {k[len("space."):]: v for k, v in tensors.items() if k.startswith("space.")}
    if not saved:
        if kind is SpaceKind.ADAPTER:
            raise ValueError("a saved adapter space needs its SVD factors (space.* tensors), none were saved")
        if ctx is not None and ctx.fm is fm and include_other:
            return ctx.projected_space()
    space = ProjectedSpace(fm.model, fm.layout, include_other=include_other)
    if saved:
        space.load_state_dict(saved)
    space.source = "update" if kind is SpaceKind.ADAPTER else "weight"
    return space


#: ``scale="dev"`` of the sampled Gaussians (SWAG, VI): the candidate multipliers of the covariance.
#: 1/64 is within 1/8 of a standard deviation of the Gaussian's mean, so a spread that harms on
#: held-out data can shrink nearly away; 2 widens it (Maddox et al. 2019 sample SWAG at 0.5).
DEV_SCALE_GRID = (1 / 64, 1 / 16, 1 / 4, 1 / 2, 1.0, 2.0)

#: predictive samples per candidate of a choice on the dev split (the same seed for every
#: candidate: common random numbers, so candidates differ by their scale, not by their noise)
DEV_SAMPLES = 8


def predictive_nll(probs: Tensor, labels: Tensor) -> float:
    """NLL of the predictive (the mean over samples of ``probs`` [S, N, C], or [N, C]) at ``labels``."""
    p = probs.mean(0) if probs.dim() == 3 else probs
    return float(-p.gather(-1, labels.long().to(p.device)[:, None]).clamp_min(1e-12).log().mean())


def choose_on_dev(candidates, grid, dev: EncodedTask, *, parameter: str, prefer_low: bool,
                  reference: float | None = None, reference_name: str = "", nlls=None,
                  num_samples: int = DEV_SAMPLES, seed: int = 0, batch_size: int = 64) -> tuple[int, dict]:
    """The candidate posterior (one per value of ``grid``) of lowest NLL on ``dev``, and the record
    of the choice: ``parameter``, ``grid``, ``dev_nll`` of each, ``chosen`` (index ``index``), the
    value without the dev split (``reference``, ``reference_name``), ``examples``, ``seconds``. Each is evaluated with ``num_samples`` draws seeded by ``seed``
    (``nlls``: NLLs the caller computed itself). A tie goes to the smaller value of ``grid`` when
    ``prefer_low`` (a narrower posterior), else to the larger (a larger prior precision)."""
    t0 = time.perf_counter()
    if nlls is None:
        nlls = [predictive_nll(c.predict(dev, num_samples=num_samples, seed=seed, batch_size=batch_size).probs,
                               dev.labels) for c in candidates]
    best = min(range(len(grid)), key=lambda i: (nlls[i], grid[i] if prefer_low else -grid[i]))
    # the record every backend stores in ``info.stats["dev_choice"]`` (results.json and the report read it)
    return best, {"parameter": parameter, "grid": [float(g) for g in grid], "dev_nll": [float(v) for v in nlls],
                  "chosen": float(grid[best]), "index": int(best),
                  "reference": None if reference is None else float(reference), "reference_name": reference_name,
                  "examples": len(dev), "seconds": time.perf_counter() - t0}


@torch.no_grad()
def predict_probs(
    fm: FunctionalModel,
    task: EncodedTask,
    thetas: Tensor,
    *,
    batch_size: int = 64,
    fold_samples: bool | None = None,
    max_rows: int = 512,
) -> Tensor:
    """Probabilities [S, N, C] of every θ in ``thetas`` [S, D] on every example of ``task``.

    The examples are visited in batches of similar length (:func:`~bayes_lora.types.over_batches`)
    and returned in task order.

    With ``fold_samples`` up to ``max_rows // batch`` samples share one forward pass: the batch
    is repeated per sample and each sample's adapters act on its own rows
    (:mod:`bayes_lora.lora.batched`); otherwise one forward pass per θ. Both give the same numbers
    (to float rounding). The default folds on a GPU and loops on a CPU: on CPU the frozen base's
    matrix products dominate either way and folding is slower (docs/performance.md, measured by
    ``benchmarks/perf.py``), while on a GPU one large pass replaces S small, launch-bound ones.
    """
    from ..lora.batched import can_fold, folded_class_logits

    if fold_samples is None:
        fold_samples = _on_gpu(fm) and can_fold(fm)
    fold = fold_samples and thetas.shape[0] > 1

    def probs(batch) -> Tensor:  # [S, B, C]
        if fold:
            k = max(1, max_rows // max(1, batch["labels"].shape[0]))
            return torch.cat([folded_class_logits(fm, task, batch, thetas[i:i + k])
                              for i in range(0, thetas.shape[0], k)]).softmax(-1)
        return torch.stack([task.class_logits(fm.forward_at(th), batch).softmax(-1) for th in thetas])

    return over_batches(task, batch_size, probs, dim=1)


def _on_gpu(fm: FunctionalModel) -> bool:
    return fm.device.type == "cuda"


class Posterior:
    """Base class of every fitted posterior. Subclasses set ``method`` and implement
    :meth:`sample_thetas` (and override :meth:`predict` when prediction is not "evaluate θ").

    Attributes
    ----------
    fm: the functional model the posterior predicts with.
    options: the options it was fitted with (JSON-able).
    info: fit time, losses, and the method's own statistics.

    **Draws, chains and InferenceData.** What
    :func:`~bayes_lora.experiment.evaluate.posterior_idata` needs to give every ArviZ group the
    same ``(chain, draw)``; a new posterior (e.g. a user-written Pyro model) implements it too:

    * ``num_chains: int`` (default 1): the chains its draws come in.
    * ``thinned(max_draws: int) -> Posterior``: a posterior whose draws are at most ``max_draws``
      of this one's, kept chain by chain: ``num_chains`` × k draws in chain-major order, with
      ``default_num_samples`` = ``num_chains`` × k, such that ``predict(task, num_samples=None
      or num_chains*k, seed=any)`` and ``latent_samples(num_chains*k, seed=any)`` return exactly
      those draws in that order (and :attr:`sample_stats` their per-draw statistics). The default
      returns ``self``: an i.i.d. sampled approximation (one chain), for which ``predict`` and
      ``latent_samples`` with the same ``(n, seed)`` give the same draws — the InferenceData
      then uses the evaluation's own number of samples and seed.
    * ``predicts_at_latents: bool`` (default True): whether draw s of ``predict`` is the model
      at draw s of ``latent_samples``. False for a predictive that is not an average over latent
      draws (Laplace's GLM predictive); the InferenceData then has no ``posterior`` group.
    * ``sample_stats``: per-draw sampler statistics (``diverging``, ``energy``, ``n_steps``, ...),
      each [num_chains, draws] for the draws of ``latent_samples(num_chains * draws)``; empty
      for sampled approximations.
    * ``temperature: float``: the likelihood temperature T the posterior was fitted with
      (log-likelihood divided by T; default ``options["temperature"]``, else 1).
    * ``likelihood_rows(train, *, seed) -> Tensor | None``: the rows of the training task the
      likelihood conditioned on (None: all of them; ``seed`` is the fit's, ``FitContext.seed``,
      for a likelihood on a seeded subset).
    """

    method: ClassVar[str] = "posterior"
    #: how many samples ``predict`` uses when ``num_samples`` is None
    default_num_samples: int = 16
    #: number of distinct atoms of a finite posterior (MAP: 1, ensemble: M); None = continuous.
    #: Evaluations never draw more samples than this (more would repeat the same predictions).
    num_atoms: int | None = None
    #: the chains the draws come in (sampled approximations: one)
    num_chains: int = 1
    #: whether draw s of ``predict`` is the model at draw s of ``latent_samples``
    predicts_at_latents: bool = True
    #: per-draw sampler statistics, each [num_chains, draws] (none for sampled approximations)
    sample_stats: Mapping[str, Any] = MappingProxyType({})

    def __init__(self, fm: FunctionalModel, options: Mapping[str, Any] | None = None, info: FitInfo | None = None):
        self.fm = fm
        self.options = dict(options or {})
        self.info = info or FitInfo()

    def covariance_spectrum(self) -> dict[str, Any] | None:
        """For a Gaussian posterior with a covariance of its own: how its variance spreads over
        directions (``eigenvalues``: the largest, descending; ``trace``; ``dim``; ``exact``).
        ``None`` for the others (the default)."""
        return None

    # --- draws for InferenceData -----------------------------------------------------------
    def thinned(self, max_draws: int) -> Posterior:
        """At most ``max_draws`` of the draws, chain by chain (see the class doc). A sampled
        approximation draws i.i.d. samples on demand: it is its own thinning."""
        if isinstance(max_draws, bool) or int(max_draws) < 1:
            raise ValueError(f"max_draws must be ≥ 1, got {max_draws!r}")
        return self

    @property
    def temperature(self) -> float:
        """The likelihood temperature T of the fit (log-likelihood / T); 1 when it has none."""
        return float(self.__dict__.get("_temperature", self.options.get("temperature", 1.0)))

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = float(value)

    def likelihood_rows(self, train: EncodedTask, *, seed: int = 0) -> Tensor | None:
        """The rows of ``train`` the likelihood conditioned on; None: all of them."""
        return None

    # --- sampling -------------------------------------------------------------------------
    def sample_thetas(self, n: int, *, seed: int = 0) -> Tensor:
        """``n`` LoRA vectors θ_s [n, D] drawn with ``seed`` (same seed → same draws)."""
        raise NotImplementedError(f"{self.method} does not draw LoRA vectors")

    def latent_samples(self, n: int, *, seed: int = 0) -> dict[str, Tensor]:
        """Named draws of the method's latents, each [n, ...] (for ArviZ's posterior group)."""
        return {}

    # --- prediction -----------------------------------------------------------------------
    def predict(
        self, task: EncodedTask, *, num_samples: int | None = None, seed: int = 0, batch_size: int = 64
    ) -> Prediction:
        """Per-sample predictive probabilities [S, N, C] on ``task`` (with its labels)."""
        thetas = self.sample_thetas(self._n(num_samples), seed=seed)
        return Prediction(predict_probs(self.fm, task, thetas, batch_size=batch_size), task.labels)

    def _n(self, num_samples: int | None) -> int:
        n = self.default_num_samples if num_samples is None else int(num_samples)
        if n < 1:
            raise ValueError(f"num_samples must be ≥ 1, got {n}")
        return n

    # --- persistence ----------------------------------------------------------------------
    def state(self) -> tuple[dict[str, Tensor], dict]:
        """Tensors and JSON-able metadata from which :meth:`from_state` rebuilds the posterior."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, fm: FunctionalModel, tensors: dict[str, Tensor], meta: dict, ctx: FitContext | None = None) -> Posterior:
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """Write ``<path>/posterior.safetensors`` and ``<path>/posterior.json``."""
        path = Path(path)
        tensors, meta = self.state()
        meta = {
            "method": self.method,
            "options": self.options,
            "info": {"seconds": self.info.seconds, "losses": list(self.info.losses), "stats": _jsonable(self.info.stats)},
            "state": meta,
            "layout": self.fm.layout.to_json(),
        }
        save_tensors(path / "posterior.safetensors", tensors or {"_empty": torch.zeros(0)})
        atomic_write_json(path / "posterior.json", meta)
        return path

    def __repr__(self) -> str:
        return f"{type(self).__name__}(method={self.method!r}, options={self.options})"


def read_saved(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    path = Path(path)
    tensors, _ = load_tensors(path / "posterior.safetensors")
    meta = json.loads((path / "posterior.json").read_text())
    tensors.pop("_empty", None)
    return tensors, meta


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return obj
