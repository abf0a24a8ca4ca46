"""θ layout, functional evaluation, projected / affine spaces on a real (tiny) peft model."""
from __future__ import annotations

import pytest
import torch

from bayes_lora.lora import (
    AffineSpace,
    FullSpace,
    FunctionalModel,
    MaskedSpace,
    ParamLayout,
    ProjectedSpace,
    pca_basis,
    random_basis,
)
from bayes_lora.lora.train import init_theta


def _inputs(tok):
    return dict(tok(["good movie", "the bad plot was very dull", "yes"], padding=True, return_tensors="pt"))


def test_layout_selects_lora_and_head(tiny_peft):
    model, _ = tiny_peft
    layout = ParamLayout.from_model(model)
    assert any(".lora_A." in n for n in layout.names)
    assert any("classifier" in n for n in layout.names)
    # 2 layers x 2 modules x (4x32 + 32x4) + head 2x32 + 2
    assert layout.dim == 2 * 2 * 256 + 66


def test_flatten_unflatten_roundtrip(tiny_peft):
    model, _ = tiny_peft
    layout = ParamLayout.from_model(model)
    theta = torch.randn(layout.dim)
    assert torch.equal(layout.flatten(layout.unflatten(theta)), theta)
    batch = torch.randn(3, 5, layout.dim)
    assert torch.equal(layout.flatten(layout.unflatten(batch)), batch)
    with pytest.raises(ValueError, match="length"):
        layout.unflatten(torch.randn(layout.dim + 1))


def test_functional_equals_peft_forward_after_loading(tiny_peft):
    model, tok = tiny_peft
    layout = ParamLayout.from_model(model)
    fm = FunctionalModel(model, layout)
    x = _inputs(tok)
    theta = init_theta(layout, seed=3) + 0.05 * torch.randn(layout.dim)
    before = layout.read(model)
    out = fm(theta, **x)
    assert torch.equal(layout.read(model), before), "functional evaluation must not edit the model"
    layout.write_(model, theta)
    ref = model(**x).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_vmap_over_thetas_equals_loop(tiny_peft):
    model, tok = tiny_peft
    fm = FunctionalModel(model)
    x = _inputs(tok)
    thetas = torch.stack([init_theta(fm.layout, s) + 0.1 * torch.randn(fm.layout.dim) for s in range(4)])
    loop = fm.many(thetas, **x)
    vec = fm.many(thetas, vectorize=True, **x)
    assert loop.shape == (4, 3, 2)
    assert not torch.allclose(loop[0], loop[1])
    torch.testing.assert_close(vec, loop, rtol=1e-5, atol=1e-5)


def test_projected_zero_core_is_base_model(tiny_peft):
    model, tok = tiny_peft
    layout = ParamLayout.from_model(model)
    space = ProjectedSpace(model, layout)
    fm = FunctionalModel(model, layout)
    x = _inputs(tok)
    w = space.initial()
    assert space.core_dim == 4 * 16 and space.dim == 64 + 66
    with model.disable_adapter():
        base = model(**x).logits
    torch.testing.assert_close(fm(space.to_theta(w), **x), base, rtol=0, atol=1e-6)


def test_projected_core_gives_svd_update(tiny_peft):
    model, _tok = tiny_peft
    layout = ParamLayout.from_model(model)
    space = ProjectedSpace(model, layout)
    w = space.initial() + torch.randn(space.dim)
    layout.write_(model, space.to_theta(w))
    path = space.modules_[0][0]
    layer = model.get_submodule(path)
    W = layer.get_base_layer().weight.detach()
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    R = space.cores(w)[0]
    expected = U[:, :4] @ torch.diag(S[:4]) @ R @ Vh[:4]
    got = layer.get_delta_weight("default")  # peft's own ΔW = scaling · B A
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(space.delta_weight(w, 0), expected, rtol=1e-4, atol=1e-5)
    # batched latents map row by row
    ws = torch.randn(3, space.dim)
    torch.testing.assert_close(space.to_theta(ws)[1], space.to_theta(ws[1]))


@pytest.mark.parametrize("rank", [2, 10])
def test_projected_space_at_its_own_rank(tiny_peft, rank):
    """LoRA-XS rank k independent of the LoRA rank (r = 4 here): the space's θ is a rank-k LoRA
    vector of the same modules, which the same model evaluates (fm.with_layout) as
    W + U_k Σ_k R V_kᵀ of each base weight, computed independently; the folded per-sample pass
    and the suffix model agree with the loop."""
    from bayes_lora.lora.batched import can_fold, folded_class_logits

    model, tok = tiny_peft
    layout = ParamLayout.from_model(model)
    space = ProjectedSpace(model, layout, rank=rank)
    assert space.ranks == [rank] * 4 and space.core_dim == 4 * rank * rank and space.dim == 4 * rank * rank + 66
    assert space.layout == layout.at_rank(rank) and space.layout.lora_ranks == (rank,) * 4
    assert layout.same_but_ranks(space.layout) and not layout.same_but_ranks(ParamLayout(layout.names[:-1],
                                                                                         layout.shapes[:-1]))
    fm = FunctionalModel(model, layout)
    fm_k = fm.with_layout(space.layout)
    assert fm.with_layout(layout) is fm and fm_k.layout == space.layout and fm_k.model is fm.model
    g = torch.Generator().manual_seed(5)
    w = space.initial() + torch.randn(space.dim, generator=g)
    x = _inputs(tok)
    got = fm_k(space.to_theta(w), **x)
    updates = {}
    for m, (path, _a, _b) in enumerate(space.modules_):
        W = model.get_submodule(path).get_base_layer().weight.detach()
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        updates[path] = U[:, :rank] @ torch.diag(S[:rank]) @ space.cores(w)[m] @ Vh[:rank]
    # the reference: the model's own rank-r adapters off (B = 0), the head written, W + ΔW in place
    head = space.layout.unflatten(space.to_theta(w))
    before = layout.read(model)
    ref_theta = layout.flatten({n: head[n] if "classifier" in n else torch.zeros(sh)
                                for n, sh in zip(layout.names, layout.shapes)})
    bases = {path: model.get_submodule(path).get_base_layer().weight for path in updates}
    saved = {path: wt.detach().clone() for path, wt in bases.items()}
    try:
        layout.write_(model, ref_theta)
        for path, delta in updates.items():
            bases[path].data += delta
        ref = model(**x).logits
    finally:
        layout.write_(model, before)
        for path, w0 in saved.items():
            bases[path].data.copy_(w0)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    # the model is untouched, and a θ of the model's own rank is refused by the rank-k model
    with pytest.raises(ValueError, match="length"):
        fm_k(layout.read(model), **x)
    # folded samples and the suffix model at rank k
    ws = space.initial() + 0.5 * torch.randn(3, space.dim, generator=g)
    thetas = space.to_theta(ws)
    loop = torch.stack([fm_k(th, **x) for th in thetas])
    assert can_fold(fm_k)
    batch = {**x, "labels": torch.zeros(3, dtype=torch.long)}

    class _Task:
        @staticmethod
        def class_logits(forward, b):
            return forward(**{k: v for k, v in b.items() if k != "labels"}).logits

    torch.testing.assert_close(folded_class_logits(fm_k, _Task, batch, thetas), loop, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="differing only in"):
        fm.with_layout(ParamLayout(layout.names[:-1], layout.shapes[:-1]))
    with pytest.raises(ValueError, match="takes no rank"):
        ProjectedSpace(model, layout, rank=3, around=layout.read(model))
    with pytest.raises(ValueError, match="exceeds"):
        ProjectedSpace(model, layout, rank=33)


def test_suffix_model_at_another_rank():
    """A suffix model (the frozen prefix cached) evaluates rank-k θ like the full model does."""
    from scenarios import tiny_bert, tiny_tokenizer

    from bayes_lora.lora.backbone import LoraSettings, add_lora
    from bayes_lora.lora.suffix import suffix_functional_model

    model = add_lora(tiny_bert(), LoraSettings(r=4, alpha=8, layers=(1,)), "classifier").eval()
    x = _inputs(tiny_tokenizer())
    fm = FunctionalModel(model)
    space = ProjectedSpace(model, fm.layout, rank=7)
    sfm_k = suffix_functional_model(fm, 1).with_layout(space.layout)
    assert sfm_k.layout == space.layout and sfm_k.full.layout == space.layout
    theta = space.to_theta(space.initial() + torch.randn(space.dim))
    with torch.no_grad(), model.disable_adapter():
        hidden = model(**x, output_hidden_states=True).hidden_states[1]
    full = fm.with_layout(space.layout)(theta, **x)
    torch.testing.assert_close(sfm_k(theta, inputs_embeds=hidden, attention_mask=x["attention_mask"]), full,
                               rtol=1e-4, atol=1e-5)


def test_adapter_space_passes_through_the_fine_tuned_update(tiny_peft):
    """ProjectedSpace(around=θ̂): the identity cores reproduce θ̂'s model exactly, a core R gives
    s·UΣRVᵀ with UΣVᵀ the SVD of θ̂'s own B̂Â, and an untrained (B = 0) adapter is refused."""
    model, tok = tiny_peft
    layout = ParamLayout.from_model(model)
    fm = FunctionalModel(model, layout)
    g = torch.Generator().manual_seed(3)
    theta = init_theta(layout, 0) + 0.3 * torch.randn(layout.dim, generator=g)  # B ≠ 0
    space = ProjectedSpace(model, layout, around=theta)
    assert space.kind == "adapter" and ProjectedSpace(model, layout).kind == "projected"
    assert space.dim == 4 * 16 + 66
    w = space.initial()
    x = _inputs(tok)
    torch.testing.assert_close(fm(space.to_theta(w), **x), fm(theta, **x), rtol=1e-5, atol=1e-5)

    path, a_name, b_name = space.modules_[0]
    values = layout.unflatten(theta)
    scaling = float(model.get_submodule(path).scaling["default"])
    update = scaling * values[b_name] @ values[a_name]
    torch.testing.assert_close(space.delta_weight(w, 0), update, rtol=1e-4, atol=1e-6)
    # the frozen factors are the SVD of B̂Â: UΣ with orthogonal columns of norms σ_j, Vᵀ orthonormal
    sigma = torch.linalg.svdvals(values[b_name] @ values[a_name])[:4]
    torch.testing.assert_close(space.us_0.norm(dim=0), sigma, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(space.vt_0 @ space.vt_0.T, torch.eye(4), rtol=0, atol=1e-5)
    gram = space.us_0.T @ space.us_0
    torch.testing.assert_close(gram, torch.diag(gram.diagonal()), rtol=0, atol=1e-5)
    # another core: peft's own ΔW of the mapped θ is the space's s·UΣRVᵀ, and differs from θ̂'s
    w2 = w + 0.5 * torch.randn(space.dim, generator=g)
    layout.write_(model, space.to_theta(w2))
    got = model.get_submodule(path).get_delta_weight("default")
    torch.testing.assert_close(got, space.delta_weight(w2, 0), rtol=1e-4, atol=1e-6)
    assert not torch.allclose(got, update, atol=1e-3), "another core changes the update"

    with pytest.raises(ValueError, match="is zero"):
        ProjectedSpace(model, layout, around=init_theta(layout, 0))  # B = 0
    with pytest.raises(ValueError, match="shape"):
        ProjectedSpace(model, layout, around=theta[:-1])


def test_affine_space_random_basis_is_seeded_and_orthonormal(tiny_peft):
    model, _ = tiny_peft
    layout = ParamLayout.from_model(model)
    origin = torch.randn(layout.dim)
    a = AffineSpace(origin, layout=layout, d=5, seed=7)
    b = AffineSpace(origin, layout=layout, d=5, seed=7)
    c = AffineSpace(origin, layout=layout, d=5, seed=8)
    torch.testing.assert_close(a.basis, b.basis)
    assert not torch.allclose(a.basis, c.basis)
    torch.testing.assert_close(a.basis.T @ a.basis, torch.eye(5), atol=1e-5, rtol=0)
    assert "basis" not in a.state_dict(), "a seeded basis is rebuilt from its seed, not saved"
    z = torch.randn(5)
    torch.testing.assert_close(a.to_theta(z), origin + a.basis @ z)
    torch.testing.assert_close(a.to_theta(torch.zeros(5)), origin)


def test_pca_basis_spans_snapshots():
    torch.manual_seed(0)
    dirs = torch.linalg.qr(torch.randn(50, 2))[0]
    snaps = torch.randn(20, 2) @ dirs.T + 3.0
    P = pca_basis(snaps, 2)
    proj = P @ (P.T @ dirs)
    torch.testing.assert_close(proj, dirs, atol=1e-4, rtol=0)


def test_affine_over_projected_space(tiny_peft):
    model, _ = tiny_peft
    layout = ParamLayout.from_model(model)
    inner = ProjectedSpace(model, layout)
    P = random_basis(inner.dim, 3, seed=1)
    aff = AffineSpace(inner.initial(), P, inner=inner)
    z = torch.randn(3)
    torch.testing.assert_close(aff.to_theta(z), inner.to_theta(inner.initial() + P @ z))
    assert FullSpace(layout).to_theta(torch.ones(layout.dim)).sum() == layout.dim


def test_masked_space_batches_and_gradients():
    layout = ParamLayout(("a", "b", "c"), ((2,), (3,), (1,)))
    sp = MaskedSpace(layout, torch.arange(6.0), torch.tensor([1, 4]))
    w = torch.tensor([[10.0, 40.0], [11.0, 41.0]], requires_grad=True)
    theta = sp.to_theta(w)
    torch.testing.assert_close(theta, torch.tensor([[0.0, 10, 2, 3, 40, 5], [0.0, 11, 2, 3, 41, 5]]))
    theta.sum().backward()
    torch.testing.assert_close(w.grad, torch.ones(2, 2))
    torch.testing.assert_close(sp.initial(), torch.tensor([1.0, 4.0]))


def test_masked_space_by_tensor_keeps_fixed_tensors_off_the_graph():
    """``theta_tensors`` equals splitting ``to_theta`` (whole free tensors, a partly free one and
    fixed ones), and the fixed tensors carry no gradient: a backward pass never reaches them."""
    layout = ParamLayout(("layer.0.a", "layer.1.b", "layer.1.c", "head"), ((2, 2), (3,), (2,), (2,)))
    base = torch.arange(11.0)
    sp = MaskedSpace(layout, base, torch.tensor([4, 5, 6, 8, 7]))  # b whole, c reversed: mixed
    w = torch.randn(3, sp.dim, requires_grad=True)
    split, ref = sp.theta_tensors(w), layout.unflatten(sp.to_theta(w))
    for name in layout.names:
        torch.testing.assert_close(split[name], ref[name])
    assert not split["layer.0.a"].requires_grad and not split["head"].requires_grad
    assert split["layer.1.b"].requires_grad and split["layer.1.c"].requires_grad
    assert sp.free_names == ["layer.1.b", "layer.1.c"]
    (split["layer.1.b"].sum() + 2 * split["layer.1.c"].sum()).backward()
    torch.testing.assert_close(w.grad, torch.tensor([1.0, 1, 1, 2, 2]).expand(3, 5))


def test_masked_space_from_names_and_the_top_layer(tiny_peft):
    model, _ = tiny_peft
    layout = ParamLayout.from_model(model)
    base = torch.randn(layout.dim)
    top = MaskedSpace.top_layer_names(layout)
    assert top == [n for n in layout.names if ".layer.1." in n or "classifier" in n]
    sp = MaskedSpace.from_names(layout, base, ["*.layer.1.*", "*classifier*"])
    assert sp.free_names == top and sp.dim == 2 * 256 + 66
    torch.testing.assert_close(sp.to_theta(sp.initial()), base)
    with pytest.raises(ValueError, match=r"\['\*layer\.7\.\*'\] match none of θ's tensors"):
        MaskedSpace.from_names(layout, base, ["*classifier*", "*layer.7.*"])
    with pytest.raises(ValueError, match="non-empty list of glob strings"):
        MaskedSpace.from_names(layout, base, "*classifier*")
    with pytest.raises(ValueError, match="distinct coordinates"):
        MaskedSpace(layout, base, torch.tensor([0, 0]))
