"""``bayes-lora`` / ``python -m bayes_lora``: run a config, or tabulate finished runs.

    bayes-lora run [CONFIG] [--out DIR] [--data-dir DIR] [--device cpu|cuda|auto] [--seeds 0,1,2] [--smoke]
                   [--force] [--debug]
    bayes-lora validate CONFIG [CONFIG ...] [--device cpu|cuda|auto]
    bayes-lora compare DIR [DIR ...]

Bad input (a config error, a missing data file, mismatched anchors, a run folder in use or
holding another run, ...) ends with exit code 2 and one message naming what is wrong; ``--debug``
shows the traceback.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from importlib import resources
from pathlib import Path

#: errors that mean "your input is wrong", not "bayes_lora is broken"
EXIT_BAD_INPUT = 2

#: the values of --device (those of runtime.device)
DEVICE_CHOICES = ("cpu", "cuda", "auto")


def default_config_path() -> Path:
    """The embedded default config (the same file as ``configs/default.toml``)."""
    return Path(str(resources.files("bayes_lora.experiment") / "default.toml"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bayes-lora", description="Bayesian inference over LoRA adapters.")
    sub = p.add_subparsers(dest="command")
    r = sub.add_parser("run", help="run a config's staged pipeline (re-runs skip finished stages)")
    r.add_argument("config", nargs="?", default=None, help="TOML config (default: the embedded default)")
    r.add_argument("--out", default=None, help="output folder (default: runs/<config name>)")
    r.add_argument("--data-dir", default=None, help="the data folder: the built-in tasks' files (sst2/, rte/, "
                   "cola/, arc_easy/, ...) and the start of a [data.task]'s relative paths (default: "
                   "$BAYES_LORA_DATA_DIR, else ../shared/data of the current folder or of the repository)")
    r.add_argument("--device", default=None, choices=DEVICE_CHOICES, help="where the model, data and caches "
                   "live (overrides runtime.device; auto = cuda when a GPU is visible, else cpu)")
    r.add_argument("--seeds", default=None, help="replicates: the whole run once per seed (comma-separated, e.g. "
                   "0,1,2) on the same data, into OUT/seed-<s>/, then mean ± sd per method and the NumPyro "
                   "comparison against MAP in OUT/report.md (overrides the config's seeds; default OUT: "
                   "runs/<config name>-seeds)")
    r.add_argument("--smoke", action="store_true", help="the same stages at toy sizes (seconds)")
    r.add_argument("--force", action="store_true", help="reuse an --out that holds the finished run of another "
                   "config or other data (its results are replaced; stages keyed differently are recomputed)")
    r.add_argument("--quiet", action="store_true", help="no progress bars")
    r.add_argument("--debug", action="store_true", help="show tracebacks")
    v = sub.add_parser("validate", help="check configs without running them (keys, values, tasks, methods; "
                       "the memory estimate when the model is on this machine)")
    v.add_argument("configs", nargs="+")
    v.add_argument("--device", default=None, choices=DEVICE_CHOICES, help="check with this runtime.device")
    v.add_argument("--debug", action="store_true")
    c = sub.add_parser("compare", help="tabulate finished runs")
    c.add_argument("dirs", nargs="+")
    c.add_argument("--csv", default=None, help="also write the table as CSV")
    c.add_argument("--mix", action="store_true", help="tabulate runs of different tasks, models or data side by side")
    c.add_argument("--debug", action="store_true")
    return p


def _bad_input_types():
    from ..lora.train import NumericalError
    from .distributed import StageFailed
    from .lock import RunFolderBusy

    return (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, KeyError,
            NumericalError, StageFailed, RunFolderBusy)


class _Interrupts:
    """Whether Ctrl-C was pressed during this command. A SIGINT that lands inside an extension
    module's import (numpy's, while torch loads) can surface as an ImportError instead of a
    KeyboardInterrupt, and importing again then fails too; the flag tells such an error from a
    real one."""

    seen = False

    @classmethod
    def install(cls):
        """Watch SIGINT (it still raises KeyboardInterrupt); returns a function restoring the
        previous handler (a no-op outside the main thread, where no handler can be set)."""
        import signal
        import threading

        cls.seen = False
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def on_sigint(signum, frame):
            cls.seen = True
            raise KeyboardInterrupt

        previous = signal.signal(signal.SIGINT, on_sigint)
        return lambda: signal.signal(signal.SIGINT, previous)


def _interrupted() -> int:
    print("interrupted: finished stages are kept; run the same command again to resume", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help"):
        argv = ["run", *argv]
    args = _parser().parse_args(argv)
    restore = _Interrupts.install()
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "validate":
            return _validate(args)
        return _run(args)
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as e:
        if _Interrupts.seen:  # an import broken by Ctrl-C: the interruption, not an error of ours
            return _interrupted()
        if not isinstance(e, _bad_input_types()):
            raise
        if args.debug:
            traceback.print_exc()
        msg = str(e).strip("'\"") or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        if not args.debug:
            print("(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        restore()


def _run(args) -> int:
    from .config import load_config
    from .distributed import relaunch_under_torchrun
    from .runner import Runner

    path = Path(args.config) if args.config else default_config_path()
    cfg = _with_device(load_config(path), args.device)  # a bad config fails here, before any process is started
    seeds = _parse_seeds(args.seeds) if args.seeds is not None else cfg.seeds
    relaunch_under_torchrun(sys.argv[1:])
    if seeds:
        return _run_seeds(args, cfg, seeds)
    out = Path(args.out) if args.out else Path("runs") / (cfg.name + ("-smoke" if args.smoke else ""))
    # --data-dir > $BAYES_LORA_DATA_DIR > ../shared/data (resolved by the Runner, which logs and records it)
    runner = Runner(cfg, out, data_dir=args.data_dir, smoke=args.smoke, progress=False if args.quiet else None,
                    force=args.force)
    results = runner.run()
    if not results:  # a non-main process of a distributed run: the main one reports
        return 0
    from .report import markdown_table, results_table

    print(markdown_table(results_table(results), ("ood_auroc",) if results.get("ood_task") else ()))
    return 0


def _parse_seeds(text: str) -> tuple[int, ...]:
    """``--seeds 0,1,2`` as a tuple; a ValueError naming the option for anything else."""
    try:
        seeds = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise ValueError(f"--seeds {text!r}: give comma-separated non-negative integers, e.g. --seeds 0,1,2") from None
    if len(seeds) < 2 or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds {text!r}: give at least two distinct non-negative integers, e.g. --seeds 0,1,2")
    return seeds


def _run_seeds(args, cfg, seeds) -> int:
    from .seeds import run_seeds, summary_table

    out = Path(args.out) if args.out else Path("runs") / (cfg.name + "-seeds" + ("-smoke" if args.smoke else ""))
    results = run_seeds(cfg, out, seeds, data_dir=args.data_dir, smoke=args.smoke,
                        progress=False if args.quiet else None, force=args.force)
    if results:
        print(summary_table(results))
    return 0


def _with_device(cfg, device: str | None):
    """``cfg`` with ``runtime.device`` set by ``--device`` (unchanged without it)."""
    return cfg if device is None else cfg.with_overrides(runtime={"device": device})


def _validate(args) -> int:
    """Load and check every config (what ``run`` checks before loading anything) and the device it
    asks for; print its memory estimate when its model folder is on this machine. The first bad
    config stops with exit code 2 naming it and the key. A config asking for a GPU this machine
    lacks is valid (a note says so: it is meant for another machine), unless ``--device`` asked
    for that device here."""
    import torch

    from ..lora.backbone import resolve_model_path
    from ..lora.device import resolve_device
    from .config import ConfigError, load_config
    from .runner import memory_estimate

    for name in args.configs:
        cfg = _with_device(load_config(name), args.device)
        try:
            device = resolve_device(cfg.runtime.device)
        except ValueError as e:
            if args.device is not None:  # asked for on the command line: for this machine
                raise ConfigError(f"{name}: {e}") from None
            # a GPU config checked on a machine without one: valid, but it runs elsewhere
            print(f"{name}: note: runtime.device = 'cuda' but torch sees no GPU here: `run` would stop with exit "
                  "code 2 on this machine (the config is for a GPU machine)")
            device = torch.device("cuda")
        line = (f"{name}: ok ({cfg.name}: {cfg.model.kind} {cfg.model.name!r} in {cfg.model.dtype} on "
                f"{cfg.runtime.device} -> {device}; task {cfg.data.task_name()}"
                + (f", OOD {', '.join([cfg.data.task_name('ood_task'), *cfg.data.more_ood])}" if cfg.data.ood_task
                   else "")
                + f"; methods {', '.join(cfg.methods)})")
        print(line)
        try:
            resolve_model_path(cfg.model.name)
        except (FileNotFoundError, ValueError) as e:
            print(f"  memory estimate: skipped, the model is not on this machine ({str(e).split(';')[0]})")
            continue
        est = memory_estimate(cfg, device, choices=4)  # the data are not read here
        what = "4 choices a question, " if cfg.model.kind == "causal_lm" else ""
        print(f"  memory estimate ({what}prefix caches left out): {est.describe()}")
    return 0


def _compare(args) -> int:
    from ..lora.io import atomic_write_bytes
    from .report import COLUMNS, compare_runs

    rows = compare_runs(args.dirs, mix=args.mix)
    cols = ["run", "task", "model", "method", "accuracy", "nll", "ece", "brier", "mutual_information", "fit_seconds"]
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(f"{r[c]:.4f}" if isinstance(r.get(c), float) else str(r.get(c)) for c in cols))
    if args.csv:
        if Path(args.csv).is_dir():
            raise IsADirectoryError(f"--csv {args.csv} is a folder; name a file")
        import csv
        import io

        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["run", "task", "model", "method", *COLUMNS])
        w.writeheader()
        w.writerows(rows)
        atomic_write_bytes(args.csv, buf.getvalue().encode())
    return 0
