"""Choose a task's fine-tuning settings on its *dev* split (never the test set): one anchor per
candidate (seed 0), MAP's dev accuracy / MCC / NLL / ECE, and optionally the dev NLL / ECE of
the Laplace and SWAG fits around the best anchor. The RTE and CoLA configs' anchor settings
were chosen with it.

    python benchmarks/task_dev.py configs/rte_minilm.toml --lr 5e-4,1e-3,2e-3 --epochs 2,3
"""
import argparse
import dataclasses
import itertools
import time

from dev_split import dev_split

from bayes_lora.diagnostics.metrics import matthews_corrcoef, summarize
from bayes_lora.experiment.config import load_config
from bayes_lora.experiment.runner import Runner
from bayes_lora.inference.base import Needs
from bayes_lora.inference.registry import fit

ap = argparse.ArgumentParser()
ap.add_argument("config")
ap.add_argument("--lr", default="5e-4,1e-3,2e-3")
ap.add_argument("--epochs", default="2")
ap.add_argument("--layers", default="", help="adapted layers, e.g. 4,5 (default: the config's)")
ap.add_argument("--data-dir", default="../shared/data")
ap.add_argument("--out", default="runs/task_dev")
ap.add_argument("--train-examples", type=int, default=0, help="training examples (default: the config's)")
ap.add_argument("--methods", action="store_true", help="also the Laplace / SWAG fits around the best anchor")
args = ap.parse_args()

base = load_config(args.config)
best, shared = None, None
for lr, epochs in itertools.product(args.lr.split(","), args.epochs.split(",")):
    lora = {"layers": [int(x) for x in args.layers.split(",")]} if args.layers else {}
    data = {"train_examples": args.train_examples} if args.train_examples else {}
    cfg = base.with_overrides(anchors={"count": 1, "lr": float(lr), "epochs": float(epochs)},
                              methods={"map": {}}, lora=lora, data=data)
    r = Runner(cfg, f"{args.out}/{cfg.name}", data_dir=args.data_dir, log=lambda m: None, progress=False)
    if shared is not None and not args.layers:  # same model and data: load and cache them once
        r.prep, dev = dataclasses.replace(shared[0], cfg=cfg), shared[1]
    else:
        p = r.prepare()
        dev = dev_split(cfg, p, args.data_dir)
        shared = (p, dev)
        if cfg.model.kind == "causal_lm":  # the floor: the base model's dev scores
            z = summarize(fit("zero_shot", r.context(None, None)).predict(dev).probs, dev.labels)
            print(f"{cfg.name} zero-shot: dev accuracy {z['accuracy']:.4f} NLL {z['nll']:.4f} ECE {z['ece']:.2f}",
                  flush=True)
    start = time.perf_counter()
    ctx = r.context(r.anchors(), None)
    post = fit("map", ctx)
    probs = post.predict(dev).probs
    m, mcc = summarize(probs, dev.labels), matthews_corrcoef(probs, dev.labels)
    print(f"{cfg.name} lr {lr} epochs {epochs}: dev accuracy {m['accuracy']:.4f} MCC {mcc:.4f} "
          f"NLL {m['nll']:.4f} ECE {m['ece']:.2f} (n = {len(dev)}, {time.perf_counter() - start:.0f} s)",
          flush=True)
    if best is None or m["nll"] < best[0]:
        best = (m["nll"], lr, epochs, r, ctx, dev)
if args.methods and best is not None:
    _, lr, epochs, r, ctx, dev = best
    if Needs.PROJECTED_MAP in r.needs():
        ctx.projected = r.projected_map()
    for label, m_cfg in base.methods.items():
        if m_cfg.method not in ("laplace", "swag"):
            continue
        post = fit(m_cfg.method, ctx, **m_cfg.options)
        m = summarize(post.predict(dev, num_samples=base.evaluation.num_samples).probs, dev.labels)
        print(f"  {label} around lr {lr} / {epochs} epochs: dev NLL {m['nll']:.4f} ECE {m['ece']:.2f}", flush=True)
