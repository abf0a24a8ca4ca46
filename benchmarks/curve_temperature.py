"""Choose the curve posterior's likelihood temperature on the SST-2 *dev* split (1000 sentences ≥ 5
words, never the test set): grid quadrature over t (41 points) on a finished run's curve; prints
the dev NLL, accuracy, MI and ECE of the model average per T. Needs a finished `make demo`.

    python benchmarks/curve_temperature.py
"""
import torch
from dev_split import dev_split

from bayes_lora.diagnostics.metrics import summarize
from bayes_lora.experiment.config import load_config
from bayes_lora.experiment.runner import Runner
from bayes_lora.inference.base import predict_probs
from bayes_lora.lora.spaces import FullSpace
from bayes_lora.models.likelihood import TaskLogits

cfg = load_config("configs/default.toml")
r = Runner(cfg, "runs/default", data_dir="../shared/data", log=lambda m: None, progress=False)
p = r.prepare()
anchors = r.anchors(); curve = r.curve(anchors)
dev = dev_split(cfg, p)
lik = TaskLogits(p.fm, p.train, examples=cfg.posterior.get("likelihood_examples", 256), seed=cfg.seed)
ts = torch.linspace(0, 1, 41)
with torch.no_grad():
    pts = curve(ts)
    ll = torch.stack([torch.distributions.Categorical(logits=lik.logits(FullSpace(p.fm.layout).to_theta(w))).log_prob(lik.labels).sum() for w in pts])
    probs = predict_probs(p.fm, dev, pts)  # [41, N, C]
print("train log-lik along t (every 4th):", [round(float(x), 1) for x in ll[::4]])
for T in (1, 2, 5, 10, 20, 50, 100, 1e9):
    w = torch.softmax(ll / T, 0)
    bma = (w[:, None, None] * probs).sum(0)
    # MI / ECE from 400 draws of t with the posterior's weights; NLL and accuracy of the exact average
    idx = torch.multinomial(w, 400, replacement=True, generator=torch.Generator().manual_seed(0))
    m = summarize(probs[idx], dev.labels)
    nll = float(-bma[torch.arange(len(dev)), dev.labels].clamp_min(1e-12).log().mean())
    ess = float(1 / (w ** 2).sum())
    print(f"T={T:g}: dev NLL(BMA) {nll:.4f} acc {float((bma.argmax(-1) == dev.labels).float().mean()):.4f} "
          f"MI {m['mutual_information']:.4f} ECE {m['ece']:.2f}  grid-ESS {ess:.1f}  E[t] {float((w * ts).sum()):.3f}", flush=True)
