"""Compare Laplace subspaces on the SST-2 *dev* split (never the test set): K-FAC and the exact
low-rank GGN over all LoRA tensors, and the exact GGN over subnetworks (``space="subnetwork"``)
of the top one and top two adapted layers with the head; prints dev NLL / ECE and fit time. The
default's `laplace_top` (layers 4–5 + head) was chosen with it. Needs a finished `make demo`.

    python benchmarks/laplace_dev.py
"""
from dev_split import dev_split

from bayes_lora.diagnostics.metrics import summarize
from bayes_lora.experiment.config import load_config
from bayes_lora.experiment.runner import Runner
from bayes_lora.inference.registry import fit

cfg = load_config("configs/default.toml")
r = Runner(cfg, "runs/default", data_dir="../shared/data", log=lambda m: None, progress=False)
p = r.prepare()
ctx = r.context(r.anchors(), None, r.projected_map())
dev = dev_split(cfg, p)
top2 = ["*.layer.4.*", "*.layer.5.*", "*classifier*"]
candidates = {
    "K-FAC, full LoRA": {"space": "full", "hessian": "kron"},
    "exact GGN low rank, full LoRA": {"space": "full", "hessian": "lowrank"},
    "exact GGN, top layer + head": {"space": "subnetwork", "hessian": "lowrank"},
    "exact GGN, layers 4-5 + head": {"space": "subnetwork", "hessian": "lowrank", "tensors": top2},
    "K-FAC, layers 4-5 + head": {"space": "subnetwork", "hessian": "kron", "tensors": top2},
}
m = summarize(fit("map", ctx).predict(dev).probs, dev.labels)
print(f"MAP: dev NLL {m['nll']:.4f} ECE {m['ece']:.2f}")
for name, kw in candidates.items():
    post = fit("laplace", ctx, subset=500, **kw)
    m = summarize(post.predict(dev).probs, dev.labels)
    print(f"{name} (d = {post.info.stats['n_params']:,}): dev NLL {m['nll']:.4f} ECE {m['ece']:.2f} "
          f"fit {post.info.seconds:.2f} s", flush=True)
