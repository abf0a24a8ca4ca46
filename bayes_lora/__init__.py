"""bayes_lora: Bayesian inference over LoRA adapters of language models.

``import bayes_lora as bl`` gives the public surface; each name is imported from its subpackage
on first use, so ``import bayes_lora`` stays light::

    import bayes_lora as bl

    bb = bl.load_backbone("all-MiniLM-L6-v2", num_labels=2, lora=bl.LoraSettings(r=8, layers=(3, 4, 5)))
    spec = bl.get_task("sst2")
    train = bl.encode(spec.load("train", max_examples=2000), bb.tokenizer)
    fm = bl.FunctionalModel(bb.model)
    lik = bl.LoRALikelihood(fm, train, temperature=20.0)      # the frozen transformer as a likelihood

    def model():                                               # any Pyro model over a LoRA subspace
        t = pyro.sample("t", dist.Beta(2.0, 2.0))
        lik(curve_point(t))

    post = bl.mcmc(model, lik, num_chains=4)                   # Pyro's NUTS; every site kept
    idata = bl.posterior_idata(post, bl.evaluate(post, test), train=train)

Layers (imports flow one way): :mod:`bayes_lora.lora` (parameter spaces, curves, training) →
:mod:`bayes_lora.models` (Pyro models, declared posteriors) → :mod:`bayes_lora.inference`
(one backend per file behind :class:`Posterior`) → :mod:`bayes_lora.diagnostics` (metrics,
ArviZ) → :mod:`bayes_lora.experiment` (configs, the staged runner); :mod:`bayes_lora.data`
(tasks and loaders) beside them.
"""
from __future__ import annotations

import importlib

#: public name → the module that defines it
_EXPORTS = {
    # lora: models, parameter spaces, curves, training
    "load_backbone": "bayes_lora.lora.backbone",
    "LoraSettings": "bayes_lora.lora.backbone",
    "Backbone": "bayes_lora.lora.backbone",
    "FunctionalModel": "bayes_lora.lora.params",
    "ParamLayout": "bayes_lora.lora.params",
    "ParameterSpace": "bayes_lora.lora.spaces",
    "FullSpace": "bayes_lora.lora.spaces",
    "MaskedSpace": "bayes_lora.lora.spaces",
    "ProjectedSpace": "bayes_lora.lora.spaces",
    "AffineSpace": "bayes_lora.lora.spaces",
    "pca_basis": "bayes_lora.lora.spaces",
    "random_basis": "bayes_lora.lora.spaces",
    "orthonormal_span": "bayes_lora.lora.spaces",
    "BezierCurve": "bayes_lora.lora.curves",
    "linear_path": "bayes_lora.lora.curves",
    "TrainConfig": "bayes_lora.lora.train",
    "fine_tune": "bayes_lora.lora.train",
    "fine_tune_anchors": "bayes_lora.lora.train",
    "CurveConfig": "bayes_lora.lora.curve_train",
    "train_curve": "bayes_lora.lora.curve_train",
    "linear_and_curve_paths": "bayes_lora.lora.curve_train",
    "with_prefix_cache": "bayes_lora.lora.prefix",
    # data
    "TaskSpec": "bayes_lora.data.tasks",
    "get_task": "bayes_lora.data.tasks",
    "load_task": "bayes_lora.data.tasks",
    "register_task": "bayes_lora.data.tasks",
    "task_names": "bayes_lora.data.tasks",
    "encode": "bayes_lora.data.encode",
    "resolve_data_dir": "bayes_lora.data.paths",
    # models
    "LoRALikelihood": "bayes_lora.models.user",
    "model_sites": "bayes_lora.models.user",
    "CurveModel": "bayes_lora.models.curve",
    "CurvePosteriorSpec": "bayes_lora.models.spec",
    "Prior": "bayes_lora.models.spec",
    "OffsetSpec": "bayes_lora.models.spec",
    "TaskLogits": "bayes_lora.models.likelihood",
    # inference
    "Posterior": "bayes_lora.inference.base",
    "FitContext": "bayes_lora.inference.base",
    "ProjectedMAP": "bayes_lora.inference.base",
    "fit_projected_map": "bayes_lora.inference.base",
    "Needs": "bayes_lora.inference.base",
    "predict_probs": "bayes_lora.inference.base",
    "fit": "bayes_lora.inference.registry",
    "load": "bayes_lora.inference.registry",
    "available_methods": "bayes_lora.inference.registry",
    "get_backend": "bayes_lora.inference.registry",
    "register": "bayes_lora.inference.registry",
    "PyroPosterior": "bayes_lora.inference.pyro_model",
    "mcmc": "bayes_lora.inference.pyro_model",
    "cached_t_posterior": "bayes_lora.inference.pyro_model",
    # diagnostics
    "summarize": "bayes_lora.diagnostics.metrics",
    "uncertainty_decomposition": "bayes_lora.diagnostics.metrics",
    "ood_auroc": "bayes_lora.diagnostics.metrics",
    "to_inference_data": "bayes_lora.diagnostics.idata",
    "loo": "bayes_lora.diagnostics.idata",
    "waic": "bayes_lora.diagnostics.idata",
    "compare_loo": "bayes_lora.diagnostics.idata",
    "summary": "bayes_lora.diagnostics.idata",
    # experiment: evaluation of any posterior, configs and the runner
    "evaluate": "bayes_lora.experiment.evaluate",
    "Evaluation": "bayes_lora.experiment.evaluate",
    "posterior_idata": "bayes_lora.experiment.evaluate",
    "chains_idata": "bayes_lora.experiment.evaluate",
    "loo_summary": "bayes_lora.experiment.evaluate",
    "load_config": "bayes_lora.experiment.config",
    "run": "bayes_lora.experiment.runner",
    "Runner": "bayes_lora.experiment.runner",
    "run_seeds": "bayes_lora.experiment.seeds",
}

__all__ = [
    "AffineSpace", "Backbone", "BezierCurve", "CurveConfig", "CurveModel", "CurvePosteriorSpec",
    "Evaluation", "FitContext", "FullSpace", "FunctionalModel", "LoRALikelihood", "LoraSettings",
    "MaskedSpace", "Needs", "OffsetSpec", "ParamLayout", "ParameterSpace", "Posterior", "Prior", "ProjectedMAP", "ProjectedSpace",
    "PyroPosterior", "Runner", "TaskLogits", "TaskSpec", "TrainConfig", "available_methods",
    "cached_t_posterior", "chains_idata", "compare_loo", "encode", "evaluate", "fine_tune",
    "fine_tune_anchors", "fit", "fit_projected_map", "get_backend", "get_task", "linear_and_curve_paths", "linear_path", "load", "load_backbone",
    "load_config", "load_task", "loo", "loo_summary", "mcmc", "model_sites", "ood_auroc", "orthonormal_span",
    "pca_basis", "posterior_idata", "predict_probs", "random_basis", "register", "register_task", "resolve_data_dir",
    "run", "run_seeds", "summarize", "summary", "task_names", "to_inference_data", "train_curve",
    "uncertainty_decomposition", "waic", "with_prefix_cache",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bayes_lora' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
