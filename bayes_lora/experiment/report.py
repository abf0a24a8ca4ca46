"""The outputs of a run: results.json / results.csv, idata/*.nc, figures/*.png and report.md.

``idata/<label>.nc`` is each method's InferenceData (every group at the same thinned draws, the
log-likelihood on training examples; see :func:`~bayes_lora.experiment.evaluate.posterior_idata`);
``idata/chains/<label>.nc`` holds every draw of every chain of an MCMC posterior (posterior and
sample_stats only), from which the convergence diagnostics and the trace and rank plots are made.
"""
from __future__ import annotations

import csv
import io
import json
import math
import shutil
import warnings
from pathlib import Path
from typing import Any

from ..lora.io import atomic_write_bytes, atomic_write_json
from .evaluate import METRICS

#: columns of results.csv and of the report's table, in order
COLUMNS = (*METRICS, "ood_auroc", "ood_auroc_entropy", "ood_mutual_information", "fit_seconds", "predict_seconds", "num_samples")


def results_table(results: dict) -> list[dict[str, Any]]:
    """One row per method: ``{"method": label, <COLUMNS>}`` (missing values are None)."""
    return [{"method": label, **{c: m.get(c) for c in COLUMNS}} for label, m in results["methods"].items()]


def to_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["method", *COLUMNS])
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue().encode()


def markdown_table(rows: list[dict], extra: tuple[str, ...] = ()) -> str:
    cols = ["accuracy", "mcc", "nll", "ece", "brier", "mutual_information", "aurc", *extra, "fit_seconds",
            "predict_seconds"]
    cols = [c for c in cols if any(r.get(c) is not None for r in rows)]
    head = "| method | " + " | ".join(cols) + " |\n|---|" + "---:|" * len(cols) + "\n"
    body = ""
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            cells.append("–" if v is None else (f"{v:.1f}" if c.endswith("seconds") else
                                                f"{v:.2f}" if c == "ece" else f"{v:.4f}"))
        body += f"| {r['method']} | " + " | ".join(cells) + " |\n"
    return head + body


def write_report(runner, results: dict) -> None:
    """Write every output file of a finished run into ``runner.out``."""
    out: Path = runner.out
    rows = results_table(results)
    results["stages"] = [{"stage": r.name, "status": r.status, "seconds": round(r.seconds, 3), "process": r.process}
                         for r in runner.store.records]
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "results.csv", to_csv(rows))
    (out / "idata").mkdir(exist_ok=True)
    for label in results["methods"]:
        src = runner.store.path(f"eval:{label}") / "idata.nc"
        if src.is_file():
            shutil.copyfile(src, out / "idata" / f"{label}.nc")
        chains = runner.store.path(f"eval:{label}") / "chains.nc"
        if chains.is_file():
            (out / "idata" / "chains").mkdir(exist_ok=True)
            shutil.copyfile(chains, out / "idata" / "chains" / f"{label}.nc")
    figures = _figures(runner, results)
    atomic_write_bytes(out / "report.md", _markdown(runner, results, rows, figures).encode())


def _figures(runner, results: dict) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..diagnostics import metrics as M
    from ..diagnostics import plots

    fig_dir = runner.out / "figures"
    fig_dir.mkdir(exist_ok=True)
    made: list[tuple[str, str]] = []

    def save(name: str, caption: str, make) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fig = make(fig_dir / name)
            plt.close(fig)
            made.append((name, caption))
        except Exception as e:  # noqa: BLE001 - a figure must never cost the run its results
            runner.log(f"figure {name} skipped: {type(e).__name__}: {e}")

    if results.get("paths"):
        save("paths.png", "Loss and accuracy along the straight line between the end anchors and along the "
             "trained curve", lambda p: plots.path_plot(results["paths"], path=p))
    preds = {label: runner.predictions(label) for label in results["methods"]}
    save("risk_coverage.png", "Selective prediction: risk–coverage of every method",
         lambda p: plots.risk_coverage_plot({k: (v["probs"], v["labels"]) for k, v in preds.items()}, path=p))
    for label, v in preds.items():
        save(f"reliability_{label}.png", f"Reliability diagram of {label}",
             lambda p, v=v, label=label: plots.reliability_diagram(v["probs"], v["labels"], title=label, path=p))
        if "ood_probs" in v:
            _, _, mi_in = M.uncertainty_decomposition(v["probs"])
            _, _, mi_out = M.uncertainty_decomposition(v["ood_probs"])
            save(f"mi_{label}.png", f"Mutual information in- vs out-of-distribution ({label})",
                 lambda p, a=mi_in, b=mi_out, label=label: plots.mi_histogram(a, b, title=f"MI, {label}", path=p))
    for label, m in results["methods"].items():
        if m.get("covariance_spectrum"):
            save(f"spectrum_{label}.png", f"Covariance spectrum of {label}: share of the variance per eigen-direction",
                 lambda p, sp=m["covariance_spectrum"], label=label: plots.spectrum_plot(sp, title=label, path=p))
    from ..diagnostics.idata import load_idata

    for label, m in runner.cfg.methods.items():
        if m.method == "curve" and m.options.get("inference", "nuts") in ("nuts", "hmc", "slice"):
            nc = runner.out / "idata" / "chains" / f"{label}.nc"  # every draw, not the thinned ones
            if not nc.is_file():
                nc = runner.out / "idata" / f"{label}.nc"
            if nc.is_file():
                idata = load_idata(nc)
                save(f"trace_{label}.png", f"Trace of the curve position t ({label})",
                     lambda p, i=idata: plots.trace_plot(i, var_names=["t"], path=p))
                save(f"rank_{label}.png", f"Rank plot of t ({label})",
                     lambda p, i=idata: plots.rank_plot(i, var_names=["t"], path=p))
    return made


def _markdown(runner, results: dict, rows: list[dict], figures: list[tuple[str, str]]) -> str:
    extra = ("ood_auroc", "ood_auroc_entropy") if results.get("ood_task") else ()
    names = results.get("label_names") or []
    lines = [f"# bayes_lora run: {results['name']}", "",
             f"Model **{results['model']}** on **{results['task']}**"
             + (f" (OOD: {results['ood_task']})" if results.get("ood_task") else "")
             + f"; {results['data'].get('train_examples')} training and {results['data'].get('test_examples')} test "
             f"examples; config hash `{results['config_hash']}`" + (" — **smoke run**" if results.get("smoke") else "")
             + "." + (f" Classes: {', '.join(f'{i} = {n}' for i, n in enumerate(names))}." if names else ""),
             "", "## Methods", "", markdown_table(rows, extra),
             ("ECE in percent (15 bins); NLL in nats; MCC = Matthews correlation; mutual information = epistemic "
              "part of the predictive entropy; AURC = area under the risk–coverage curve (lower is better)"
              + ("; OOD AUROC by mutual information and by predictive entropy" if extra else "") + "."), ""]
    per_class = {k: m["per_class_accuracy"] for k, m in results["methods"].items() if m.get("per_class_accuracy")}
    if per_class and len(next(iter(per_class.values()))) > 2:
        width = len(next(iter(per_class.values())))
        heads = [names[i] if i < len(names) else str(i) for i in range(width)]
        lines += ["## Accuracy per class", "", "| method | " + " | ".join(heads) + " |",
                  "|---|" + "---:|" * width]
        for k, accs in per_class.items():
            lines.append(f"| {k} | " + " | ".join("–" if a is None else f"{a:.4f}" for a in accs) + " |")
        lines.append("")
    lines += _ood_lines(results)
    lines += _dev_lines(results)
    lines += _spectrum_lines(results)
    mcmc = {k: m for k, m in results["methods"].items() if "r_hat" in m}
    if mcmc:
        lines += ["## MCMC diagnostics of the curve position t", "",
                  "| method | R-hat | bulk ESS | tail ESS | divergent transitions |", "|---|---:|---:|---:|---:|"]
        for k, m in mcmc.items():
            lines.append(f"| {k} | {m['r_hat']:.4f} | {m['ess_bulk']:.0f} | {m['ess_tail']:.0f} | "
                         f"{m.get('num_divergences', '–')} |")
        lines += ["", "Trust the curve posterior when R-hat < 1.01, ESS ≥ 100 and no transition diverged.", ""]
    lines += _loo_lines(results)
    if results.get("paths"):
        lines += ["## Paths between optima", "", "| path | barrier | min accuracy | max loss |", "|---|---:|---:|---:|"]
        for name, p in results["paths"].items():
            lines.append(f"| {name} | {p['barrier']:.4f} | {min(p['accuracy']):.4f} | {max(p['loss']):.4f} |")
        lines.append("")
    lines += ["## Stages", "", "| stage | status | seconds |", "|---|---|---:|"]
    for s in results.get("stages", []):
        lines.append(f"| {s['stage']} | {s['status']} | {s['seconds']:.1f} |")
    lines += ["", f"Wall time of this invocation: {results.get('wall_seconds', 0):.0f} s.", ""]
    if figures:
        lines += ["## Figures", ""]
        for name, caption in figures:
            lines += [f"![{caption}](figures/{name})", "", f"*{caption}*", ""]
    return "\n".join(lines)


def _dev_lines(results: dict) -> list[str]:
    """The scales chosen on the task's dev split (e.g. ``laplace`` with ``prior = "dev"``)."""
    rows = {k: m["dev_choice"] for k, m in results["methods"].items() if isinstance(m.get("dev_choice"), dict)}
    if not rows:
        return []
    lines = ["## Scales chosen on the dev split", "",
             ("| method | parameter | candidates | chosen | without the dev split | dev NLL chosen | dev NLL there | "
             "dev examples |"), "|---|---|---:|---:|---:|---:|---:|---:|"]
    for k, c in rows.items():
        ref = c.get("reference")
        at_ref = next((v for g, v in zip(c["grid"], c["dev_nll"]) if ref is not None and math.isclose(g, ref)), None)
        lines.append(f"| {k} | {c['parameter']} | {len(c['grid'])} | {c['chosen']:.4g} | "
                     + ("–" if ref is None else f"{ref:.4g} ({c.get('reference_name') or 'default'})")
                     + f" | {c['dev_nll'][c['index']]:.4f} | " + ("–" if at_ref is None else f"{at_ref:.4f}")
                     + f" | {c['examples']} |")
    lines += ["", ("Each such method evaluated its candidates on the task's dev split (never the test set) and "
                   "kept the one of lowest dev NLL; the candidates reach a posterior close to the MAP, so a "
                   "posterior that harms on held-out data is shrunk instead of kept."), ""]
    return lines


def _spectrum_lines(results: dict) -> list[str]:
    """How few directions hold each Gaussian posterior's variance (B-LoRA-XS's low-rank claim)."""
    from ..diagnostics.metrics import variance_shares

    rows = {k: m["covariance_spectrum"] for k, m in results["methods"].items() if m.get("covariance_spectrum")}
    if not rows:
        return []
    lines = ["## Covariance spectra", "", "| method | d | top 1 | top 3 | top 10 | exact |", "|---|---:|---:|---:|---:|---|"]
    for k, sp in rows.items():
        sh = variance_shares(sp)
        lines.append(f"| {k} | {sp['dim']} | {sh[1]:.1%} | {sh[3]:.1%} | {sh[10]:.1%} | "
                     f"{'yes' if sp['exact'] else 'lower bounds'} |")
    lines += ["", ("Share of the posterior covariance's variance (its trace) in its largest eigen-directions; "
                   "`figures/spectrum_<method>.png` shows the spectrum."), ""]
    return lines


def _ood_lines(results: dict) -> list[str]:
    """In- vs out-of-distribution uncertainty per method and OOD set (``ood_task``, then each of
    ``more_ood``): does the epistemic part grow outside the fine-tuning distribution, and does it
    separate the two sets better than the entropy?"""
    sets = [("", results.get("ood_task"))] + [(f"[{n}]", n) for n in results.get("more_ood", [])]
    lines: list[str] = []

    def ratio(a, b):
        return f"{a / b:.2f}" if b > 0 else "–"

    for suffix, name in sets:
        rows = {k: m for k, m in results["methods"].items() if f"ood_mutual_information{suffix}" in m}
        if not rows:
            continue
        lines += [f"## In- vs out-of-distribution ({name})", "",
                  ("| method | MI test | MI OOD | MI OOD / test | entropy test | entropy OOD | AUROC (MI) | "
                  "AUROC (entropy) |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k, m in rows.items():
            mi, h = m[f"ood_mutual_information{suffix}"], m[f"ood_entropy{suffix}"]
            lines.append(f"| {k} | {m['mutual_information']:.4f} | {mi:.4f} | {ratio(mi, m['mutual_information'])} | "
                         f"{m['entropy']:.4f} | {h:.4f} | {m[f'ood_auroc{suffix}']:.4f} | "
                         f"{m[f'ood_auroc_entropy{suffix}']:.4f} |")
        lines.append("")
    if not lines:
        return []
    lines += [("Means over the test set and the OOD set (nats). AUROC 0.5 = the score does not tell the sets "
                   "apart. A single draw (MAP) or a closed-form predictive (the Laplace GLM probit link) has no "
                   "mutual information: read its entropy columns. The histograms per method are "
                   "`figures/mi_<method>.png`."), ""]
    return lines


def _loo_lines(results: dict) -> list[str]:
    """The PSIS-LOO / WAIC table: on training examples the posteriors conditioned on."""
    loos = {k: m["loo"] for k, m in results["methods"].items() if isinstance(m.get("loo"), dict)}
    if not loos:
        return []

    def f(v, fmt):
        return "–" if v is None else format(v, fmt)

    lines = ["## PSIS-LOO and WAIC on training examples", "",
             "| method | examples | draws | T | elpd_loo | se | p_loo | Pareto k > 0.7 | max k | elpd_waic |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k, r in loos.items():
        lines.append(f"| {k} | {r['examples']} | {r['draws']} | {f(r.get('temperature'), 'g')} | "
                     f"{f(r.get('elpd_loo'), '.2f')} | {f(r.get('se'), '.2f')} | {f(r.get('p_loo'), '.2f')} | "
                     f"{r.get('pareto_k_gt_0.7', 0)} of {r['examples']} | "
                     f"{'∞' if r.get('pareto_k_inf') else f(r.get('pareto_k_max'), '.2f')} | "
                     f"{f(r.get('elpd_waic'), '.2f')} |")
    lines += ["", ("Leave-one-out on (a seeded subset of) the training examples each posterior conditioned on, "
              "at the draws stored in `idata/<method>.nc` (their log-likelihood is untempered; T is the "
              "likelihood temperature of the fit — for T ≠ 1 PSIS-LOO removes an example with weight 1 from a "
              "posterior that held it with weight 1/T). Pareto k > 0.7 marks examples whose estimate is "
              "unreliable (k = ∞: too few draws to fit the tail, which takes at least 21); a single draw (MAP, closed-form predictives) has nothing to reweight: its elpd is "
              "the log predictive density. The test-set numbers are in the table above."), ""]
    return lines


#: what makes two runs' numbers comparable: the same task, model, test data and sizes
_IDENTITY = ("task", "model", "test data", "smoke")


def _identity(res: dict) -> dict[str, Any]:
    test = (res.get("data") or {}).get("inputs", {}).get("test", {})
    return {"task": res.get("task"), "model": res.get("model"),
            "test data": (test.get("sha256") or test.get("source") or "?")[:12], "smoke": bool(res.get("smoke"))}


def compare_runs(dirs: list[str | Path], *, mix: bool = False) -> list[dict[str, Any]]:
    """One row per (run, method) of finished runs' results.json, with each run's task and model.

    Runs of different tasks, models, test data (by digest) or sizes (smoke) are not comparable:
    they are refused with a ValueError naming what differs, unless ``mix`` is set."""
    rows, seen = [], {}
    for d in dirs:
        f = Path(d) / "results.json"
        if not f.is_file():
            raise FileNotFoundError(f"{d} has no results.json: is it a finished bayes-lora run?")
        res = json.loads(f.read_text())
        seen[str(d)] = _identity(res)
        for r in results_table(res):
            rows.append({"run": str(d), "task": res.get("task"), "model": res.get("model"), **r})
    first, *others = list(seen.items()) or [("", {})]
    for run, ident in others:
        differ = [k for k in _IDENTITY if ident[k] != first[1][k]]
        if differ and not mix:
            what = "; ".join(f"{k}: {first[1][k]!r} in {first[0]} vs {ident[k]!r} in {run}" for k in differ)
            raise ValueError(f"these runs are not comparable ({what}); compare runs of one task, model and data, "
                             "or pass --mix to tabulate them side by side")
    return rows


__all__ = ["COLUMNS", "compare_runs", "markdown_table", "results_table", "to_csv", "write_report"]
