"""B-LoRA-XS at its own ranks, chosen on the SST-2 *dev* split (never the test set): the LoRA-XS
MAP (rank-k cores between the frozen truncated-SVD factors of each adapted base weight, and the
head) for each rank k × learning rate, against the default's LoRA anchors (rank 8) on the same
1,000 dev sentences; then, at the chosen (k, lr), SWAG and the Laplace over the cores. The rule,
fixed before looking: the lowest dev NLL of the MAP. `configs/sst2_lora_xs.toml` was chosen
with it. The LoRA anchors are those of `--run` (a run of configs/default.toml; trained there if
missing).

    python benchmarks/lora_xs_dev.py            # the grid searched: k 16…128 × lr 1e-3…5e-3 × 2/4 epochs
    python benchmarks/lora_xs_dev.py --ranks 128 --lrs 2e-3 --epochs 2   # the methods at the choice

Then, at the chosen MAP, the Laplace and SWAG over its cores, SWAG for several snapshot counts K
(the covariance's rank) with the share of the SWAG trajectory's variance in its top directions.
"""
import argparse
import dataclasses
import time

from dev_split import dev_split

from bayes_lora.diagnostics.metrics import summarize, variance_shares
from bayes_lora.experiment.config import load_config
from bayes_lora.experiment.runner import Runner
from bayes_lora.inference.base import fit_projected_map, predict_probs
from bayes_lora.inference.laplace import MAX_DENSE_DIM
from bayes_lora.inference.registry import fit
from bayes_lora.inference.swag import SwagPosterior

ap = argparse.ArgumentParser()
ap.add_argument("--config", default="configs/default.toml")
ap.add_argument("--run", default="runs/default", help="a run of the config whose anchors are the LoRA reference")
ap.add_argument("--ranks", default="16,25,32,64,128")
ap.add_argument("--lrs", default="1e-3,2e-3,5e-3")
ap.add_argument("--epochs", default="2,4", help="epochs of the cores' fine-tune, comma-separated ('' = the anchors')")
ap.add_argument("--methods", default="swag,laplace", help="fitted around the chosen MAP ('' = none)")
ap.add_argument("--swag-snapshots", default="2,4,8,16,32", help="SWAG's K (covariance rank K - 1) at the chosen MAP")
ap.add_argument("--data-dir", default="../shared/data")
args = ap.parse_args()

cfg = load_config(args.config)
r = Runner(cfg, args.run, data_dir=args.data_dir, log=lambda m: None, progress=False)
p = r.prepare()
dev = dev_split(cfg, p, args.data_dir)
anchors = r.anchors()


def row(name, probs, extra=""):
    m = summarize(probs, dev.labels)
    print(f"| {name} | {m['accuracy']:.4f} | {m['nll']:.4f} | {m['ece']:.2f} | {extra} |", flush=True)
    return m


print(f"dev: {len(dev)} sentences of {cfg.data.task}; LoRA rank {cfg.lora.r} on {list(cfg.lora.target_modules)}")
print("| model | dev accuracy | dev NLL | dev ECE % | |\n|---|---:|---:|---:|---|")
for i, theta in enumerate(anchors):
    row(f"LoRA anchor {i} (r = {cfg.lora.r}, {p.fm.layout.dim:,} numbers)", predict_probs(p.fm, dev, theta[None]))
best = None
base = r._train_config()
for k in [int(x) for x in args.ranks.split(",")]:
    for lr in [float(x) for x in args.lrs.split(",")]:
        for epochs in [float(x) for x in args.epochs.split(",")] if args.epochs else [base.epochs]:
            start = time.perf_counter()
            pm = fit_projected_map(p.fm, p.train, dataclasses.replace(base, epochs=epochs), lr=lr, rank=k)
            fm = p.fm.with_layout(pm.space.layout)
            m = row(f"LoRA-XS MAP k = {k}, lr {lr:g}, {epochs:g} epochs ({pm.space.dim:,} numbers)",
                    predict_probs(fm, dev, pm.space.to_theta(pm.core)[None]), f"{time.perf_counter() - start:.0f} s")
            if best is None or m["nll"] < best[0]:
                best = (m["nll"], k, lr, epochs, pm)
_, k, lr, epochs, pm = best
print(f"chosen (lowest dev NLL): k = {k}, lr = {lr:g}, {epochs:g} epochs")
ctx = dataclasses.replace(r.context(anchors, None), projected=pm, projected_rank=k, projected_lr=lr, dev=dev)
methods = [m for m in args.methods.split(",") if m]
if "laplace" in methods:
    hessian = "full" if pm.space.dim <= MAX_DENSE_DIM else "lowrank"
    post = fit("laplace", ctx, space="projected", hessian=hessian, subset=500, prior="dev")
    row(f"Laplace ({hessian}) over the k = {k} cores", post.predict(dev).probs, f"fit {post.info.seconds:.0f} s")
if "swag" in methods:
    # B-LoRA-XS's second finding, low-rank weight covariances: the SWAG covariance's rank K − 1 (K
    # snapshots) against dev NLL, and how few eigen-directions hold the variance of the trajectory
    # (the low-rank part D Dᵀ/(K − 1) alone, without SWAG's diagonal half)
    counts = [int(x) for x in args.swag_snapshots.split(",")]
    for snapshots in counts:
        for cov in ("swag", "diag") if snapshots == max(counts) else ("swag",):
            post = fit("swag", ctx, space="projected", snapshots=snapshots, collect_every=10, covariance=cov,
                       scale="dev")
            extra = f"scale {post.scale:g}, fit {post.info.seconds:.0f} s"
            if cov == "swag":
                low = SwagPosterior(post.fm, post.space, post.mean, post.var, post.deviations,
                                    covariance="low_rank").covariance_spectrum(top=10)
                shares = variance_shares(low, (1, 3, 10))
                extra += "; trajectory's variance in its top 1 / 3 / 10 directions " + " / ".join(
                    f"{shares[j]:.0%}" for j in (1, 3, 10))
            row(f"SWAG ({cov}, K = {snapshots}) over the k = {k} cores",
                post.predict(dev, num_samples=cfg.evaluation.num_samples).probs, extra)
