"""Posteriors of user-written Pyro models over LoRA subspaces.

Write an ordinary Pyro model whose sample sites build θ and that calls a
:class:`~bayes_lora.models.LoRALikelihood` once (see :mod:`bayes_lora.models.user`), then

* :func:`mcmc` — Pyro's NUTS or HMC, chains one after another, each seeded;
* :meth:`PyroPosterior.from_mcmc` — wrap a ``pyro.infer.MCMC`` you ran yourself;
* :meth:`PyroPosterior.from_guide` — draws of a fitted guide (any autoguide, after your own SVI);
* :func:`fit_pyro` — the same from a config: ``method = "pyro"``, ``model = "module:function"``;
* :func:`cached_t_posterior` — the fast path for models whose θ depends on one latent ``t`` in
  [0, 1] alone (a curve position): the logits are cached at knots of t and NUTS / SVI run in
  NumPyro on the interpolated potential, under the prior *the model declares* (Uniform(0, 1) or
  Beta(a, b)); any other model or prior is refused with the reason, never replaced.

The result keeps every latent sample site ([chains, draws, ...] each), predicts by rebuilding θ
from a draw (the model replayed with the latents fixed; no transformer runs for that), saves the
draws and the θ of up to :data:`SAVED_THETAS` of them, and converts to ArviZ like the built-ins.
Fits leave the caller's torch / numpy / random RNG state and Pyro param store as they were.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ..lora.rng import seeded
from ..models.user import LoRALikelihood, model_sites
from ..types import FitInfo
from .base import Needs, Posterior
from .registry import register

#: θ of this many (thinned) draws are saved with a posterior, so it predicts without its model.
SAVED_THETAS = 64
#: how a config fits a user-written model (``fit_pyro``)
PYRO_INFERENCE = ("nuts", "hmc", "cached_nuts", "cached_svi")


class PyroPosterior(Posterior):
    """Draws of every latent site of a user-written Pyro model.

    Parameters
    ----------
    likelihood: the model's :class:`LoRALikelihood` (its ``fm`` predicts).
    samples: site name → draws [chains, draws, ...] (the same chains and draws for every site).
    model: the Pyro model (None after loading: only the saved θ then predict).
    model_args: arguments the model is called with.
    thetas: θ of the draws at ``theta_index`` (flat chain-major positions), when the model
        cannot rebuild them.
    sample_stats: per-draw sampler statistics [chains, draws] (e.g. ``diverging``).
    """

    method = "pyro"

    def __init__(self, likelihood: LoRALikelihood | None, samples: Mapping[str, Tensor], *,
                 model: Callable | None = None, model_args: tuple = (), fm=None,
                 thetas: Tensor | None = None, theta_index: Tensor | None = None,
                 sample_stats: Mapping[str, Tensor] | None = None, temperature: float | None = None,
                 rows: Tensor | None = None, options=None, info=None):
        fm = fm if fm is not None else likelihood.full_fm
        super().__init__(fm, options=options, info=info)
        if not samples:
            raise ValueError("a Pyro posterior needs the draws of at least one latent site")
        shapes = {k: tuple(v.shape[:2]) for k, v in samples.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"every site needs the same [chains, draws], got {shapes}")
        self.samples = {k: v.detach() for k, v in samples.items()}
        self.num_chains, self.draws_per_chain = next(iter(shapes.values()))
        self.likelihood, self.model, self.model_args = likelihood, model, tuple(model_args)
        self.temperature = float(temperature if temperature is not None else
                                 (likelihood.temperature if likelihood is not None else 1.0))
        self.sample_stats = {k: torch.as_tensor(v) for k, v in (sample_stats or {}).items()}
        if rows is None and likelihood is not None:
            rows = likelihood.rows
        self._rows = rows
        if model is None and thetas is None:
            raise ValueError("give the model (to rebuild θ from a draw) or the θ of the draws")
        self._thetas = None if thetas is None else (thetas.detach(), theta_index.long())
        self.default_num_samples = min(32, self.num_draws)

    @property
    def num_draws(self) -> int:
        return self.num_chains * self.draws_per_chain

    @property
    def site_names(self) -> list[str]:
        return list(self.samples)

    # --- which draws ---------------------------------------------------------------------------
    def _available(self) -> Tensor:
        """Flat chain-major positions of the draws θ can be produced for."""
        if self.model is not None or self._thetas is None:
            return torch.arange(self.num_draws)
        return self._thetas[1]

    def _index(self, n: int, seed: int) -> Tensor:
        """n draws: all of them in order when n ≥ their number (repeated), else systematic
        thinning of the chain-major sequence with a seeded offset (each chain gets its share)."""
        avail = self._available()
        total = avail.numel()
        if n >= total:
            return avail[torch.arange(n) % total]
        u = float(torch.rand(1, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64))
        pos = ((torch.arange(n, dtype=torch.float64) + u) * (total / n)).long().clamp_max(total - 1)
        return avail[pos]

    def _flat(self, name: str) -> Tensor:
        v = self.samples[name]
        return v.reshape(self.num_draws, *v.shape[2:])

    def latent_samples(self, n: int | None = None, *, seed: int = 0) -> dict[str, Tensor]:
        """Every site's draws: [chains, draws, ...] (n None) or n selected draws [n, ...]."""
        if n is None:
            return dict(self.samples)
        idx = self._index(n, seed)
        return {k: self._flat(k)[idx] for k in self.samples}

    @torch.no_grad()
    def thetas_at(self, index: Tensor) -> Tensor:
        """θ [len(index), D] of the draws at flat positions ``index``."""
        if self.model is not None and self.likelihood is not None:
            return torch.stack([self.likelihood.theta_of(self.model, {k: self._flat(k)[i] for k in self.samples},
                                                         *self.model_args) for i in index.tolist()])
        thetas, where = self._thetas
        lookup = {int(p): j for j, p in enumerate(where.tolist())}
        missing = [int(i) for i in index.tolist() if int(i) not in lookup]
        if missing:
            raise ValueError(f"θ of draw(s) {missing[:5]} were not saved and the model is not available")
        return thetas[torch.tensor([lookup[int(i)] for i in index.tolist()])]

    def sample_thetas(self, n: int, *, seed: int = 0) -> Tensor:
        return self.thetas_at(self._index(n, seed))

    def thinned(self, max_draws: int) -> PyroPosterior:
        """At most ``max_draws`` draws, evenly thinned chain by chain (chain-major)."""
        if max_draws < 1:
            raise ValueError(f"max_draws must be ≥ 1, got {max_draws}")
        if self.model is None:  # only the saved draws can predict: one chain of them
            idx = self._index(min(max_draws, self._available().numel()), 0)
            return self._select(idx.reshape(1, -1))
        k = max(1, min(self.draws_per_chain, max_draws // self.num_chains))
        per = torch.linspace(0, self.draws_per_chain - 1, k).round().long()
        idx = (torch.arange(self.num_chains)[:, None] * self.draws_per_chain + per[None]).reshape(self.num_chains, k)
        return self._select(idx)

    def _select(self, idx: Tensor) -> PyroPosterior:
        """A posterior of the draws at flat positions ``idx`` [chains, k]."""
        flat = idx.reshape(-1)
        samples = {k: self._flat(k)[flat].reshape(*idx.shape, *self.samples[k].shape[2:]) for k in self.samples}
        stats = {k: v.reshape(-1)[flat].reshape(idx.shape) for k, v in self.sample_stats.items()
                 if v.shape == (self.num_chains, self.draws_per_chain)}
        thetas = index = None
        if self.model is None:
            thetas, index = self.thetas_at(flat), torch.arange(flat.numel())
        out = PyroPosterior(self.likelihood, samples, model=self.model, model_args=self.model_args, fm=self.fm,
                            thetas=thetas, theta_index=index, sample_stats=stats, temperature=self.temperature,
                            rows=self._rows, options=self.options, info=self.info)
        out.default_num_samples = out.num_draws  # predict() without a count: exactly these draws
        return out

    def likelihood_rows(self, train=None, *, seed: int = 0) -> Tensor | None:
        """The training rows the likelihood conditioned on (its seeded subset), None for all."""
        return self._rows

    # --- persistence -----------------------------------------------------------------------
    def state(self):
        keep = self._index(min(SAVED_THETAS, self._available().numel()), 0)
        tensors = {f"site.{k}": v for k, v in self.samples.items()}
        tensors.update({f"stat.{k}": v for k, v in self.sample_stats.items()})
        tensors["thetas"] = self.thetas_at(keep)
        tensors["theta_index"] = keep
        if self._rows is not None:
            tensors["likelihood_rows"] = self._rows
        meta = {"sites": self.site_names, "temperature": self.temperature,
                "chains": self.num_chains, "draws": self.draws_per_chain}
        if getattr(self, "factory", None):
            meta["factory"] = self.factory
        return tensors, meta

    @classmethod
    def from_state(cls, fm, tensors, meta, ctx=None, *, model=None, likelihood=None, model_args=()):
        """Rebuild a saved posterior; without ``model`` it predicts from the saved θ alone. A
        posterior fitted from a config (``meta["factory"]``) rebuilds its model from the factory
        and ``ctx``, so every draw predicts again."""
        if model is None and ctx is not None and meta.get("factory"):
            model, likelihood = _import_factory(meta["factory"])(ctx)
        samples = {k: tensors[f"site.{k}"] for k in meta["sites"]}
        stats = {k[len("stat."):]: v for k, v in tensors.items() if k.startswith("stat.")}
        post = cls(likelihood, samples, model=model, model_args=model_args, fm=fm,
                   thetas=tensors["thetas"], theta_index=tensors["theta_index"], sample_stats=stats,
                   temperature=meta.get("temperature", 1.0), rows=tensors.get("likelihood_rows"))
        post.factory = meta.get("factory")
        return post

    # --- from Pyro's results ----------------------------------------------------------------
    @classmethod
    def from_mcmc(cls, mcmc, model: Callable, likelihood: LoRALikelihood, *model_args, **kw) -> PyroPosterior:
        """Wrap a finished ``pyro.infer.MCMC`` run (every latent site, grouped by chain)."""
        samples = mcmc.get_samples(group_by_chain=True)
        chains, draws = next(iter(samples.values())).shape[:2]
        stats = {}
        div = mcmc.diagnostics().get("divergences", {})
        if div:
            mask = torch.zeros(chains, draws, dtype=torch.bool)
            for c in range(chains):
                for i in div.get(f"chain {c}", []):
                    mask[c, min(int(i), draws - 1)] = True
            stats["diverging"] = mask
        return cls(likelihood, samples, model=model, model_args=model_args, sample_stats=stats, **kw)

    @classmethod
    @torch.no_grad()
    def from_guide(cls, guide: Callable, model: Callable, likelihood: LoRALikelihood, *model_args,
                   num_samples: int = 200, seed: int = 0, **kw) -> PyroPosterior:
        """``num_samples`` draws of every latent site from a fitted guide (one chain)."""
        import pyro

        names = list(model_sites(model, likelihood, *model_args))
        draws: dict[str, list[Tensor]] = {k: [] for k in names}
        with seeded(seed):
            for _ in range(int(num_samples)):
                tr = pyro.poutine.trace(guide).get_trace(*model_args)
                for k in names:
                    if k not in tr.nodes:
                        raise ValueError(f"the guide has no site {k!r} of the model")
                    draws[k].append(tr.nodes[k]["value"].detach())
        samples = {k: torch.stack(v)[None] for k, v in draws.items()}
        return cls(likelihood, samples, model=model, model_args=model_args, **kw)


def run_chains(model: Callable, *model_args, kernel: str = "nuts", num_samples: int = 200, warmup: int = 100,
               num_chains: int = 2, seed: int = 0, max_tree_depth: int = 6, init_strategy: Callable | None = None,
               **kernel_kw) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Pyro's NUTS (or HMC) on ``model``, ``num_chains`` chains one after another (a torch model
    does not fork well), chain c seeded with ``seed * 1000 + c`` in a scope that leaves the
    caller's RNG states and param store as they were.

    Returns every latent site's draws [chains, draws, ...] and the sampler statistics:
    ``diverging`` (a [chains, draws] bool mask), ``divergences`` (per chain), ``step_size`` and
    ``acceptance_rate`` (per chain), ``num_divergences`` and ``kernel``."""
    from pyro.infer import HMC, MCMC, NUTS
    from pyro.infer.autoguide.initialization import init_to_uniform

    if kernel not in ("nuts", "hmc"):
        raise ValueError(f"kernel must be 'nuts' or 'hmc', got {kernel!r}")
    per_chain: list[dict[str, Tensor]] = []
    diverging, steps, accept = [], [], []
    for c in range(num_chains):
        with seeded(seed * 1000 + c, pyro_params=True):
            kw = {"adapt_step_size": True, "init_strategy": init_strategy or init_to_uniform(radius=1.0),
                  "jit_compile": False, **kernel_kw}
            k = NUTS(model, max_tree_depth=max_tree_depth, **kw) if kernel == "nuts" else HMC(model, **kw)
            run = MCMC(k, num_samples=num_samples, warmup_steps=warmup, num_chains=1, disable_progbar=True)
            run.run(*model_args)
        per_chain.append({n: v.detach() for n, v in run.get_samples().items()})
        diag = run.diagnostics()
        flags = torch.zeros(num_samples, dtype=torch.bool)
        idx = diag.get("divergences", {}).get("chain 0", [])
        if len(idx):
            flags[torch.as_tensor(idx, dtype=torch.long).clamp_max(num_samples - 1)] = True
        diverging.append(flags)
        steps.append(float(k.step_size))
        accept.append(float(diag.get("acceptance rate", {}).get("chain 0", float("nan"))))
    samples = {n: torch.stack([s[n] for s in per_chain]) for n in per_chain[0]}
    div = torch.stack(diverging)
    return samples, {"diverging": div, "divergences": div.sum(1).tolist(), "num_divergences": int(div.sum()),
                     "step_size": steps, "acceptance_rate": accept, "kernel": kernel}


def mcmc(model: Callable, likelihood: LoRALikelihood, *model_args, kernel: str = "nuts", num_samples: int = 200,
         warmup: int = 100, num_chains: int = 2, seed: int = 0, max_tree_depth: int = 6,
         init_strategy: Callable | None = None, **kernel_kw) -> PyroPosterior:
    """Pyro's NUTS (or HMC) on a user model (:func:`run_chains`): every latent site kept."""
    start = time.perf_counter()
    samples, stats = run_chains(model, *model_args, kernel=kernel, num_samples=num_samples, warmup=warmup,
                                num_chains=num_chains, seed=seed, max_tree_depth=max_tree_depth,
                                init_strategy=init_strategy, **kernel_kw)
    div = stats.pop("diverging")
    info = FitInfo(time.perf_counter() - start, (), stats)
    options = {"kernel": kernel, "num_samples": num_samples, "warmup": warmup, "num_chains": num_chains,
               "seed": seed, "max_tree_depth": max_tree_depth}
    return PyroPosterior(likelihood, samples, model=model, model_args=model_args, sample_stats={"diverging": div},
                         options=options, info=info)


# --- the cached-logit fast path --------------------------------------------------------------
@torch.no_grad()
def cached_t_posterior(model: Callable, likelihood: LoRALikelihood, *model_args, knots: int = 33,
                       inference: str = "nuts", num_samples: int = 1000, warmup: int = 500, num_chains: int = 4,
                       seed: int = 0, max_tree_depth: int = 10, svi_steps: int = 2000, svi_lr: float = 0.05,
                       guide: str = "normal") -> PyroPosterior:
    """The posterior of a model whose one latent is a scalar ``t`` ∈ [0, 1] on which θ depends
    alone, by NUTS (or HMC / SVI) in NumPyro on logits cached at ``knots`` values of t.

    Refused, with the reason: more than one latent site, a non-scalar one, a likelihood that
    subsamples, or a prior other than Uniform(0, 1) / Beta(a, b). The interpolation error of
    the log-likelihood is measured at points between knots and kept in ``info.stats``.
    """
    from ..models.logit_grid import LogitGrid, numpyro_t_prior, run_numpyro_nuts, run_numpyro_svi

    sites = model_sites(model, likelihood, *model_args)
    if len(sites) != 1:
        raise ValueError(f"the cached-logit path needs θ to depend on one latent t alone; the model has "
                         f"{len(sites)} latent sites {sorted(sites)}: run NUTS on the model (bayes_lora.mcmc)")
    (name, site), = sites.items()
    if site["value"].numel() != 1:
        raise ValueError(f"the latent {name!r} has shape {tuple(site['value'].shape)}: the cached path covers one scalar")
    if likelihood.subsample_size is not None and likelihood.subsample_size < likelihood.num_examples:
        raise ValueError("the cached-logit path needs the full-data likelihood (subsample_size=None)")
    prior = numpyro_t_prior(site["fn"])
    start = time.perf_counter()
    shape = site["value"].shape

    def theta_at(t: Tensor) -> Tensor:
        return likelihood.theta_of(model, {name: t.reshape(shape)}, *model_args)

    grid = LogitGrid.tabulate(lambda t: likelihood.logits(theta_at(t)), knots, likelihood.labels,
                              likelihood.temperature, prior)
    losses: tuple = ()
    if inference in ("nuts", "hmc"):
        t, stats = run_numpyro_nuts(grid, num_samples=num_samples, warmup=warmup, num_chains=num_chains,
                                    seed=seed, max_tree_depth=max_tree_depth, kind=inference)
        sample_stats = {k: torch.tensor(stats[k]) for k in ("diverging", "energy", "n_steps")}
    elif inference == "svi":
        t, stats, losses = run_numpyro_svi(grid, steps=svi_steps, lr=svi_lr, num_samples=num_samples, seed=seed,
                                           guide=guide)
        losses, sample_stats = tuple(losses), {}
    else:
        raise ValueError(f"inference must be 'nuts', 'hmc' or 'svi', got {inference!r}")
    stats["logit_cache_seconds"] = grid.seconds
    stats["interpolation_check"] = grid.check(
        lambda ts: torch.stack([likelihood.log_likelihood(theta_at(t)).sum() for t in ts]) / likelihood.temperature)
    samples = {name: t.reshape(*t.shape, *shape)}
    options = {"inference": inference, "knots": knots, "num_samples": num_samples, "warmup": warmup,
               "num_chains": num_chains, "seed": seed, "prior": [prior[0], list(prior[1])]}
    return PyroPosterior(likelihood, samples, model=model, model_args=model_args, sample_stats=sample_stats,
                         options=options, info=FitInfo(time.perf_counter() - start, losses, stats))


def _import_factory(spec: str) -> Callable:
    """``"package.module:function"`` or ``"path/to/file.py:function"`` → the function."""
    import importlib
    import importlib.util
    from pathlib import Path

    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name:
        raise ValueError(f"model must be 'package.module:function' or 'file.py:function', got {spec!r}")
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file():
            raise ValueError(f"model {spec!r}: no file {path}")
        mod_spec = importlib.util.spec_from_file_location(f"bayes_lora_user_model_{path.stem}", path)
        module = importlib.util.module_from_spec(mod_spec)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"model {spec!r}: cannot import {where!r} ({e})") from None
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ValueError(f"model {spec!r}: {where!r} has no function {name!r}")  # noqa: TRY004 - a config error
    return fn


def fit_pyro(ctx, *, model: str, inference: str = "nuts", num_samples: int = 200, warmup: int = 100,
             num_chains: int = 2, max_tree_depth: int = 6, knots: int = 33) -> PyroPosterior:
    """A user-written model named in a config: ``model = "package.module:function"`` (or
    ``"file.py:function"``), where ``function(ctx)`` returns ``(pyro_model, likelihood)`` built from
    the run's :class:`~bayes_lora.inference.base.FitContext` (its model, training task, anchors and
    curve). ``inference``: "nuts" / "hmc" (:func:`mcmc`, Pyro on the model) or "cached_nuts" /
    "cached_svi" (:func:`cached_t_posterior`, for a model whose θ depends on t alone)."""
    built = _import_factory(model)(ctx)
    if not (isinstance(built, tuple) and len(built) == 2 and isinstance(built[1], LoRALikelihood)):
        raise ValueError(f"model {model!r} must return (pyro_model, LoRALikelihood), got {type(built).__name__}")
    pyro_model, lik = built
    if inference in ("nuts", "hmc"):
        post = mcmc(pyro_model, lik, kernel=inference, num_samples=num_samples, warmup=warmup,
                    num_chains=num_chains, seed=ctx.seed, max_tree_depth=max_tree_depth)
    else:
        post = cached_t_posterior(pyro_model, lik, knots=knots, inference=inference.removeprefix("cached_"),
                                  num_samples=num_samples, warmup=warmup, num_chains=num_chains, seed=ctx.seed,
                                  max_tree_depth=max_tree_depth)
    post.options = {**post.options, "model": model, "inference": inference}
    post.factory = model
    return post


def _factory_fingerprint(options) -> str:
    """The SHA-256 of the source file that defines the model factory: editing it refits."""
    import importlib.util
    from pathlib import Path

    from ..lora.io import file_digest

    where = str(options.get("model", "")).rpartition(":")[0]
    if where.endswith(".py"):
        path = Path(where).expanduser()
    else:
        try:
            found = importlib.util.find_spec(where) if where else None
        except (ImportError, ValueError):
            found = None
        path = Path(found.origin) if found is not None and found.origin else None
    return file_digest(path) if path is not None and path.is_file() else ""


register("pyro", PyroPosterior, doc="a user-written Pyro model over a LoRA subspace",
         choices={"inference": PYRO_INFERENCE}, needs=(Needs.ANCHORS, Needs.CURVE),
         fingerprint=_factory_fingerprint)(fit_pyro)


__all__ = ["SAVED_THETAS", "PyroPosterior", "cached_t_posterior", "mcmc"]
