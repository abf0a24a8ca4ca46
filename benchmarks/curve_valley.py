"""Curve valley on the real default model (issue 3, deliverable 6).

Fine-tunes anchors of all-MiniLM-L6-v2 + LoRA on SST-2, trains an anchored Bézier curve through
them (the default config's curve options), and prints, measured in this one run:

* the loss barrier of the straight line between the end anchors and of the trained curve
  (max_t L(t) − max(L(0), L(1)), test NLL) and their ratio (target ≤ 0.10);
* accuracy at the midpoint of every curve segment and at the worst point of the curve versus
  the best anchor (target: at most 0.5 points below);
* the mutual information of the curve's model average (t uniform along the curve, and the
  exact posterior over t on a grid) versus the ensemble of its anchors, with accuracy and NLL.

Uses the default config's settings with two anchors (one segment: the straight line and the
curve join the same two optima, as LoRA-Curve measures barriers); stages are cached in ``--out``.

    python benchmarks/curve_valley.py [--anchors 2] [--out runs/bench-curve] [--data-dir ../shared/data]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "default.toml"))
    p.add_argument("--anchors", type=int, default=2, help="number of anchors (curve segments + 1)")
    p.add_argument("--out", default=str(REPO / "runs" / "bench-curve"), help="run folder (stages are re-used)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--points", type=int, default=21, help="points of the uniform average along the curve")
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()

    from bayes_lora.diagnostics.metrics import summarize
    from bayes_lora.experiment.config import load_config
    from bayes_lora.experiment.runner import Runner
    from bayes_lora.inference.base import predict_probs

    cfg = load_config(args.config)
    if args.anchors != cfg.anchors.count:
        cfg = cfg.with_overrides(anchors={"count": args.anchors, "seeds": []})
    t0 = time.perf_counter()
    # the run's own stages (anchors, curve, paths) plus two extra method stages; the run's
    # results.json and report are left alone
    runner = Runner(cfg, args.out, data_dir=args.data_dir, smoke=args.smoke, progress=False, log=lambda m: None)
    runner.prepare()
    anchors = runner.anchors()
    curve = runner.curve(anchors)
    paths = runner.paths(curve)
    ctx = runner.context(anchors, curve)
    extra = {"bench_ensemble": {"method": "ensemble"},
             "bench_curve_grid": {"method": "curve", "inference": "grid", "grid_points": 101, "num_samples": 16}}
    runner.cfg = runner.cfg.with_overrides(methods={**{k: {"method": m.method, **m.options}
                                                       for k, m in runner.cfg.methods.items()}, **extra})
    res = {label: runner.evaluate_method(label, runner.fit_method(label, ctx)) for label in extra}
    lin, cur = paths["linear"], paths["curve"]
    ratio = cur["barrier"] / lin["barrier"] if lin["barrier"] > 0 else float("nan")

    test, fm = runner.prep.test, runner.prep.fm
    members = runner.predictions("bench_ensemble")["probs"]  # one row per anchor: no new forward passes
    anchor_acc = [summarize(p[None], test.labels)["accuracy"] for p in members]
    K = curve.segments
    mids = [(k + 0.5) / K for k in range(K)]
    with torch.no_grad():
        mid_thetas = curve(torch.tensor(mids))
        uniform = curve(torch.linspace(0, 1, args.points))
    mid_probs = [predict_probs(fm, test, th[None])[0] for th in mid_thetas]
    mid_acc = [summarize(pr[None], test.labels)["accuracy"] for pr in mid_probs]
    uni = summarize(predict_probs(fm, test, uniform), test.labels)
    ens, post = res["bench_ensemble"], res["bench_curve_grid"]
    best = max(anchor_acc)

    print(f"\nCurve valley — {cfg.model.name} on {cfg.data.task}, {args.anchors} anchors, "
          f"{len(test)} test examples, {torch.get_num_threads()} threads ({time.perf_counter() - t0:.0f} s)")
    print(f"linear barrier (test NLL)     {lin['barrier']:.4f}")
    print(f"curve barrier (test NLL)      {cur['barrier']:.4f}")
    print(f"ratio curve / linear          {ratio:.3f}   (target ≤ 0.10)  {'PASS' if ratio <= 0.10 else 'MISS'}")
    print(f"anchor accuracies             {', '.join(f'{a:.4f}' for a in anchor_acc)}")
    print(f"segment-midpoint accuracies   {', '.join(f'{a:.4f}' for a in mid_acc)}")
    print(f"worst accuracy on the curve   {min(cur['accuracy']):.4f} (grid of {len(cur['t'])}); "
          f"straight line: {min(lin['accuracy']):.4f}")
    gap = 100 * (best - min(mid_acc))
    print(f"midpoint vs best anchor       {-gap:+.2f} points   (target ≥ −0.5)  {'PASS' if gap <= 0.5 else 'MISS'}")
    # paired bootstrap over test sentences: how much of that gap is sampling noise
    worst = mid_probs[min(range(K), key=lambda k: mid_acc[k])]
    diff = ((worst.argmax(-1) == test.labels).float()
            - (members[max(range(len(anchor_acc)), key=lambda i: anchor_acc[i])].argmax(-1) == test.labels).float())
    g = torch.Generator().manual_seed(0)
    boots = torch.stack([diff[torch.randint(len(diff), (len(diff),), generator=g)].mean() for _ in range(2000)])
    lo, hi = (100 * torch.quantile(boots, q).item() for q in (0.025, 0.975))
    print(f"  paired bootstrap 95 % interval of that difference: [{lo:+.2f}, {hi:+.2f}] points "
          f"(SE {100 * boots.std().item():.2f}; {int((diff != 0).sum())} of {len(diff)} sentences change)")
    print("\n| predictive | accuracy | NLL | ECE % | MI |\n|---|---:|---:|---:|---:|")
    print(f"| ensemble of anchors | {ens['accuracy']:.4f} | {ens['nll']:.4f} | {ens['ece']:.2f} | "
          f"{ens['mutual_information']:.5f} |")
    print(f"| curve, t uniform ({args.points} points) | {uni['accuracy']:.4f} | {uni['nll']:.4f} | {uni['ece']:.2f} | "
          f"{uni['mutual_information']:.5f} |")
    print(f"| curve, posterior over t (grid) | {post['accuracy']:.4f} | {post['nll']:.4f} | {post['ece']:.2f} | "
          f"{post['mutual_information']:.5f} |")
    summary = {"linear_barrier": lin["barrier"], "curve_barrier": cur["barrier"], "ratio": ratio,
               "anchor_accuracy": anchor_acc, "midpoint_accuracy": mid_acc, "midpoint_gap_ci95": [lo, hi],
               "uniform_curve": uni,
               "ensemble": ens, "curve_posterior": post}
    (Path(args.out) / "curve_valley.json").write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
