"""A run folder never holds results of other data or another config (issue 21): stage keys depend
on the contents of the files read, the data folder's precedence is the documented one, the user's
config file is never rewritten, a finished run of another config / other data is refused unless
``--force``, a lock keeps a second run out, files follow the umask, and I/O mistakes are a message
with exit code 2. One tiny run (one anchor, MAP) is made once; the cases reuse copies of it."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
from scenarios import assert_user_error, tiny_run_config, write_tiny_run_setup

from bayes_lora.experiment.cli import main
from bayes_lora.experiment.config import ExperimentConfig, dump_toml
from bayes_lora.experiment.runner import Runner


def _config(model_dir, **tables) -> dict:
    """The smallest full run: one anchor (no curve), MAP only."""
    small = {"data": {"train_examples": 32}, "anchors": {"count": 1, "max_steps": 8},
             "evaluation": {"num_samples": 2, "idata_draws": 4, "loo_examples": 16}}
    for name, values in tables.items():
        small[name] = {**small.get(name, {}), **values} if isinstance(values, dict) else values
    cfg = tiny_run_config(model_dir, **small)
    cfg["methods"] = {"map": {}}
    return cfg


def _write(path, cfg: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_toml(cfg))
    return path


def _argv(cfg, out, data_dir=None, *more):
    return ["run", str(cfg), "--out", str(out), "--quiet", *(["--data-dir", str(data_dir)] if data_dir else []),
            *more]


def _results(out) -> dict:
    return json.loads((out / "results.json").read_text())


def _stages(out) -> dict[str, str]:
    return {s["stage"]: s["status"] for s in _results(out)["stages"]}


def _keys(out) -> dict[str, str]:
    return {m.parent.name: json.loads(m.read_text())["key"] for m in (out / "stages").glob("*/manifest.json")}


def _changed_copy(data_dir, dest):
    """``data_dir`` copied with one training label flipped (same size, other contents)."""
    shutil.copytree(data_dir, dest)
    f = dest / "sst2" / "train.tsv"
    lines = f.read_text().splitlines()
    text, label = lines[1].rsplit("\t", 1)
    lines[1] = f"{text}\t{1 - int(label)}"
    f.write_text("\n".join(lines) + "\n")
    return dest


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-folder")
    model_dir, data_dir = write_tiny_run_setup(root, n_train=32, n_test=16, layers=1)
    cfg = _write(root / "cfg" / "tiny.toml", _config(model_dir))
    base = root / "base"
    assert main(_argv(cfg, base, data_dir)) == 0
    return root, model_dir, data_dir, cfg, base


@pytest.fixture
def run_copy(setup, tmp_path):
    """A copy of the finished base run (every stage up to date for the base config and data)."""
    out = tmp_path / "run"
    shutil.copytree(setup[4], out)
    return out


# ---------------------------------------------------------------- 1. keys follow the data's contents
def test_keys_depend_on_file_contents_not_paths(setup, tmp_path):
    _root, model_dir, data_dir, _cfg, _base = setup
    c = ExperimentConfig.from_dict(_config(model_dir))
    same = shutil.copytree(data_dir, tmp_path / "moved")
    other = _changed_copy(data_dir, tmp_path / "changed")
    key = lambda d: Runner(c, tmp_path / "o", data_dir=str(d), log=lambda m: None).key("anchor", 0)
    assert key(same) == key(data_dir) != key(other)


def test_changed_data_is_refused_then_recomputed_with_force(setup, run_copy, tmp_path, capsys):
    _root, _model_dir, data_dir, cfg, base = setup
    other = _changed_copy(data_dir, tmp_path / "changed")
    assert main(_argv(cfg, run_copy, other)) == 2
    err = capsys.readouterr().err
    assert "other data (train: other contents" in err and "--force" in err and "Traceback" not in err
    assert main(_argv(cfg, run_copy, other, "--force")) == 0
    assert set(_stages(run_copy).values()) == {"ran"}, "every stage reads the data"
    before, after = _keys(base), _keys(run_copy)
    assert before.keys() == after.keys() and all(before[k] != after[k] for k in before)
    old, new = _results(base)["data"], _results(run_copy)["data"]
    assert old["inputs"]["train"]["sha256"] != new["inputs"]["train"]["sha256"]
    assert old["inputs"]["test"] == {**new["inputs"]["test"], "path": old["inputs"]["test"]["path"]}
    assert new["dir"] == str(other) and new["dir_from"] == "--data-dir"
    assert json.loads((run_copy / "config.json").read_text())["data"]["inputs"] == new["inputs"]


def test_same_contents_at_another_path_skip_every_stage(setup, run_copy, tmp_path):
    _root, _model_dir, data_dir, cfg, base = setup
    moved = shutil.copytree(data_dir, tmp_path / "elsewhere")
    assert main(_argv(cfg, run_copy, moved)) == 0
    assert set(_stages(run_copy).values()) == {"skipped"}
    assert _results(run_copy)["data"]["dir"] == str(moved)
    assert _results(run_copy)["methods"]["map"]["accuracy"] == _results(base)["methods"]["map"]["accuracy"]


def test_inputs_recorded_with_digests(setup):
    *_, base = setup
    inputs = _results(base)["data"]["inputs"]
    assert {"train", "test", "model/config.json", "model/model.safetensors"} <= set(inputs)
    assert all(len(v["sha256"]) == 64 and os.path.isabs(v["path"]) for v in inputs.values())


@pytest.mark.parametrize("damage", [lambda b: bytes([b[0] ^ 0xFF]) + b[1:], lambda b: b[: len(b) // 2],
                                    lambda b: b"[1, 2]"], ids=["not UTF-8", "not JSON", "not a table"])
def test_a_damaged_stage_manifest_reruns_its_stage(setup, run_copy, damage):
    """A damaged manifest.json means an unfinished stage, run again (found by
    test_run_folder_property.py: one byte gone bad ended the run with exit 2, "utf-8 codec can't
    decode"; JSON that is not a table, with an AttributeError traceback)."""
    _root, _model_dir, data_dir, cfg, base = setup
    m = run_copy / "stages" / "fit__map" / "manifest.json"
    m.write_bytes(damage(m.read_bytes()))
    assert main(_argv(cfg, run_copy, data_dir)) == 0
    assert _stages(run_copy) == {"anchor:0": "skipped", "fit:map": "ran", "eval:map": "skipped"}
    assert _results(run_copy)["methods"]["map"]["nll"] == _results(base)["methods"]["map"]["nll"]


# ---------------------------------------------------------------- 2. data folder precedence
def test_env_var_beats_shared_data_of_the_current_folder(setup, run_copy, tmp_path, monkeypatch, capsys):
    _root, _model_dir, data_dir, cfg, _base = setup
    (tmp_path / "shared" / "data").mkdir(parents=True)  # ../shared/data of the cwd: empty, the wrong one
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("BAYES_LORA_DATA_DIR", str(data_dir))
    assert main(_argv(cfg, run_copy)) == 0
    assert f"data: {data_dir} (from BAYES_LORA_DATA_DIR)" in capsys.readouterr().out
    res = _results(run_copy)["data"]
    assert (res["dir"], res["dir_from"]) == (str(data_dir), "BAYES_LORA_DATA_DIR")
    assert set(_stages(run_copy).values()) == {"skipped"}


def test_data_dir_precedence(tmp_path, monkeypatch):
    from bayes_lora.data.paths import find_data_dir

    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    monkeypatch.setenv("BAYES_LORA_DATA_DIR", str(tmp_path / "env"))
    assert find_data_dir(tmp_path / "arg") == (tmp_path / "arg", "--data-dir")
    assert find_data_dir() == (tmp_path / "env", "BAYES_LORA_DATA_DIR")
    monkeypatch.delenv("BAYES_LORA_DATA_DIR")
    assert find_data_dir() == ((tmp_path / "shared" / "data").resolve(), "default")


# ---------------------------------------------------------------- 3. nothing overwritten
def test_the_users_config_file_is_never_rewritten(setup, run_copy):
    _root, _model_dir, data_dir, cfg, _base = setup
    mine = run_copy / "config.toml"
    text = "# my own notes, kept\n" + cfg.read_text()
    mine.write_text(text)
    assert main(_argv(mine, run_copy, data_dir)) == 0
    assert mine.read_text() == text
    assert "[methods.map]" in (run_copy / "resolved_config.toml").read_text()


def test_a_finished_run_of_another_config_is_refused_unless_forced(setup, run_copy, capsys):
    _root, model_dir, data_dir, _cfg, base = setup
    renamed = _write(run_copy.parent / "renamed.toml", _config(model_dir, name="renamed"))
    assert main(_argv(renamed, run_copy, data_dir)) == 2
    err = capsys.readouterr().err
    old_hash, new_hash = _results(base)["config_hash"], ExperimentConfig.from_dict(_config(model_dir, name="renamed")).digest()
    assert "another config ('tiny', hash " + old_hash in err and f"'renamed', hash {new_hash}" in err
    assert "changed: name: 'tiny' → 'renamed')" in err  # the keys that differ, from config.json
    assert "--force" in err and "Traceback" not in err
    assert json.loads((run_copy / "config.json").read_text()) == json.loads((base / "config.json").read_text())
    assert main(_argv(renamed, run_copy, data_dir, "--force")) == 0
    assert set(_stages(run_copy).values()) == {"skipped"}, "the name is in no stage key"
    assert _results(run_copy)["name"] == "renamed"


def test_config_files_are_written_only_after_prepare_succeeds(setup, run_copy):
    _root, model_dir, data_dir, _cfg, _base = setup
    bad = _write(run_copy.parent / "bad.toml", _config(model_dir, lora={"target_modules": ["q_proj"]}))
    before = {n: (run_copy / n).read_bytes() for n in ("config.json", "resolved_config.toml", "results.json")}
    assert main(_argv(bad, run_copy, data_dir, "--force")) == 2  # the model has no q_proj
    assert {n: (run_copy / n).read_bytes() for n in before} == before
    assert not (run_copy / ".lock").exists()


# ---------------------------------------------------------------- 4. the lock
def test_a_folder_locked_by_a_live_process_is_refused(setup, tmp_path, capsys):
    _root, _model_dir, data_dir, cfg, _base = setup
    out = tmp_path / "busy"
    out.mkdir()
    lock = {"pid": os.getppid(), "host": socket.gethostname(), "started": "2026-01-01T00:00:00"}
    (out / ".lock").write_text(json.dumps(lock))
    assert main(_argv(cfg, out, data_dir)) == 2
    err = capsys.readouterr().err
    assert f"in use by another run (process {os.getppid()} on {socket.gethostname()}" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [".lock"], "nothing written, the lock kept"


def test_a_stale_lock_is_taken_over(setup, run_copy, capsys):
    _root, _model_dir, data_dir, cfg, _base = setup
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_copy / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert main(_argv(cfg, run_copy, data_dir)) == 0
    assert f"left by process {dead.pid}" in capsys.readouterr().out
    assert not (run_copy / ".lock").exists(), "released at the end"


def test_the_lock_is_held_during_the_run_and_released_on_errors(setup, run_copy, monkeypatch):
    from bayes_lora.experiment import runner as runner_mod
    from bayes_lora.experiment.lock import RunFolderBusy, RunLock

    _root, _model_dir, data_dir, cfg, _base = setup
    seen = {}

    def prepare(self):
        seen["lock"] = json.loads((self.out / ".lock").read_text())
        with pytest.raises(RunFolderBusy):
            RunLock(self.out).acquire()  # a second run in this process's folder (same pid: alive)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner_mod.Runner, "prepare", prepare)
    assert main(_argv(cfg, run_copy, data_dir)) == 130
    assert seen["lock"]["pid"] == os.getpid() and seen["lock"]["host"] == socket.gethostname()
    assert not (run_copy / ".lock").exists()


# ---------------------------------------------------------------- 5. modes follow the umask
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)], ids=["022", "027", "002"])
def test_files_follow_the_umask(tmp_path, monkeypatch, umask, mode):
    import torch

    from bayes_lora.lora import io

    old = os.umask(umask)
    try:
        monkeypatch.setattr(io, "_UMASK", None)  # read again under this umask
        io.atomic_write_json(tmp_path / "a.json", {"x": 1})
        io.save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)}, {"m": 1})
    finally:
        os.umask(old)
    for name in ("a.json", "t.safetensors", "t.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


# ---------------------------------------------------------------- 6. I/O mistakes: exit 2, one message
def _truncated_anchors(root, model_dir):
    from bayes_lora.lora.io import save_theta_stack

    f = root / "anchors.safetensors"
    save_theta_stack(f, __import__("torch").zeros(1, 8))
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    return f


def _data_file(root, data_dir, name, content: bytes):
    d = root / name
    shutil.copytree(data_dir, d)
    (d / "sst2" / "train.tsv").write_bytes(content)
    return d


def _touch(path):
    path.write_text("x")
    return path


IO_CASES = {
    # case: (function(root, model_dir, data_dir, cfg, tmp) -> argv, words in the message)
    "--out is a file": (lambda r, m, d, c, t: _argv(c, _touch(t / "f.txt"), d), ["f.txt", "is a file"]),
    "--out under a file": (lambda r, m, d, c, t: _argv(c, _touch(t / "g.txt") / "sub", d),
                           ["cannot create the run folder", "g.txt", "Not a directory"]),
    "compare --csv is a folder": (lambda r, m, d, c, t: ["compare", str(r / "base"), "--csv", str(t)],
                                  ["--csv", "is a folder"]),
    "truncated anchors file": (lambda r, m, d, c, t: _argv(_write(t / "a.toml", _config(
        m, anchors={"path": str(_truncated_anchors(t, m))})), t / "o", d),
        ["anchors.safetensors", "not a readable safetensors file"]),
    "UTF-16 data file": (lambda r, m, d, c, t: _argv(c, t / "o", _data_file(
        t, d, "u16", "sentence\tlabel\ngood film\t1\n".encode("utf-16"))), ["train.tsv", "not UTF-8", "UTF-16"]),
    "binary data file": (lambda r, m, d, c, t: _argv(c, t / "o", _data_file(
        t, d, "bin", b"\x00\x01\xff\xfe" * 64)), ["train.tsv", "not UTF-8", "binary"]),
}


@pytest.mark.parametrize("case", list(IO_CASES))
def test_io_mistakes_are_a_message_and_exit_2(case, setup, tmp_path, capsys):
    root, model_dir, data_dir, cfg, _base = setup
    make, words = IO_CASES[case]
    argv = make(root, model_dir, data_dir, cfg, tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert_user_error(err, words, case)
    assert not (tmp_path / "o").exists(), "a refused run leaves no folder behind"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_an_unwritable_out_folder_is_a_message(setup, tmp_path, capsys):
    _root, _model_dir, data_dir, cfg, _base = setup
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(_argv(cfg, ro, data_dir)) == 2
    finally:
        ro.chmod(0o755)
    assert "not writable" in capsys.readouterr().err


# ---------------------------------------------------------------- 7. Ctrl-C while the command starts
def test_the_command_line_starts_without_torch():
    """The entry point's imports are light, so a Ctrl-C while the heavy modules load happens inside
    ``main``'s handler (exit 130, one line) rather than as an import traceback."""
    code = "import sys, bayes_lora.experiment.cli, bayes_lora.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("delay", [0.3, 1.0])
def test_ctrl_c_during_start_up_is_exit_130_without_a_traceback(setup, tmp_path, delay):
    import signal
    import time

    _root, _model_dir, data_dir, cfg, _base = setup
    p = subprocess.Popen([sys.executable, "-m", "bayes_lora", *_argv(cfg, tmp_path / "o", data_dir)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)  # torch alone takes longer to import: the command is still starting
    p.send_signal(signal.SIGINT)
    _out, err = p.communicate(timeout=60)
    # 130, or ended by the signal itself when it lands while the interpreter exits after the message
    # (torch's unloading takes ~0.5 s): a shell shows $? = 130 for both
    assert p.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("interrupted:"), err


def test_an_import_broken_by_ctrl_c_is_the_interruption_not_a_traceback(monkeypatch, capsys):
    """Ctrl-C inside numpy's import (while torch loads) can surface as an ImportError, and every
    later import of torch fails as well: after a SIGINT, main reports the interruption (exit
    130). The same ImportError without a SIGINT is a real error and propagates."""
    import os
    import signal

    from bayes_lora.experiment import cli

    def broken_by_ctrl_c(args):
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler main installed raises KeyboardInterrupt here
        except KeyboardInterrupt:
            pass  # swallowed inside the import machinery ...
        raise ImportError("cannot load module more than once per process")  # ... which fails later

    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(cli, "_run", broken_by_ctrl_c)
    assert cli.main(["run", "x.toml"]) == 130
    assert capsys.readouterr().err.startswith("interrupted:")
    assert signal.getsignal(signal.SIGINT) is before  # main put the previous handler back

    def broken(args):
        raise ImportError("cannot load module more than once per process")

    monkeypatch.setattr(cli, "_run", broken)
    with pytest.raises(ImportError):
        cli.main(["run", "x.toml"])
