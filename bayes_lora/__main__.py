"""``python -m bayes_lora``: until the staged runner lands, fine-tune the default model (MAP)
on SST-2 and print test accuracy, NLL and ECE."""
from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bayes-lora", description=__doc__)
    p.add_argument("command", nargs="?", default="run", choices=["run"])
    p.add_argument("config", nargs="?", default=None, help="(reserved for the runner's TOML config)")
    p.add_argument("--out", default="runs/default")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-examples", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--smoke", action="store_true", help="tiny run: 200 examples, 0.5 epoch")
    args = p.parse_args(argv)
    import torch

    from .data import encode, load_sst2
    from .diagnostics import summarize
    from .inference.base import predict_probs
    from .lora import FullSpace, FunctionalModel
    from .lora.backbone import load_backbone
    from .lora.io import save_adapter
    from .lora.train import TrainConfig, fine_tune

    n, epochs = (200, 0.5) if args.smoke else (args.train_examples, args.epochs)
    try:
        train = load_sst2("train", data_dir=args.data_dir, max_examples=n, seed=args.seed)
        test = load_sst2("test", data_dir=args.data_dir)
        bb = load_backbone()
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    tr, te = encode(train, bb.tokenizer, max_length=64), encode(test, bb.tokenizer, max_length=64)
    fm = FunctionalModel(bb.model)
    print(f"fine-tuning LoRA r={bb.lora.r} on {len(tr)} SST-2 sentences, {epochs} epochs ...", flush=True)
    t0 = time.perf_counter()
    res = fine_tune(fm, FullSpace(fm.layout), tr, TrainConfig(epochs=epochs, seed=args.seed), progress=True)
    fit_s = time.perf_counter() - t0
    probs = predict_probs(fm, te, res.latent[None])
    m = summarize(probs, te.labels)
    save_adapter(f"{args.out}/map_seed{args.seed}.safetensors", res.latent, fm.layout, bb.metadata())
    print(f"MAP on {len(te)} test sentences: accuracy {m['accuracy']:.4f}  NLL {m['nll']:.4f}  "
          f"ECE {m['ece']:.2f} %  (fit {fit_s:.0f} s; adapter saved in {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
