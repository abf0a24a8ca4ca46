"""Every inference method on the real default model, one table (issue 4, deliverable 5).

Runs (or re-uses the finished stages of) the default config — all-MiniLM-L6-v2 + LoRA on
SST-2, map / ensemble / mc_dropout / laplace / swag / vi / curve (NUTS, SVI) — and prints the
comparison table with, for every Bayesian method, whether its NLL and ECE are at or below MAP's.

    python benchmarks/compare_methods.py [--config configs/default.toml] [--out runs/default]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(REPO / "configs" / "default.toml"))
    p.add_argument("--out", default=str(REPO / "runs" / "default"))
    p.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()

    import torch

    from bayes_lora.experiment.config import load_config
    from bayes_lora.experiment.report import markdown_table, results_table
    from bayes_lora.experiment.runner import Runner

    t0 = time.perf_counter()
    res = Runner(load_config(args.config), args.out, data_dir=args.data_dir, smoke=args.smoke, progress=False).run()
    print(f"\n{res['model']} on {res['task']} ({res['data']['test_examples']} test examples), "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - t0:.0f} s\n")
    print(markdown_table(results_table(res)))
    m = res["methods"].get("map")
    if m is None:
        return 0
    print("Bayesian methods vs MAP (NLL, ECE at or below MAP's?):")
    for label, r in res["methods"].items():
        if label == "map":
            continue
        nll_ok, ece_ok = r["nll"] <= m["nll"], r["ece"] <= m["ece"]
        print(f"  {label:12s} NLL {r['nll']:.4f} ({'≤' if nll_ok else '>'} {m['nll']:.4f})  "
              f"ECE {r['ece']:.2f} ({'≤' if ece_ok else '>'} {m['ece']:.2f})  "
              f"{'ok' if nll_ok and ece_ok else 'WORSE THAN MAP'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
