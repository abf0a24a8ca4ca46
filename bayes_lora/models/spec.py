"""Declarative curve posteriors: one frozen spec, equally written as a plain dict / TOML table.

>>> spec = CurvePosteriorSpec(t_prior=Prior("beta", (2.0, 2.0)), offset=OffsetSpec(dim=4, scale=0.01))
>>> CurvePosteriorSpec.from_dict(spec.to_dict()) == spec
True
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch

T_PRIORS = {"uniform": 0, "beta": 2}
OFFSET_BASES = ("control_points", "random")
LIKELIHOODS = ("categorical",)


def _check_keys(cls, d: Mapping, where: str) -> None:
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")


@dataclass(frozen=True)
class Prior:
    """A prior on the curve position t ∈ [0, 1]: ``Prior("uniform")`` or ``Prior("beta", (a, b))``."""

    name: str = "uniform"
    params: tuple[float, ...] = ()

    def __post_init__(self):
        if self.name not in T_PRIORS:
            raise ValueError(f"prior on t must be one of {sorted(T_PRIORS)}, got {self.name!r}")
        object.__setattr__(self, "params", tuple(float(p) for p in self.params))
        if len(self.params) != T_PRIORS[self.name]:
            raise ValueError(f"prior {self.name!r} takes {T_PRIORS[self.name]} parameters, got {list(self.params)}")
        if any(p <= 0 for p in self.params):
            raise ValueError(f"prior {self.name!r} parameters must be > 0, got {list(self.params)}")

    def distribution(self):
        import pyro.distributions as dist

        if self.name == "uniform":
            return dist.Uniform(torch.tensor(0.0), torch.tensor(1.0))
        a, b = self.params
        return dist.Beta(torch.tensor(a), torch.tensor(b))

    def log_density(self, t: torch.Tensor) -> torch.Tensor:
        if self.name == "uniform":
            return torch.zeros_like(t)
        a, b = self.params
        return torch.distributions.Beta(a, b).log_prob(t.clamp(1e-6, 1 - 1e-6))

    @classmethod
    def parse(cls, value: Any) -> Prior:
        """From "uniform", {"beta": [a, b]}, {"name": "beta", "params": [a, b]} or a Prior."""
        if isinstance(value, Prior):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, Mapping):
            if "name" in value:
                return cls(value["name"], tuple(value.get("params", ())))
            if len(value) == 1:
                (name, params), = value.items()
                return cls(name, tuple(params))
        raise ValueError(f"cannot read a prior on t from {value!r}; use 'uniform' or {{'beta': [a, b]}}")

    def to_dict(self) -> dict:
        return {"name": self.name, "params": list(self.params)}


@dataclass(frozen=True)
class OffsetSpec:
    """The offset latent z around the curve: θ = φ(t) + P z, z ~ Normal(0, scale² I_dim).

    Attributes
    ----------
    dim: d, the number of offset directions (0: no offset, t alone).
    scale: prior standard deviation σ_z of every coordinate.
    basis: "control_points" (orthonormalised differences of the control points, then seeded
        random directions to fill up) or "random" (a seeded random orthonormal basis).
    seed: seed of the random directions.
    """

    dim: int = 0
    scale: float = 0.01
    basis: str = "control_points"
    seed: int = 0

    def __post_init__(self):
        if self.dim < 0:
            raise ValueError(f"offset dim must be ≥ 0, got {self.dim}")
        if not self.scale > 0:
            raise ValueError(f"offset scale must be > 0, got {self.scale}")
        if self.basis not in OFFSET_BASES:
            raise ValueError(f"offset basis must be one of {OFFSET_BASES}, got {self.basis!r}")


@dataclass(frozen=True)
class CurvePosteriorSpec:
    """A curve posterior, declared.

    t ~ t_prior; z ~ Normal(0, σ_z² I_d) if ``offset.dim`` > 0; θ = φ(t) + P z;
    y_i ~ Categorical(logits = f(x_i; θ)) inside a data plate (subsampled when
    ``subsample_size`` is set), each log-likelihood divided by ``temperature``.

    The curve itself (its degree, anchored or free) is not part of the posterior: it is trained
    by :func:`~bayes_lora.lora.curve_train.train_curve` (:class:`~bayes_lora.lora.curve_train.CurveConfig`)
    and given to the model.

    Attributes
    ----------
    t_prior: the prior on t.
    offset: the offset latent z (dim 0 switches it off).
    likelihood: "categorical" (the task's class logits).
    temperature: T > 0; the log-likelihood is divided by T (T > 1 widens the posterior).
        "dev": chosen when the posterior is fitted, the T of lowest NLL of the curve's model
        average on the task's dev split (:func:`~bayes_lora.inference.curve.fit_curve`).
    subsample_size: minibatch size of the data plate (None: the full data, as NUTS needs).
    likelihood_examples: use only this many training examples (seeded) in the likelihood
        (None: all); pair with a temperature to keep the posterior's width honest.
    """

    t_prior: Prior = field(default_factory=Prior)
    offset: OffsetSpec = field(default_factory=OffsetSpec)
    likelihood: str = "categorical"
    temperature: float | str = 1.0
    subsample_size: int | None = None
    likelihood_examples: int | None = None

    def __post_init__(self):
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        if isinstance(self.temperature, str):
            if self.temperature != "dev":
                raise ValueError(f"temperature must be a number > 0 or 'dev' (chosen on the dev split), "
                                 f"got {self.temperature!r}")
        elif isinstance(self.temperature, bool) or not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.subsample_size is not None and self.subsample_size < 1:
            raise ValueError(f"subsample_size must be ≥ 1, got {self.subsample_size}")
        if self.likelihood_examples is not None and self.likelihood_examples < 1:
            raise ValueError(f"likelihood_examples must be ≥ 1, got {self.likelihood_examples}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CurvePosteriorSpec:
        """The same spec from a plain dict / TOML table; unknown keys are errors naming them."""
        d = dict(d)
        if "curve" in d:
            raise ValueError("posterior.curve: the curve's degree and anchoring are how it is trained — set them "
                             "in [curve] (CurveConfig), not in the posterior")
        _check_keys(cls, d, "posterior")
        kw: dict[str, Any] = {}
        if "t_prior" in d:
            kw["t_prior"] = Prior.parse(d["t_prior"])
        if "offset" in d:
            _check_keys(OffsetSpec, d["offset"], "posterior.offset")
            kw["offset"] = OffsetSpec(**d["offset"])
        for k in ("likelihood", "temperature", "subsample_size", "likelihood_examples"):
            if k in d:
                kw[k] = d[k]
        return cls(**kw)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["t_prior"] = self.t_prior.to_dict()
        return out
