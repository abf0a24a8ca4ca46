"""Curve diversity levers on the SST-2 dev split (issue 19, item 1): can the curve posterior's
mutual information reach the ensemble's without losing its NLL?

For each setting of the curve's training (JS weight λ, free or anchored, bends per segment,
perturbation scale, learning rate) a curve is trained through the default config's anchors (the
anchors are a stage of ``--out``: copy ``runs/default/stages/anchor__*`` there to reuse them), and the curve's model average is scored on ``--dev-examples`` sentences of the dev
split, exactly in t: the dev and the likelihood examples' logits at ``--knots`` knots, interpolated
at 401 values of t, weighted by p(t | D) ∝ p(t) p(D | t)^{1/T} for every T of the curve's
``temperature = "dev"`` grid. Printed per setting: the dev NLL, accuracy and MI at the T of lowest
dev NLL (what ``temperature = "dev"`` would pick) and at the flat posterior, against the anchors'
ensemble on the same sentences. Nothing here reads the test set.

    python benchmarks/curve_levers.py [--out runs/bench-levers] [--data-dir ../shared/data] [--dev-examples 1000]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]

#: the settings measured: name → overrides of the default's [curve] table
LEVERS = {
    "default (anchored, λ 0.05)": {},
    "λ 0.5": {"js_weight": 0.5},
    "λ 2": {"js_weight": 2.0},
    "free": {"anchored": False},
    "free, λ 2": {"anchored": False, "js_weight": 2.0},
    "degree 3 (two bends)": {"degree": 3},
    "σ 1e-2": {"sigma": 1e-2},
    "lr 1e-3": {"lr": 1e-3},
}


def mixture_metrics(weights: np.ndarray, probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """NLL, accuracy and mean mutual information of Σ_g w_g p_g (probs [G, n, C], weights [G])."""
    mean = np.einsum("g,gnc->nc", weights, probs)
    eps = 1e-12
    h_mean = -(mean * np.log(mean + eps)).sum(-1)
    h_each = -(probs * np.log(probs + eps)).sum(-1)  # [G, n]
    mi = h_mean - weights @ h_each
    return {"nll": float(-np.log(mean[np.arange(len(labels)), labels] + eps).mean()),
            "accuracy": float((mean.argmax(-1) == labels).mean()), "mi": float(mi.mean())}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "default.toml"))
    p.add_argument("--out", default=str(REPO / "runs" / "bench-levers"), help="run folder (stages are re-used)")
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--dev-examples", type=int, default=1000)
    p.add_argument("--knots", type=int, default=33)
    p.add_argument("--only", nargs="*", default=None, help="names of LEVERS to run (default: all)")
    args = p.parse_args()

    from bayes_lora.experiment.config import load_config
    from bayes_lora.experiment.runner import Runner
    from bayes_lora.inference.curve import DEV_TEMPERATURE_GRID, dev_t_grid
    from bayes_lora.models import CurvePosteriorSpec, TaskLogits

    base = load_config(args.config)
    # a method that reads the dev split, so that the runner loads and caches it; never fitted here
    cfg = base.with_overrides(data={"dev_examples": args.dev_examples},
                              methods={"dev_reader": {"method": "curve", "inference": "grid",
                                                      "posterior": {"temperature": "dev"}}})
    runner = Runner(cfg, args.out, data_dir=args.data_dir, progress=False, log=lambda m: None)
    t0 = time.perf_counter()
    prep = runner.prepare()
    anchors = runner.anchors()
    fm, dev = prep.fm, prep.dev
    labels = dev.labels.long().cpu().numpy()
    with torch.no_grad():
        anchor_probs = np.stack([TaskLogits(fm, dev).logits(a).softmax(-1).double().numpy() for a in anchors])
    ens = mixture_metrics(np.full(len(anchors), 1 / len(anchors)), anchor_probs, labels)
    print(f"prepared in {time.perf_counter() - t0:.0f} s; {len(dev)} dev sentences, {len(prep.train)} training sentences")
    print(f"ensemble of {len(anchors)} anchors: dev NLL {ens['nll']:.4f}, accuracy {ens['accuracy']:.4f}, "
          f"MI {ens['mi']:.4f}")
    spec = CurvePosteriorSpec.from_dict({**base.posterior, "temperature": 1.0})
    rows = []
    for name, over in LEVERS.items():
        if args.only and name not in args.only:
            continue
        start = time.perf_counter()
        runner.cfg = cfg.with_overrides(curve=over)
        curve = runner.curve(anchors)  # the curve stage of --out, retrained when the setting changes
        grid = dev_t_grid(runner.context(anchors, curve), spec, curve, knots=args.knots)  # what "dev" reads
        out = {temp: mixture_metrics(grid.weights(temp), grid.dev_probs, labels) for temp in DEV_TEMPERATURE_GRID}
        best = min(out, key=lambda k: out[k]["nll"])
        rows.append({"setting": name, "overrides": over, "best_temperature": best, "at_best": out[best],
                     "flat": out[DEV_TEMPERATURE_GRID[-1]], "by_temperature": {str(k): v for k, v in out.items()},
                     "seconds": time.perf_counter() - start})
        b, f = out[best], out[DEV_TEMPERATURE_GRID[-1]]
        print(f"{name:28s} T*={best:>7g}: NLL {b['nll']:.4f} acc {b['accuracy']:.4f} MI {b['mi']:.4f} "
              f"({b['mi'] / ens['mi']:.2f}× ensemble) | flat: NLL {f['nll']:.4f} acc {f['accuracy']:.4f} "
              f"MI {f['mi']:.4f} ({f['mi'] / ens['mi']:.2f}×)  [{time.perf_counter() - start:.0f} s]", flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "levers.json").write_text(json.dumps({"ensemble": ens, "dev_examples": len(dev),
                                                             "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
