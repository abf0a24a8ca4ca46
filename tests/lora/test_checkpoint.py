"""Periodic checkpoints: a loop interrupted mid-epoch and resumed from its last checkpoint ends
bit-identical to an uninterrupted one (fine-tuning with snapshots, and curve training); a NaN
stops the loop naming the step and keeps the last good checkpoint."""
from __future__ import annotations

import pytest
import torch
from scenarios import tiny_peft_model, tiny_task

from bayes_lora.experiment.checkpoint import Checkpointer
from bayes_lora.lora import FullSpace, FunctionalModel
from bayes_lora.lora.curve_train import CurveConfig, train_curve
from bayes_lora.lora.train import NumericalError, TrainConfig, init_theta, train_latent


class Killed(Exception):
    pass


class Interrupting:
    """The task, but its batches stop (as a kill would) after ``after`` batches in all."""

    def __init__(self, task, after: int):
        self.task, self.left = task, after

    def __getattr__(self, name):
        return getattr(self.task, name)

    def __len__(self):
        return len(self.task)

    def batches(self, *a, **kw):
        for b in self.task.batches(*a, **kw):
            if self.left == 0:
                raise Killed
            self.left -= 1
            yield b


@pytest.fixture(scope="module")
def setup():
    fm = FunctionalModel(tiny_peft_model())
    return fm, FullSpace(fm.layout), tiny_task(40)  # 40 / 16 → 3 batches per epoch, the last short


@pytest.mark.parametrize("kill_at", [7, 9])  # mid-epoch, and right at an epoch boundary
def test_fine_tuning_resumes_to_identical_result(setup, tmp_path, kill_at):
    fm, space, task = setup
    cfg = TrainConfig(epochs=10, batch_size=16, lr=1e-2, seed=3, max_steps=20)
    init = init_theta(fm.layout, 3)
    ref = train_latent(fm, space, task, init, cfg, snapshot_every=4)
    ck = Checkpointer(tmp_path / "ck.safetensors", every=3, key="k")
    with pytest.raises(Killed):
        train_latent(fm, space, Interrupting(task, kill_at), init, cfg, snapshot_every=4, checkpoint=ck)
    assert ck.last_step == 3 * (kill_at // 3) and ck.path.is_file()
    resumed = train_latent(fm, space, task, init, cfg, snapshot_every=4,
                           checkpoint=Checkpointer(ck.path, every=3, key="k"))
    assert torch.equal(resumed.latent, ref.latent)
    assert resumed.losses == ref.losses
    assert len(resumed.snapshots) == len(ref.snapshots) == 5
    assert all(torch.equal(a, b) for a, b in zip(resumed.snapshots, ref.snapshots))


def test_a_checkpoint_of_another_key_is_not_resumed(setup, tmp_path):
    fm, space, task = setup
    cfg = TrainConfig(epochs=10, batch_size=16, lr=1e-2, seed=3, max_steps=8)
    init = init_theta(fm.layout, 3)
    ck = Checkpointer(tmp_path / "ck.safetensors", every=2, key="old")
    with pytest.raises(Killed):
        train_latent(fm, space, Interrupting(task, 5), init, cfg, checkpoint=ck)
    other = Checkpointer(tmp_path / "ck.safetensors", every=2, key="new")
    assert other.load() is None
    res = train_latent(fm, space, task, init, cfg, checkpoint=other)
    assert torch.equal(res.latent, train_latent(fm, space, task, init, cfg).latent)


def test_curve_training_resumes_to_identical_result(setup, tmp_path):
    fm, space, task = setup
    anchors = torch.stack([init_theta(fm.layout, s) + 0.05 * torch.randn(fm.layout.dim) for s in (0, 1)])
    cfg = CurveConfig(degree=3, epochs=10, batch_size=16, max_steps=11, js_weight=0.1, seed=1)
    ref = train_curve(fm, space, task, anchors, cfg)
    ck = Checkpointer(tmp_path / "curve.safetensors", every=4, key="c")
    with pytest.raises(Killed):
        train_curve(fm, space, Interrupting(task, 10), anchors, cfg, checkpoint=ck)
    assert ck.last_step == 8
    resumed = train_curve(fm, space, task, anchors, cfg, checkpoint=Checkpointer(ck.path, every=4, key="c"))
    assert torch.equal(resumed.curve.control_points(), ref.curve.control_points())
    assert resumed.losses == ref.losses and resumed.js == ref.js


def test_nan_names_stage_and_step_and_keeps_the_last_good_checkpoint(setup, tmp_path):
    fm, space, task = setup
    cfg = TrainConfig(epochs=10, batch_size=16, lr=1e-2, seed=0, max_steps=20)
    ck = Checkpointer(tmp_path / "ck.safetensors", every=2, key="k")

    def loss_fn(w, batch, step):  # a loss that turns NaN at step 5
        from bayes_lora.lora.train import task_loss

        loss = task_loss(fm, task, space.to_theta(w), batch)
        return loss * float("nan") if step == 5 else loss

    with pytest.raises(NumericalError, match=r"at step 5; the last good checkpoint \(step 4\) is kept") as e:
        train_latent(fm, space, task, init_theta(fm.layout, 0), cfg, loss_fn=loss_fn, checkpoint=ck, stage="anchor:0")
    assert "anchor:0" in str(e.value) and e.value.step == 5
    saved, meta = ck.load()
    assert meta["step"] == 4 and torch.isfinite(saved["w"]).all()
