"""``compare``: fit (or load) several methods on one task and tabulate them the same way."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from .evaluate import METRICS, Evaluation, evaluate


def _normalise(methods) -> dict[str, tuple[str, dict]]:
    if isinstance(methods, Mapping):
        out = {}
        for label, opts in methods.items():
            opts = dict(opts or {})
            out[label] = (opts.pop("method", label), opts)
        return out
    out = {}
    for m in methods:
        if isinstance(m, str):
            out[m] = (m, {})
        else:
            name, opts = m[0], dict(m[1])
            out[name] = (opts.pop("method", name), opts)
    return out


def compare(
    methods: Sequence[str | tuple[str, Mapping]] | Mapping[str, Mapping],
    ctx,
    test,
    *,
    ood=None,
    num_samples: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    save_dir: str | Path | None = None,
    load_dir: str | Path | None = None,
    keep: dict | None = None,
):
    """One row per method: accuracy, NLL, ECE, Brier, entropy, aleatoric, MI, AURC (and OOD AUROC
    with ``ood``), fit and predict seconds, number of samples.

    Parameters
    ----------
    methods: method names (``["map", "laplace"]``), ``(label, options)`` pairs or a dict
        ``{label: {"method": backend, **options}}`` (``method`` defaults to the label).
    ctx: the :class:`~bayes_lora.inference.base.FitContext` shared by every method.
    test: the evaluation task; ``ood``: an out-of-distribution task (optional).
    save_dir: save each fitted posterior in ``save_dir/<label>``.
    load_dir: load ``load_dir/<label>`` instead of fitting when it exists.
    keep: a dict filled with ``label → (posterior, Evaluation)``.

    Returns
    -------
    pandas.DataFrame indexed by method label.
    """
    import pandas as pd

    from ..inference.registry import fit, load

    rows = []
    for label, (method, opts) in _normalise(methods).items():
        saved = Path(load_dir) / label if load_dir is not None else None
        if saved is not None and (saved / "posterior.json").is_file():
            post = load(saved, ctx.fm, ctx)
        else:
            post = fit(method, ctx, **opts)
        if save_dir is not None:
            post.save(Path(save_dir) / label)
        ev: Evaluation = evaluate(post, test, num_samples=num_samples, seed=seed, batch_size=batch_size, ood=ood)
        rows.append({"method": label, **ev.metrics})
        if keep is not None:
            keep[label] = (post, ev)
    cols = ["method", *METRICS, *(["ood_auroc", "ood_auroc_entropy"] if ood is not None else []),
            "fit_seconds", "predict_seconds", "num_samples"]
    return pd.DataFrame(rows, columns=cols).set_index("method")


__all__ = ["compare"]
