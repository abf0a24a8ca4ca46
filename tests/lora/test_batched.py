"""Samples folded into the batch with per-sample adapters give the loop's numbers (to 1e-5) on the
full model, the prefix-cached suffix, a multiple-choice causal LM, and for a posterior's predict."""
from __future__ import annotations

import pytest
import torch
from scenarios import tiny_llama, tiny_peft_model, tiny_task

from bayes_lora.lora import FunctionalModel
from bayes_lora.lora.batched import PerSampleLinears, can_fold, fold, folded_class_logits
from bayes_lora.lora.train import init_theta


def _loop(fm, task, batch, thetas):
    return torch.stack([task.class_logits(fm.forward_at(th), batch) for th in thetas])


def _thetas(fm, s=5):
    g = torch.Generator().manual_seed(0)
    base = init_theta(fm.layout, 0)
    return base + 0.3 * torch.randn(s, fm.layout.dim, generator=g)  # B ≠ 0: every factor matters


def test_folded_logits_equal_the_loop_on_a_peft_classifier():
    fm = FunctionalModel(tiny_peft_model())
    task = tiny_task(24)
    assert can_fold(fm)
    batch = next(iter(task.batches(7)))  # 7 rows, padded
    thetas = _thetas(fm)
    loop = _loop(fm, task, batch, thetas)
    folded = folded_class_logits(fm, task, batch, thetas)
    assert folded.shape == loop.shape == (5, 7, 2)
    torch.testing.assert_close(folded, loop, atol=1e-5, rtol=1e-5)
    assert (loop[0] - loop[1]).abs().max() > 1e-2, "the samples must give different logits"
    # the patch is gone afterwards: the model evaluates its stored parameters again
    out = fm.model(**batch["inputs"]).logits
    torch.testing.assert_close(out, task.class_logits(fm.forward_at(fm.layout.read(fm.model)), batch))


def test_folded_logits_equal_the_loop_on_the_prefix_cached_suffix():
    from scenarios import tiny_bert

    from bayes_lora.lora.backbone import LoraSettings, add_lora
    from bayes_lora.lora.prefix import with_prefix_cache

    model = add_lora(tiny_bert(layers=3), LoraSettings(r=4, alpha=8.0, target_modules=("query", "value"), layers=(2,)),
                     kind="classifier")
    fm = FunctionalModel(model)
    sfm, cached = with_prefix_cache(fm, tiny_task(20))
    assert sfm is not fm and can_fold(sfm)
    batch = next(iter(cached.batches(8)))
    thetas = _thetas(fm, 4)
    torch.testing.assert_close(folded_class_logits(sfm, cached, batch, thetas), _loop(sfm, cached, batch, thetas),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("packed", [True, False])
def test_folded_logits_equal_the_loop_on_a_multiple_choice_causal_lm(packed):
    from scenarios import tiny_tokenizer

    from bayes_lora.data import MultipleChoiceData, encode
    from bayes_lora.lora.backbone import LoraSettings, add_lora

    lm = add_lora(tiny_llama(), LoraSettings(r=2, alpha=4.0, target_modules=("q_proj", "v_proj"), train_head=False),
                  kind="causal_lm")
    fm = FunctionalModel(lm)
    ds = MultipleChoiceData("toy", ("the film was",) * 6, (("good", "bad", "fine"),) * 6, (0, 1, 2, 0, 1, 2), 3)
    task = encode(ds, tiny_tokenizer(with_cls=False), max_length=16, packed=packed)
    batch = next(iter(task.batches(4)))
    thetas = _thetas(fm, 3)
    folded = folded_class_logits(fm, task, batch, thetas)
    assert folded.shape == (3, 4, 3)
    torch.testing.assert_close(folded, _loop(fm, task, batch, thetas), atol=1e-5, rtol=1e-5)


def test_fold_repeats_sample_major_and_mismatched_rows_are_refused():
    b = {"x": torch.arange(3), "y": {"z": torch.ones(3, 2)}, "n": 3}
    f = fold(b, 2)
    assert f["x"].tolist() == [0, 1, 2, 0, 1, 2] and f["y"]["z"].shape == (6, 2) and f["n"] == 3
    fm = FunctionalModel(tiny_peft_model())
    task = tiny_task(8)
    batch = next(iter(task.batches(4)))
    with PerSampleLinears(fm, _thetas(fm, 3)), pytest.raises(ValueError, match="not a multiple of 3 samples"):
        task.class_logits(fm.model, batch)  # 4 rows for 3 samples


def test_predict_probs_folded_equals_the_loop(tiny_ctx):
    from bayes_lora.inference.base import predict_probs

    ctx, test = tiny_ctx
    thetas = _thetas(ctx.fm, 6)
    folded = predict_probs(ctx.fm, test, thetas, batch_size=16, fold_samples=True)
    loop = predict_probs(ctx.fm, test, thetas, batch_size=16, fold_samples=False)
    assert torch.equal(predict_probs(ctx.fm, test, thetas, batch_size=16), loop), "a CPU model loops by default"
    torch.testing.assert_close(folded, loop, atol=1e-5, rtol=1e-5)
    small = predict_probs(ctx.fm, test, thetas, batch_size=16, fold_samples=True, max_rows=32)  # 2 per pass
    torch.testing.assert_close(small, loop, atol=1e-5, rtol=1e-5)


def _jacrev(fm, space, task, batch, w):
    def logits(v):
        out = task.class_logits(fm.forward_at(space.to_theta(v)), batch)
        return out, out

    import warnings

    with warnings.catch_warnings():  # the CPU attention backward has no vmap rule: jacrev loops
        warnings.filterwarnings("ignore", message=".*have not yet implemented the batching rule.*")
        jac, f = torch.func.jacrev(logits, has_aux=True)(w)
    return jac, f


@pytest.mark.parametrize("space_kind", ["full", "projected"])
def test_per_example_jacobians_equal_jacrev_on_a_peft_classifier(space_kind):
    """Per-example adapters give every example's own Jacobian in C backward passes, equal to
    torch.func.jacrev's — in the full LoRA space and through the (linear) LoRA-XS map."""
    from bayes_lora.lora import FullSpace, ProjectedSpace
    from bayes_lora.lora.batched import per_example_jacobians

    fm = FunctionalModel(tiny_peft_model())
    task = tiny_task(16)
    batch = next(iter(task.batches(6)))
    if space_kind == "full":
        space = FullSpace(fm.layout)
        w = _thetas(fm, 1)[0]
    else:
        space = ProjectedSpace(fm.model, fm.layout)
        w = space.initial() + 0.2 * torch.randn(space.dim, generator=torch.Generator().manual_seed(1))
    jac, f = per_example_jacobians(fm, space, task, batch, w)
    ref, f_ref = _jacrev(fm, space, task, batch, w)
    assert jac.shape == ref.shape == (6, 2, space.dim)
    torch.testing.assert_close(f, f_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(jac, ref, atol=1e-5, rtol=1e-4)
    assert (jac[0] - jac[1]).abs().max() > 1e-3, "two examples must have different Jacobians"


@pytest.mark.parametrize("packed", [True, False])
def test_per_example_jacobians_equal_jacrev_on_a_multiple_choice_causal_lm(packed):
    from scenarios import tiny_tokenizer

    from bayes_lora.data import MultipleChoiceData, encode
    from bayes_lora.lora import FullSpace
    from bayes_lora.lora.backbone import LoraSettings, add_lora
    from bayes_lora.lora.batched import per_example_jacobians

    lm = add_lora(tiny_llama(), LoraSettings(r=2, alpha=4.0, target_modules=("q_proj", "v_proj"), train_head=False),
                  kind="causal_lm")
    fm = FunctionalModel(lm)
    ds = MultipleChoiceData("toy", ("the film was", "it was a", "so"), (("good", "bad", "fine"),) * 3, (0, 1, 2), 3)
    task = encode(ds, tiny_tokenizer(with_cls=False), max_length=16, packed=packed)
    batch = next(iter(task.batches(3)))  # 3 rows (packed) or 3 questions × 3 choices = 9, question-major
    space, w = FullSpace(fm.layout), _thetas(fm, 1)[0]
    jac, _ = per_example_jacobians(fm, space, task, batch, w)
    ref, _ = _jacrev(fm, space, task, batch, w)
    assert jac.shape == (3, 3, fm.layout.dim)
    torch.testing.assert_close(jac, ref, atol=1e-5, rtol=1e-4)


def test_per_example_vjp_squares_to_the_ggn():
    """Σ_i Σ_k (J_iᵀ u_ik)(J_iᵀ u_ik)ᵀ with U_i U_iᵀ = diag p_i − p_i p_iᵀ (C − 1 columns) is the
    GGN Σ_i J_iᵀ Λ_i J_i, for two and for three classes."""
    from bayes_lora.inference.laplace_torch import ggn_square_root
    from bayes_lora.lora import FullSpace
    from bayes_lora.lora.batched import per_example_jacobians, per_example_vjp

    for f in (torch.randn(5, 2), torch.randn(5, 3)):
        u = ggn_square_root(f)
        p = f.softmax(-1)
        lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        assert u.shape == (5, f.shape[1], f.shape[1] - 1)
        torch.testing.assert_close(u @ u.transpose(1, 2), lam, atol=1e-6, rtol=1e-5)

    fm = FunctionalModel(tiny_peft_model())
    task = tiny_task(16)
    batch = next(iter(task.batches(8)))
    space, w = FullSpace(fm.layout), _thetas(fm, 1)[0]
    rows, f = per_example_vjp(fm, space, task, batch, w, ggn_square_root)
    jac, _ = per_example_jacobians(fm, space, task, batch, w)
    p = f.softmax(-1)
    lam = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    ggn = torch.einsum("bcp,bck,bkq->pq", jac, lam, jac)
    r = rows.reshape(-1, space.dim)
    torch.testing.assert_close(r.T @ r, ggn, atol=1e-5, rtol=1e-4)
