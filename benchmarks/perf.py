"""Performance side by side, measured in one run on one machine (issue 7).

(a) S = 16 predictive: bayes_lora (frozen-prefix cache + functional model) ÷ the hand loop over
    peft (write sample s into the model, run the data, repeat)              target ≤ 0.5
(b) subspace Laplace fit ÷ laplace-torch K-FAC Laplace on the full LoRA tensors of the same model,
    with both NLL / ECE: the exact GGN of the same examples in its own rank-n data subspace plus
    the isotropic prior (``hessian="lowrank"``, same MAP, same tensors), and two dense Laplaces in
    parameter subspaces: the r×r cores of the MAP's own update (same MAP) and the LoRA-XS cores
    (around their own MAP)                                                  target ≤ 0.5
(c) one curve-training step ÷ one plain LoRA step                           target ≤ 1.3
(d) NUTS effective samples of t per second: NumPyro on cached logits vs Pyro on the model
(e) the default demo's wall time and peak memory (from runs/default/results.json)

Needs a finished default run (``make demo``): it re-uses its anchors and projected MAP.
Writes the table to benchmarks/RESULTS.md.

    python benchmarks/perf.py [--run runs/default] [--data-dir ../shared/data] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default=str(REPO / "runs" / "default"))
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="fewer test examples / steps (a smoke check)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "RESULTS.md"))
    args = p.parse_args()

    import arviz as az

    from bayes_lora.diagnostics.metrics import summarize
    from bayes_lora.experiment.config import load_config
    from bayes_lora.experiment.runner import Runner
    from bayes_lora.inference.base import predict_probs
    from bayes_lora.inference.registry import fit
    from bayes_lora.lora.curve_train import CurveConfig, train_curve
    from bayes_lora.lora.spaces import FullSpace
    from bayes_lora.lora.train import TrainConfig, fine_tune

    run = Path(args.run)
    resolved = next((run / n for n in ("resolved_config.toml", "config.toml") if (run / n).is_file()), None)
    if resolved is None:  # config.toml: runs made before the resolved config got its own name
        print(f"error: {run} is not a finished run; run `make demo` first", file=sys.stderr)
        return 2
    cfg = load_config(resolved)
    rows: list[tuple[str, str, str]] = []

    # the run's model twice: plain peft (the hand loop) and bayes_lora's cached functional model
    plain = Runner(cfg.with_overrides(runtime={"prefix_cache": False}), run, data_dir=args.data_dir, progress=False,
                   log=lambda m: None)
    plain.prepare()
    runner = Runner(cfg, run, data_dir=args.data_dir, progress=False, log=lambda m: None)
    (_, cache_s) = _timed(runner.prepare)
    anchors = runner.anchors()
    test_plain, test = plain.prep.test, runner.prep.test
    if args.quick:
        idx = torch.arange(128)
        test_plain, test = test_plain.subset(idx), test.subset(idx)
    g = torch.Generator().manual_seed(0)
    S = args.samples
    thetas = anchors[torch.arange(S) % len(anchors)] + 1e-3 * torch.randn(S, anchors.shape[1], generator=g)

    # (a) predictive ------------------------------------------------------------------------
    model, layout = plain.prep.backbone.model, plain.prep.fm.layout

    @torch.no_grad()
    def hand_loop():
        out = []
        for th in thetas:
            layout.write_(model, th)
            out.append(torch.cat([test_plain.class_logits(lambda **x: model(**x).logits, b).softmax(-1)
                                  for b in test_plain.batches(64)]))
        return torch.stack(out)

    ref, hand_s = _timed(hand_loop)
    ours, ours_s = _timed(lambda: predict_probs(runner.prep.fm, test, thetas, batch_size=64))
    err = (ours - ref).abs().max().item()
    rows.append((f"(a) S={S} predictive on {len(test)} examples",
                 (f"hand loop {hand_s:.1f} s; bayes_lora {ours_s:.1f} s (+ prefix cache built once for all "
                  f"stages: {cache_s:.1f} s incl. model load); max abs Δp {err:.1e}"),
                 f"**{ours_s / hand_s:.2f}** ({(ours_s + cache_s) / hand_s:.2f} with the cache build)"))
    print(rows[-1])
    folded, fold_s = _timed(lambda: predict_probs(runner.prep.fm, test, thetas, batch_size=64, fold_samples=True))
    rows.append((f"(a′) the same S={S} samples folded into the batch (per-sample adapters, one pass)",
                 (f"loop over samples {ours_s:.1f} s; folded {fold_s:.1f} s; max abs Δp "
                  f"{(folded - ours).abs().max().item():.1e} (the default folds on GPU only)"),
                 f"**{fold_s / ours_s:.2f}**"))
    print(rows[-1])

    # (b) subspace Laplace vs K-FAC on the full LoRA tensors --------------------------------
    # both fitted on the same 500 training examples; each timed 7 times alternately after a
    # warm-up fit (laplace-torch's import and first-call costs are paid by neither), median kept
    # (fit times vary by ±10 % between repeats on this machine)
    had_map = runner.store.done("projected_map", runner.key("projected_map"))
    projected, map_s = _timed(runner.projected_map)
    map_s = 0.0 if had_map else map_s
    ctx = runner.context(anchors, None, projected)
    sub = 500
    fits = {"kfac": {"space": "full", "hessian": "kron"},
            "lowrank": {"space": "full", "hessian": "lowrank"},
            "top": {k: v for k, v in cfg.methods["laplace_top"].options.items() if k != "subset"},
            "adapter": {"space": "adapter", "hessian": "full"},
            "lora_xs": {"space": "projected", "hessian": "full"}}
    for kw in fits.values():
        fit("laplace", ctx, subset=16, **kw)
    times: dict[str, list[float]] = {k: [] for k in fits}
    posts = {}
    for _ in range(1 if args.quick else 7):
        for name, kw in fits.items():
            posts[name], sec = _timed(lambda kw=kw: fit("laplace", ctx, subset=sub, **kw))
            times[name].append(sec)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    m = {k: summarize(posts[k].predict(test).probs, test.labels) for k in fits}
    dims = {k: posts[k].info.stats["n_params"] for k in fits}

    def desc(k: str, what: str) -> str:
        return f"{what} (d = {dims[k]:,}) {med[k]:.2f} s, NLL {m[k]['nll']:.4f}, ECE {m[k]['ece']:.2f}"

    verdict = {k: "≤" if m[k]["nll"] <= m["kfac"]["nll"] else ">" for k in ("lowrank", "top", "adapter", "lora_xs")}
    rows.append((f"(b) Laplace fit ({sub} examples in the Hessian; median of {len(times['kfac'])})",
                 desc("kfac", "K-FAC on the full LoRA tensors") + "; "
                 + desc("lowrank", f"exact GGN in its rank-{posts['lowrank'].factor.vectors.shape[1]} data subspace "
                        "+ isotropic prior, same tensors") + "; "
                 + desc("top", f"the same exact GGN over the subnetwork {fits['top'].get('tensors', 'top layer + head')} "
                        "(the rest at the anchor: the backward stops at its lowest layer)") + "; "
                 + desc("adapter", "r×r cores of the MAP's own update, full Hessian") + "; "
                 + desc("lora_xs", "LoRA-XS cores, full Hessian")
                 + (f" (+ LoRA-XS MAP {map_s:.0f} s)" if map_s else " (LoRA-XS MAP from the run)"),
                 (f"**{med['lowrank'] / med['kfac']:.2f}** low-rank exact GGN (NLL {verdict['lowrank']} K-FAC's); "
                  f"{med['top'] / med['kfac']:.2f} subnetwork (NLL {verdict['top']}); "
                  f"{med['adapter'] / med['kfac']:.2f} adapter cores (NLL {verdict['adapter']}); "
                 f"{med['lora_xs'] / med['kfac']:.2f} LoRA-XS (NLL {verdict['lora_xs']})")))
    print(rows[-1])

    # (c) curve step vs plain step ----------------------------------------------------------
    steps = 10 if args.quick else 40
    c = cfg.curve
    space = FullSpace(runner.prep.fm.layout)
    cc = CurveConfig(degree=c.degree, js_weight=c.js_weight, js_batch=c.js_batch, js_grad=c.js_grad,
                     t_sampling=c.t_sampling, perturbation=c.perturbation, sigma=c.sigma, epochs=100, max_steps=steps,
                     batch_size=c.batch_size)
    plain_t, curve_t = [], []
    for _ in range(1 if args.quick else 5):  # alternately, medians: the machine's speed drifts
        plain_t.append(fine_tune(runner.prep.fm, space, runner.prep.train,
                                 TrainConfig(epochs=100, max_steps=steps, batch_size=c.batch_size)).seconds)
        curve_t.append(train_curve(runner.prep.fm, space, runner.prep.train, anchors, cc).seconds)
    per_plain, per_curve = sorted(plain_t)[len(plain_t) // 2] / steps, sorted(curve_t)[len(curve_t) // 2] / steps
    rows.append(((f"(c) training step (batch {c.batch_size}, λ = {c.js_weight}, JS on {c.js_batch} examples, "
                 f"js_grad = {c.js_grad!r}, t per {c.t_sampling})"),
                 f"plain LoRA {1000 * per_plain:.0f} ms; curve {1000 * per_curve:.0f} ms",
                 f"**{per_curve / per_plain:.2f}**"))
    print(rows[-1])

    # (d) NUTS ESS/s -------------------------------------------------------------------------
    ctx.curve = runner.curve(anchors)
    post = cfg.posterior
    cached, cached_s = _timed(lambda: fit("curve", ctx, posterior=post, inference="nuts", logit_cache=33,
                                          num_samples=1000, warmup=500, num_chains=4))
    t = cached.t.numpy()
    ess_c, rhat_c = float(az.ess(t)), float(az.rhat(t))
    exact_n = 10 if args.quick else 20
    exact, exact_s = _timed(lambda: fit("curve", ctx, posterior=post, inference="nuts", num_samples=exact_n,
                                        warmup=exact_n // 2, num_chains=1))
    ess_e = float(az.ess(exact.t.numpy()))
    err_ll = cached.info.stats["interpolation_check"]["max_abs_error"]
    rows.append(("(d) NUTS over t, effective samples per second",
                 (f"NumPyro on cached logits: 4×1000 draws, ESS {ess_c:.0f}, R-hat {rhat_c:.3f}, {cached_s:.1f} s "
                  f"(log-lik interpolation error ≤ {err_ll:.3f}); Pyro on the model: 1×{exact_n} draws, "
                  f"ESS {ess_e:.0f}, {exact_s:.0f} s"),
                 f"**{ess_c / cached_s:.0f}** vs {ess_e / exact_s:.2f} ESS/s"))
    print(rows[-1])

    # (e) the demo ---------------------------------------------------------------------------
    res = json.loads((run / "results.json").read_text())
    ran = [s for s in res.get("stages", []) if s["status"] == "ran"]
    total = sum(s["seconds"] for s in res.get("stages", []))
    last = (f"{len(ran)} stages ran in the last invocation, its wall time {res.get('wall_seconds', 0):.0f} s, "
            f"peak RSS {res.get('peak_rss_mb') or 0:.0f} MiB" if ran else
            "the last invocation ran no stage (it only reloaded them), so its wall time and RSS are not the run's")
    rows.append(("(e) default demo (`make demo`)", f"sum of stage times {total:.0f} s ({last})",
                 f"**{total / 60:.1f} min**"))
    print(rows[-1])

    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
               f"{torch.__version__}, {torch.get_num_threads()} threads, Python {platform.python_version()}")
    lines = ["# Benchmark results", "", f"Measured {time.strftime('%Y-%m-%d')} by `benchmarks/perf.py`"
             + (" --quick" if args.quick else "") + f" on: {machine}.", "",
             "| benchmark | measured | ratio |", "|---|---|---:|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"\nwritten to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
