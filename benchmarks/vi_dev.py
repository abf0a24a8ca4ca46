"""Choose the BLoB-like VI's step sizes and prior on the SST-2 *dev* split (1,000 sentences ≥ 5
words, never the test set), and check that the result is stable across seeds: fits ``vi`` (kind
blob, the default config's other options) for every (lr, scale_lr, seed) on a finished run's
first anchor and prints the dev NLL / accuracy / ECE / MI of its 8-sample predictive next to the
anchor's (MAP). Needs a finished `make demo`. What the defaults came from (300 steps):

    python benchmarks/vi_dev.py --tied --lrs 1e-2 3e-3 1e-3 --prior-scale 0.2 --seeds 0 1
    python benchmarks/vi_dev.py --lrs 1e-4 3e-4 --scale-lrs 3e-3 1e-2 3e-2 1e-1 --prior-scale 0.2 --seeds 0 1
    python benchmarks/vi_dev.py --prior-scale 0.1 --seeds 0 [--steps 600]   # and 0.05: do q's scales settle?
    python benchmarks/vi_dev.py                     # the defaults: lr 1e-4, scale_lr 3e-2, σ_p 0.05
"""
import argparse
import itertools

from dev_split import dev_split

from bayes_lora.diagnostics.metrics import summarize
from bayes_lora.experiment.config import load_config
from bayes_lora.experiment.runner import Runner
from bayes_lora.inference.registry import fit

ap = argparse.ArgumentParser()
ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4], help="steps of q's mean")
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--steps", type=int, default=None)
ap.add_argument("--prior-scale", type=float, default=None, help="σ_p (default: the blob default)")
ap.add_argument("--scale-lrs", type=float, nargs="+", default=[3e-2], help="steps of q's scales")
ap.add_argument("--tied", action="store_true", help="one step for mean and scales (scale_lr = lr)")
args = ap.parse_args()

cfg = load_config("configs/default.toml")
r = Runner(cfg, "runs/default", data_dir="../shared/data", log=lambda m: None, progress=False)
p = r.prepare()
ctx = r.context(r.anchors(), None, r.projected_map())
dev = dev_split(cfg, p)
opts = dict(cfg.methods["vi"].options)
if args.steps:
    opts["steps"] = args.steps
S = int(cfg.evaluation.num_samples)

m = summarize(fit("map", ctx).predict(dev).probs, dev.labels)
print(f"MAP: dev NLL {m['nll']:.4f} acc {m['accuracy']:.4f} ECE {m['ece']:.2f}")
extra = {"prior_scale": args.prior_scale} if args.prior_scale else {}
for lr, slr, seed in itertools.product(args.lrs, [None] if args.tied else args.scale_lrs, args.seeds):
    slr = lr if slr is None else slr
    post = fit("vi", ctx, **{**opts, "lr": lr, "scale_lr": slr, "seed": seed, **extra})
    m = summarize(post.predict(dev, num_samples=S, seed=0).probs, dev.labels)
    st = post.info.stats
    print(f"lr {lr:g} scale_lr {slr} seed {seed}: dev NLL {m['nll']:.4f} acc {m['accuracy']:.4f} "
          f"ECE {m['ece']:.2f} MI {m['mutual_information']:.4f} (mean shift ‖μ − A‖ {st['loc_shift']:.2f}, "
          f"mean σ {st['mean_scale']:.4f}, {post.info.seconds:.0f} s)", flush=True)
