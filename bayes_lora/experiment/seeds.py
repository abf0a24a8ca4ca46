"""Replicates over seeds: the whole pipeline once per seed, then mean ± sd and a Bayesian comparison.

``bayes-lora run CONFIG --seeds 0,1,2`` (or ``seeds = [0, 1, 2]`` at the top of the config) runs
:meth:`ExperimentConfig.replicate` of the config for each seed into ``<out>/seed-<s>/``, a run
folder like any other (its own report, InferenceData, resumable stage by stage). Replicates
share the data (the subsamples' seed is ``data.seed``, else the config's ``seed``), so the model,
the encoded data and their prefix caches are loaded once and reused; everything seeded —
the anchors' initialisation and batch order (seed ``s`` trains anchors ``s·M … s·M + M − 1``),
the curve, every method's fit and sampling — differs.

At the top of ``<out>``: ``seeds.json`` (every seed's metrics, their mean and sample standard
deviation per method, the comparison), ``seeds.csv`` (one row per seed and method),
``report.md`` and ``figures/seeds.png``. The comparison fits
:func:`~bayes_lora.diagnostics.compare.compare_methods` (NumPyro NUTS; each seed is a block
with its own intercept, since its methods share its anchors) to each of NLL, ECE and accuracy,
and reports for every method the posterior probability that it beats the baseline (MAP), with
the HDI of the difference.
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..lora.io import atomic_write_bytes, atomic_write_json

#: the metrics summarised over seeds (those a run reports; OOD ones per OOD set as ``name[set]``)
SEED_METRICS = ("accuracy", "mcc", "nll", "ece", "brier", "entropy", "mutual_information", "aurc", "ood_auroc",
                "ood_auroc_entropy", "ood_mutual_information")

#: the metrics the methods are compared on against the baseline: (metric, lower is better)
COMPARED = (("nll", True), ("ece", True), ("accuracy", False))

#: the files a seeds run writes at the top of its folder
SEEDS_FILES = ("seeds.json", "seeds.csv", "report.md")


def seed_folder(out: str | Path, seed: int) -> Path:
    """The run folder of replicate ``seed`` inside a seeds run's folder."""
    return Path(out) / f"seed-{int(seed)}"


def _log_default(msg: str) -> None:
    print(msg, flush=True)


def run_seeds(cfg, out: str | Path, seeds: Sequence[int] | None = None, *, baseline: str = "map",
              compare: bool = True, log: Callable[[str], None] = _log_default, **runner_kw) -> dict:
    """Run ``cfg`` once per seed into ``out/seed-<s>/`` and summarise the replicates.

    Parameters
    ----------
    cfg: the :class:`~bayes_lora.experiment.config.ExperimentConfig` (its ``seed`` only decides
        the data subsamples when ``data.seed`` is unset).
    seeds: at least two distinct seeds; default ``cfg.seeds``.
    baseline: the method every other is compared against (skipped when the config lacks it).
    compare: fit the NumPyro comparison (seconds); False = mean ± sd only.
    runner_kw: passed to each :class:`~bayes_lora.experiment.runner.Runner` (``data_dir``,
        ``smoke``, ``progress``, ``force``, ...).

    Returns
    -------
    The dict written to ``seeds.json``: ``seeds``, ``runs`` (seed → folder), ``per_seed``
    (seed → method → metrics), ``summary`` (method → metric → mean / sd / values),
    ``comparison`` (metric → method → p_better / mean_diff / hdi_low / hdi_high, and the fit's
    convergence), ``wall_seconds``. A non-main process of a distributed run returns ``{}``.
    """
    from .lock import RunLock
    from .runner import Runner

    seeds = tuple(int(s) for s in (cfg.seeds if seeds is None else seeds))
    if len(seeds) < 2:
        raise ValueError(f"a seeds run needs at least two seeds (mean ± sd over replicates), got {list(seeds)}")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct, got {list(seeds)}")
    out = Path(out)
    if (out / "results.json").is_file():
        raise ValueError(f"{out} holds a single run (results.json); a seeds run writes one folder per seed inside "
                         "its own folder: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    per_seed: dict[int, dict] = {}
    runs: dict[int, str] = {}
    prepared = None
    with RunLock(out, log=log):
        for s in seeds:
            log(f"== seed {s} ({seeds.index(s) + 1} of {len(seeds)}) -> {seed_folder(out, s)}")
            runner = Runner(cfg.replicate(s), seed_folder(out, s), prepared=prepared,
                            log=lambda m, s=s: log(f"[seed {s}] {m}"), **runner_kw)
            res = runner.run()
            if not res:  # a non-main process of a distributed run: the main one summarises
                return {}
            per_seed[s] = res["methods"]
            runs[s] = seed_folder(out, s).name
            prepared = runner.prep
        results = {"name": cfg.name, "model": res["model"], "task": res["task"], "ood_task": res.get("ood_task"),
                   "smoke": res.get("smoke", False), "seeds": list(seeds), "data_seed": cfg.data_seed,
                   "runs": {str(s): runs[s] for s in seeds},
                   "per_seed": {str(s): {k: _numbers(m) for k, m in per_seed[s].items()} for s in seeds},
                   "summary": summarise(per_seed), "baseline": baseline, "comparison": {}}
        if compare:
            log(f"comparing the methods over {len(seeds)} seeds (NumPyro NUTS) ...")
            results["comparison"] = compare_to_baseline(per_seed, baseline)
        results["wall_seconds"] = time.perf_counter() - t0
        write_seeds_report(out, results, log=log)
    log(f"mean ± sd over seeds {', '.join(map(str, seeds))} in {out}/seeds.json, report in {out}/report.md "
        f"({results['wall_seconds']:.0f} s)")
    return results


def _numbers(metrics: dict) -> dict[str, float]:
    """The scalar metrics of one method's evaluation (finite numbers only)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def _metric_names(per_seed: dict[int, dict]) -> list[str]:
    """The summarised metrics present in every seed's results: :data:`SEED_METRICS`, each OOD
    one also per further OOD set (``ood_auroc[arc_challenge]``, ...)."""
    first = next(iter(per_seed.values()))
    keys = {k for m in first.values() for k in m}
    out = []
    for name in SEED_METRICS:
        out += [name] if name in keys else []
        out += sorted(k for k in keys if k.startswith(f"{name}[") and k.endswith("]"))
    return out


def summarise(per_seed: dict[int, dict]) -> dict[str, dict[str, dict[str, Any]]]:
    """``method → metric → {"mean", "sd", "values"}`` over the seeds (sample sd, ``ddof = 1``).
    A metric some seed lacks for a method is left out for that method."""
    import numpy as np

    seeds = list(per_seed)
    methods = list(per_seed[seeds[0]])
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for label in methods:
        row = {}
        for name in _metric_names(per_seed):
            vals = [per_seed[s].get(label, {}).get(name) for s in seeds]
            if any(not isinstance(v, (int, float)) or isinstance(v, bool) for v in vals):
                continue
            a = np.asarray(vals, dtype=float)
            row[name] = {"mean": float(a.mean()), "sd": float(a.std(ddof=1)) if len(a) > 1 else 0.0,
                         "values": [float(v) for v in a]}
        out[label] = row
    return out


def compare_to_baseline(per_seed: dict[int, dict], baseline: str = "map", *,
                        metrics: Sequence[tuple[str, bool]] = COMPARED, seed: int = 0) -> dict[str, dict]:
    """For each metric in ``metrics``, the hierarchical NumPyro comparison of all methods over the
    seeds (:func:`~bayes_lora.diagnostics.compare.compare_methods`, each seed a block with its own
    intercept: a paired design, since one seed's methods share its anchors) and, for every method but
    ``baseline``: ``p_better`` (posterior probability that it beats the baseline), ``mean_diff``
    (method − baseline, the metric's units) and its 94 % HDI. ``{}`` when the baseline is not
    among the methods."""
    import pandas as pd

    from ..diagnostics.compare import compare_methods

    seeds = list(per_seed)
    methods = list(per_seed[seeds[0]])
    if baseline not in methods:
        return {}
    out: dict[str, dict] = {}
    for metric, lower in metrics:
        # each seed is a block (``task`` of the model): its methods share the anchors, the curve and
        # the data, so seed-to-seed shifts common to all methods go to μ_seed, not to the noise
        rows = [{"method": m, "task": f"seed {s}", "seed": s, "value": per_seed[s][m][metric]}
                for s in seeds for m in methods if isinstance(per_seed[s].get(m, {}).get(metric), (int, float))]
        if len({r["method"] for r in rows}) < 2:
            continue
        df = pd.DataFrame(rows)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = compare_methods(df, lower_is_better=lower, metric=metric, seed=seed)
        vs = {}
        for m in methods:
            if m == baseline or m not in set(df["method"]):
                continue
            p = fit.pair(m, baseline)
            vs[m] = {"p_better": p["p_a_better"], "mean_diff": p["mean_diff"], "hdi_low": p["hdi_low"],
                     "hdi_high": p["hdi_high"]}
        out[metric] = {"lower_is_better": lower, "vs_baseline": vs, "max_rhat": fit.max_rhat,
                       "min_ess": fit.min_ess, "num_divergences": fit.num_divergences,
                       "parameterization": fit.idata.attrs.get("parameterization")}
    return out


# --------------------------------------------------------------------------- report --------
def _pm(cell: dict | None, metric: str) -> str:
    if cell is None:
        return "–"
    fmt = ".2f" if metric == "ece" else ".4f"
    return f"{cell['mean']:{fmt}} ± {cell['sd']:{fmt}}"


#: the columns of the report's mean ± sd table, in order (those present)
_TABLE = ("accuracy", "mcc", "nll", "ece", "brier", "mutual_information", "aurc", "ood_auroc", "ood_auroc_entropy")


def summary_table(results: dict) -> str:
    """The mean ± sd table (markdown), one row per method."""
    summary = results["summary"]
    cols = [c for c in _TABLE if any(c in row for row in summary.values())]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for label, row in summary.items():
        lines.append(f"| {label} | " + " | ".join(_pm(row.get(c), c) for c in cols) + " |")
    return "\n".join(lines)


def comparison_table(results: dict) -> str:
    """P(method beats the baseline) and the difference's HDI per compared metric (markdown)."""
    comp = results.get("comparison") or {}
    if not comp:
        return ""
    metrics = list(comp)
    heads = []
    for m in metrics:
        heads += [f"P({m} {'<' if comp[m]['lower_is_better'] else '>'} {results['baseline']}'s)",
                  f"Δ{m} [94 % HDI]"]
    methods = [m for m in results["summary"] if any(m in comp[k]["vs_baseline"] for k in metrics)]
    lines = ["| method | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for label in methods:
        cells = []
        for k in metrics:
            v = comp[k]["vs_baseline"].get(label)
            if v is None:
                cells += ["–", "–"]
                continue
            f = ".2f" if k == "ece" else ".4f"
            cells += [f"{v['p_better']:.2f}", f"{v['mean_diff']:+{f}} [{v['hdi_low']:+{f}}, {v['hdi_high']:+{f}}]"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def seeds_rows(results: dict) -> list[dict[str, Any]]:
    """One row per (seed, method): the seed, the method and its summarised metrics."""
    names = _metric_names({int(s): m for s, m in results["per_seed"].items()})
    return [{"seed": int(s), "method": label, **{n: m.get(n) for n in names}}
            for s, methods in results["per_seed"].items() for label, m in methods.items()]


def write_seeds_report(out: str | Path, results: dict, *, log: Callable[[str], None] = _log_default) -> None:
    """``seeds.json``, ``seeds.csv``, ``figures/seeds.png`` and ``report.md`` of a seeds run."""
    out = Path(out)
    atomic_write_json(out / "seeds.json", results)
    rows = seeds_rows(results)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["seed", "method"])
    w.writeheader()
    w.writerows(rows)
    atomic_write_bytes(out / "seeds.csv", buf.getvalue().encode())
    figure = _figure(out, rows, log)
    atomic_write_bytes(out / "report.md", _markdown(results, figure).encode())


def _figure(out: Path, rows: list[dict], log) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import pandas as pd

        from ..diagnostics.plots import comparison_plot

        (out / "figures").mkdir(exist_ok=True)
        df = pd.DataFrame(rows)
        metrics = [m for m in ("nll", "ece", "accuracy", "mutual_information") if m in df.columns]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = comparison_plot(df, metrics, title="Methods over seeds", path=out / "figures" / "seeds.png")
        plt.close(fig)
        return "figures/seeds.png"
    except Exception as e:  # noqa: BLE001 - a figure must never cost the run its results
        log(f"figure seeds.png skipped: {type(e).__name__}: {e}")
        return None


def _markdown(results: dict, figure: str | None) -> str:
    seeds = results["seeds"]
    lines = [f"# bayes_lora seeds: {results['name']}", "",
             f"Model **{results['model']}** on **{results['task']}**"
             + (f" (OOD: {results['ood_task']})" if results.get("ood_task") else "")
             + f"; {len(seeds)} replicates (seeds {', '.join(map(str, seeds))}) on the same data (data seed "
             f"{results['data_seed']}); each replicate's full report is `seed-<s>/report.md`"
             + (" — **smoke run**" if results.get("smoke") else "") + ".", "",
             "## Mean ± standard deviation over seeds", "", summary_table(results), "",
             ("Sample standard deviation over the seeds. ECE in percent (15 bins); NLL in nats; MI = mutual "
              "information; OOD AUROC by mutual information and by predictive entropy."), ""]
    comp = results.get("comparison") or {}
    if comp:
        lines += [f"## Against {results['baseline']}: NumPyro comparison over seeds", "", comparison_table(results), "",
                  (f"Posterior probability that each method beats {results['baseline']}, and the posterior mean and "
                   "94 % highest-density interval of (method − baseline), from a hierarchical model of all methods "
                   "fitted by NUTS per metric (`bayes_lora.diagnostics.compare_methods`; each seed is a block "
                   "with its own intercept, since its methods share its anchors). With few seeds the interval is "
                   "wide: a probability near 0.5 means the seeds cannot tell."), "",
                  "| metric | max R-hat | min bulk ESS | divergent transitions | parameterisation |",
                  "|---|---:|---:|---:|---|"]
        for k, v in comp.items():
            lines.append(f"| {k} | {v['max_rhat']:.3f} | {v['min_ess']:.0f} | {v['num_divergences']} | "
                         f"{v.get('parameterization') or '–'} |")
        lines.append("")
    lines += ["## Replicates", "", "| seed | folder |", "|---:|---|"]
    lines += [f"| {s} | [`{results['runs'][str(s)]}`]({results['runs'][str(s)]}/report.md) |" for s in seeds]
    lines += ["", f"Wall time of this invocation: {results.get('wall_seconds', 0):.0f} s.", ""]
    if figure:
        lines += ["## Figure", "", f"![Methods over seeds]({figure})", "",
                  "*Each seed a grey dot; mean ± one standard deviation over seeds.*", ""]
    return "\n".join(lines)


def load_seeds(out: str | Path) -> dict:
    """The ``seeds.json`` of a finished seeds run."""
    f = Path(out) / "seeds.json"
    if not f.is_file():
        raise FileNotFoundError(f"{out} has no seeds.json: is it a finished bayes-lora seeds run?")
    return json.loads(f.read_text())


__all__ = ["COMPARED", "SEED_METRICS", "compare_to_baseline", "load_seeds", "run_seeds", "seed_folder",
           "summarise", "summary_table", "write_seeds_report"]
