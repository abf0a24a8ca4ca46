"""Write your own posterior: the frozen transformer as one likelihood call inside a Pyro model.

A user-written model is an ordinary Pyro model whose sample sites build the LoRA vector θ
through any subspace (a curve point φ(t), an offset P z, projected LoRA-XS cores, an affine
subspace, a masked subnetwork) and then call a :class:`LoRALikelihood` once::

    lik = LoRALikelihood(fm, train, temperature=20.0)

    def model():
        t = pyro.sample("t", dist.Beta(2.0, 2.0))
        lik(curve(t))                       # y_i ~ Categorical(f(x_i; θ)), each log p / T

Fit it with Pyro's own NUTS / HMC / SVI and wrap the result in
:class:`~bayes_lora.inference.PyroPosterior`, which keeps every sample site and predicts, saves
and converts to ArviZ like the built-in methods.

The likelihood applies the frozen-prefix cache itself: when the adapters sit on the top layers
only, the hidden states below the first adapted layer are computed once for the likelihood's
examples, and every evaluation of θ runs the adapted layers alone (the same numbers, several
times faster).

To turn a sample of the latents back into θ (for prediction) the model is replayed with the
latents fixed and the likelihood in *capture* mode: the call records θ and stops the model
there, so no transformer runs (:meth:`LoRALikelihood.theta_of`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

from ..lora.params import FunctionalModel
from ..lora.rng import seeded
from ..types import EncodedTask
from .likelihood import TaskLogits


class _Captured(Exception):
    """Raised by a likelihood in capture mode: carries θ out of the model and stops it."""

    def __init__(self, theta: Tensor):
        super().__init__("θ captured")
        self.theta = theta


class LoRALikelihood(TaskLogits):
    """``y_i ~ Categorical(logits = f(x_i; θ))`` for the examples of a task, as one call.

    Parameters
    ----------
    fm: the functional model (a peft LoRA model evaluated at any θ).
    task: the training task the posterior conditions on.
    temperature: T > 0; every log-likelihood term is divided by T (T > 1 widens the posterior).
    examples: keep only this many examples (a seeded subset; None: all). The same subset is
        what an InferenceData's ``log_likelihood`` group is computed on.
    subsample_size: minibatch size of the data plate for SVI (None: the full data, as NUTS needs).
    seed: seed of the example subset.
    batch_size: examples per forward pass.
    prefix_cache: cache the frozen layers below the first adapted one (see the module doc);
        switched off with a logged reason when the model does not allow it.
    name: the observed site's name (the plate is ``f"{name}_data"``).
    """

    def __init__(self, fm: FunctionalModel, task: EncodedTask, *, temperature: float = 1.0,
                 examples: int | None = None, subsample_size: int | None = None, seed: int = 0,
                 batch_size: int = 128, prefix_cache: bool = True, name: str = "obs"):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if subsample_size is not None and subsample_size < 1:
            raise ValueError(f"subsample_size must be ≥ 1, got {subsample_size}")
        super().__init__(fm, task, batch_size=batch_size, examples=examples, seed=seed)
        self.full_fm = self.fm  # the model as given (predicts tasks that are not cached)
        if prefix_cache:
            from ..lora.prefix import CachedTask, with_prefix_cache

            if not isinstance(self.task, CachedTask):  # a cached task comes with its suffix model already
                self.fm, self.task = with_prefix_cache(self.fm, self.task)
        self.temperature = float(temperature)
        self.subsample_size = subsample_size
        self.name = name
        self._capture = False

    # --- the data (num_examples, labels, logits: TaskLogits) ---------------------------------
    @property
    def dim(self) -> int:
        """D, the length of the LoRA vector θ the likelihood takes."""
        return int(self.fm.layout.dim)

    def log_likelihood(self, theta: Tensor) -> Tensor:
        """log p(y_i | x_i, θ) of every example [n], untempered (no gradient)."""
        with torch.no_grad():
            logits = self.logits(theta)
        return torch.distributions.Categorical(logits=logits).log_prob(self.labels)

    # --- inside a Pyro model ----------------------------------------------------------------
    def __call__(self, theta: Tensor) -> Tensor | None:
        """Observe the labels at θ [D] inside a Pyro model; returns the logits of the plate's
        examples. In capture mode (:meth:`theta_of`) records θ and stops the model instead."""
        if self._capture:
            raise _Captured(theta)
        if theta.dim() != 1 or theta.shape[0] != self.dim:
            raise ValueError(f"the likelihood takes one LoRA vector θ of length {self.dim}, got shape "
                             f"{tuple(theta.shape)} (vectorised sample sites are not supported: no "
                             "enumeration or vectorize_particles)")
        n = self.num_examples
        with pyro.plate(f"{self.name}_data", n, subsample_size=self.subsample_size) as idx:
            full = self.subsample_size is None or self.subsample_size >= n
            logits = self.logits(theta, None if full else idx)
            with pyro.poutine.scale(scale=1.0 / self.temperature):
                pyro.sample(self.name, dist.Categorical(logits=logits), obs=self.labels[idx])
        return logits

    @contextlib.contextmanager
    def capturing(self):
        """Within the block, calling the likelihood records θ and stops the model."""
        old, self._capture = self._capture, True
        try:
            yield
        finally:
            self._capture = old

    @torch.no_grad()
    def theta_of(self, model: Callable, values: Mapping[str, Tensor], *args, **kwargs) -> Tensor:
        """θ [D] the model builds when its sample sites take ``values`` (every latent site must
        be given; nothing else is sampled and no transformer runs)."""
        missing: list[str] = []

        def check(msg):  # a latent site the values do not fix would be drawn at random
            if msg["type"] == "sample" and not msg["is_observed"] and msg["name"] not in values:
                missing.append(msg["name"])

        with self.capturing(), pyro.poutine.block(), _Inspect(check):
            try:
                pyro.poutine.condition(model, data=dict(values))(*args, **kwargs)
            except _Captured as c:
                if missing:
                    raise ValueError(f"no value given for the latent site(s) {missing} of the model") from None
                return c.theta.detach()
        raise ValueError("the model never called its LoRALikelihood: nothing to build θ from")


class _Inspect(pyro.poutine.messenger.Messenger):
    """Calls ``fn(msg)`` on every message after the handlers below it have processed it."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def _postprocess_message(self, msg):
        self.fn(msg)


def model_sites(model: Callable, lik: LoRALikelihood, *args, **kwargs) -> dict[str, dict]:
    """The latent sample sites of a model (name → Pyro trace node), found by one prior draw
    with the likelihood captured (no transformer runs). The caller's RNG state is kept."""
    with seeded(0), lik.capturing(), pyro.poutine.block():
        tr = pyro.poutine.trace(model)
        try:
            tr(*args, **kwargs)
        except _Captured:
            pass
        else:
            raise ValueError("the model never called its LoRALikelihood")
    return {n: s for n, s in tr.trace.nodes.items() if s["type"] == "sample" and not s["is_observed"]}


__all__ = ["LoRALikelihood", "model_sites"]
