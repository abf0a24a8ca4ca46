"""Frozen-prefix cache on the default model: ``predict_probs`` for S θ with and without it.

all-MiniLM-L6-v2 (6 layers) with LoRA on layers 4 and 5 only, SST-2 test split: the embeddings
and layers 0–3 are run once per example (cache build, timed on its own) instead of once per
example and θ. Prints the timings, the speed-up, and the largest difference of the probabilities.

    .venv/bin/python benchmarks/prefix_cache.py [--data-dir ../shared/data] [--samples 8]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from bayes_lora.data import encode, load_sst2
from bayes_lora.inference.base import predict_probs
from bayes_lora.lora import FunctionalModel
from bayes_lora.lora.backbone import LoraSettings, load_backbone
from bayes_lora.lora.prefix import first_adapted_layer, with_prefix_cache


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--layers", default="4,5", help="adapted layers (comma separated)")
    ap.add_argument("--data-dir", default=os.environ.get("BAYES_LORA_DATA_DIR", "/work/shared/data"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--limit", type=int, default=None, help="use only the first N examples")
    ap.add_argument("--samples", type=int, default=8, help="S, the number of θ")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="timings are the best of this many runs")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    layers = tuple(int(x) for x in args.layers.split(","))
    bb = load_backbone(args.model, kind="classifier", num_labels=2, lora=LoraSettings(layers=layers))
    fm = FunctionalModel(bb.model)
    data = load_sst2(args.split, data_dir=args.data_dir)
    task = encode(data, bb.tokenizer, max_length=args.max_length)
    if args.limit:
        task = task.subset(torch.arange(min(args.limit, len(task))))
    g = torch.Generator().manual_seed(0)
    base = fm.layout.read(fm.model)
    thetas = base + 0.05 * torch.randn(args.samples, fm.layout.dim, generator=g)

    print(f"model {args.model}: adapted layers {layers}, first adapted layer "
          f"{first_adapted_layer(fm.layout)}, D = {fm.layout.dim}; torch threads {torch.get_num_threads()}")
    print(f"data: SST-2 {args.split}, N = {len(task)}, max_length {args.max_length}, "
          f"S = {args.samples}, batch size {args.batch_size}")

    (sfm, cached), build_s = timed(lambda: with_prefix_cache(fm, task))
    print(f"cache build: {build_s:.2f} s  ({cached.nbytes / 2**20:.1f} MiB, hidden {list(cached.hidden.shape)}, "
          f"key {cached.key})")

    full_times, cached_times = [], []
    for _ in range(max(1, args.repeats)):  # interleaved, so load from other processes hits both
        p_full, t = timed(lambda: predict_probs(fm, task, thetas, batch_size=args.batch_size))
        full_times.append(t)
        p_cached, t = timed(lambda: predict_probs(sfm, cached, thetas, batch_size=args.batch_size))
        cached_times.append(t)
    t_full, t_cached = min(full_times), min(cached_times)
    diff = float((p_full - p_cached).abs().max())
    agree = float((p_full.argmax(-1) == p_cached.argmax(-1)).float().mean())

    print(f"predict_probs without cache: {t_full:.2f} s   (runs: {', '.join(f'{x:.2f}' for x in full_times)})")
    print(f"predict_probs with cache:    {t_cached:.2f} s   (runs: {', '.join(f'{x:.2f}' for x in cached_times)})")
    print(f"speed-up: {t_full / t_cached:.2f}x (prediction only), "
          f"{t_full / (t_cached + build_s):.2f}x (including the cache build)")
    print(f"max |p_full - p_cached| = {diff:.3g}; argmax agreement {agree:.4f}")
    return {"build_s": build_s, "full_s": t_full, "cached_s": t_cached, "max_abs_diff": diff}


if __name__ == "__main__":
    main()
