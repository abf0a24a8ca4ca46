"""The frozen-prefix cache: suffix model + CachedTask equal the full model (tiny models only)."""
from __future__ import annotations

import pytest
import torch
from scenarios import WORDS, sentiment_texts, tiny_bert, tiny_task, tiny_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from bayes_lora.data import (
    EncodedClassification,
    EncodedMultipleChoice,
    MultipleChoiceData,
    TextClassificationData,
    encode,
)
from bayes_lora.inference.base import predict_probs
from bayes_lora.lora import FunctionalModel
from bayes_lora.lora.backbone import LoraSettings, add_lora
from bayes_lora.lora.prefix import (
    CachedTask,
    SuffixFunctionalModel,
    cache_bytes,
    first_adapted_layer,
    layers_path,
    suffix_functional_model,
    with_prefix_cache,
)
from bayes_lora.lora.suffix import suffix_model
from bayes_lora.types import EncodedTask

ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one intra-op thread is faster and does not fight other processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llama4(seed: int = 0) -> LlamaForCausalLM:
    """A 4-layer version of the tiny Llama of the scenarios."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(WORDS) + 5, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval()


QUESTIONS = ("what is the sun", "which plant is green and big", "is water cold", "what rock is red",
             "the moon is", "which animal is small", "is the film good")
CHOICES = (
    ("hot", "cold water", "a big red rock"),
    ("the red plant", "green", "a very big green plant"),
    ("yes", "no", "hot"),
    ("red rock", "blue rock", "big rock"),
    ("cold", "small", "the big rock and the sun"),
    ("animal", "a small animal", "big"),
    ("yes it was great", "no", "very bad"),
)


def mc_task(packed: bool = True) -> EncodedMultipleChoice:
    data = MultipleChoiceData("toy_mc", QUESTIONS, CHOICES, (0, 2, 1, 0, 2, 1, 0), 3)
    return encode(data, tiny_tokenizer(with_cls=False), max_length=32, packed=packed)


def random_thetas(fm: FunctionalModel, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(n, fm.layout.dim, generator=g)


@pytest.fixture(scope="module")
def bert():
    model = add_lora(tiny_bert(layers=4), LoraSettings(r=4, alpha=8, layers=(2, 3)), "classifier").eval()
    fm = FunctionalModel(model)
    task = tiny_task(37, seed=3)
    sfm, cached = with_prefix_cache(fm, task)
    return fm, task, sfm, cached


def _llama(packed: bool):
    lora = LoraSettings(r=4, alpha=8, layers=(2, 3), target_modules=("q_proj", "v_proj"))
    model = add_lora(tiny_llama4(), lora, "causal_lm").eval()
    fm = FunctionalModel(model)
    task = mc_task(packed)
    sfm, cached = with_prefix_cache(fm, task)
    return fm, task, sfm, cached


@pytest.fixture(scope="module")
def llama():
    """Packed questions (the prompt once, every choice after it)."""
    return _llama(packed=True)


@pytest.fixture(scope="module")
def llama_rows():
    """One row per choice."""
    return _llama(packed=False)


@pytest.fixture(params=["bert", "llama", "llama_rows"])
def setup(request):
    return request.getfixturevalue(request.param)


def test_first_adapted_layer_and_path(bert, llama):
    fm, *_ = bert
    assert first_adapted_layer(fm.layout) == 2 and first_adapted_layer(fm) == 2
    assert first_adapted_layer(fm.model) == 2
    assert layers_path(fm.layout) == "base_model.model.bert.encoder.layer"
    fm, *_ = llama
    assert first_adapted_layer(fm.layout) == 2
    assert layers_path(fm.layout) == "base_model.model.model.layers"


def test_suffix_keeps_layout_and_leaves_original_alone(setup):
    fm, task, sfm, cached = setup
    assert isinstance(sfm, SuffixFunctionalModel) and sfm.layer == 2 == cached.layer
    assert sfm.layout == fm.layout
    full = dict(fm.model.named_parameters())
    suf = dict(sfm.model.named_parameters())
    for name in fm.layout.names:  # θ names unchanged and the tensors shared
        assert suf[name] is full[name]
    assert not any(".layer.0." in n or ".layers.0." in n for n in suf)
    assert any(".layer.0." in n or ".layers.0." in n for n in full)
    # the original model still takes token ids and gives the same logits as before
    batch = next(iter(task.batches(4)))
    theta = random_thetas(fm, 1)[0]
    with torch.no_grad():
        again = FunctionalModel(fm.model, fm.layout)
        a = task.class_logits(fm.forward_at(theta), batch)
        b = task.class_logits(again.forward_at(theta), batch)
    assert torch.equal(a, b)


def test_cached_task_is_an_encoded_task(setup):
    _, task, _, cached = setup
    assert isinstance(cached, EncodedTask)
    assert cached.name == task.name and cached.num_classes == task.num_classes
    assert len(cached) == len(task) and torch.equal(cached.labels, task.labels)
    batch = next(iter(cached.batches(5)))
    ref = next(iter(task.batches(5)))
    assert set(batch) == set(ref)
    emb = batch["inputs"]["inputs_embeds"]
    assert emb.shape[:2] == ref["inputs"]["input_ids"].shape and emb.shape[-1] == 32
    assert torch.equal(batch["inputs"]["attention_mask"], ref["inputs"]["attention_mask"])


def test_class_logits_equal_full_model(setup):
    fm, task, sfm, cached = setup
    for theta in random_thetas(fm, 3):
        assert theta.abs().sum() > 0
        with torch.no_grad():
            for b_full, b_cached in zip(task.batches(4), cached.batches(4)):
                a = task.class_logits(fm.forward_at(theta), b_full)
                b = cached.class_logits(sfm.forward_at(theta), b_cached)
                assert torch.allclose(a, b, atol=ATOL, rtol=0), (a - b).abs().max()


def test_bert_raw_logits_equal(bert):
    fm, task, sfm, cached = bert
    theta = random_thetas(fm, 1)[0]
    b_full, b_cached = next(iter(task.batches(16))), next(iter(cached.batches(16)))
    with torch.no_grad():
        a = fm(theta, **b_full["inputs"])
        b = sfm(theta, **b_cached["inputs"])
    assert a.shape == b.shape == (16, 2)
    assert torch.allclose(a, b, atol=ATOL, rtol=0)


def test_gradients_equal(setup):
    fm, task, sfm, cached = setup
    theta0 = random_thetas(fm, 1, seed=5)[0]
    grads = []
    for model, t in ((fm, task), (sfm, cached)):
        theta = theta0.clone().requires_grad_(True)
        batch = next(iter(t.batches(6)))
        logits = t.class_logits(model.forward_at(theta), batch)
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        (g,) = torch.autograd.grad(loss, theta)
        grads.append(g)
    assert grads[0].abs().sum() > 0
    # the LoRA factors of every adapted layer and the head get gradients through both paths
    assert torch.allclose(grads[0], grads[1], atol=ATOL, rtol=1e-4), (grads[0] - grads[1]).abs().max()



@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_bert_last_layer_computes_the_first_token_only(attn, llama):
    """The pooler reads token 0, so the suffix's last layer runs its query, attention output and
    feed-forward on token 0 alone (keys and values from every token): one row instead of T, the
    same logits and θ-gradients as the full model (padded batches, both attention kernels)."""
    model = add_lora(tiny_bert(layers=4), LoraSettings(r=4, alpha=8, layers=(2, 3)), "classifier").eval()
    model.set_attn_implementation(attn)
    fm = FunctionalModel(model)
    texts, labels = sentiment_texts(12, seed=4)
    texts = [" ".join([t] * (1 + i % 3)) for i, t in enumerate(texts)]  # 7 to 19 tokens: padding
    data = TextClassificationData("toy", tuple(texts), tuple(labels), 2)
    task = EncodedClassification.from_data(data, tiny_tokenizer(), max_length=32)
    sfm, cached = with_prefix_cache(fm, task)
    assert sfm.model.first_token_layer == 3
    rows = []
    ffn = model.get_submodule("base_model.model.bert.encoder.layer.3.intermediate")
    handle = ffn.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[1]))
    theta0 = random_thetas(fm, 1, seed=7)[0]
    batch, cbatch = next(iter(task.batches(12))), next(iter(cached.batches(12)))
    assert (batch["inputs"]["attention_mask"] == 0).any()  # padding is masked out of the keys
    grads = []
    try:
        for f, t, b in ((fm, task, batch), (sfm, cached, cbatch)):
            theta = theta0.clone().requires_grad_(True)
            logits = t.class_logits(f.forward_at(theta), b)
            (g,) = torch.autograd.grad(logits[:, 1].sum() - logits[:, 0].square().sum(), theta)
            grads.append((logits.detach(), g))
    finally:
        handle.remove()
    assert rows == [batch["inputs"]["attention_mask"].shape[1], 1]
    assert torch.allclose(grads[0][0], grads[1][0], atol=ATOL, rtol=0)
    assert torch.allclose(grads[0][1], grads[1][1], atol=ATOL, rtol=1e-4)
    # the whole layer again when asked, and for models whose head reads every token
    whole = suffix_model(model, 2, layout=fm.layout, first_token=False)
    assert whole.first_token_layer is None
    assert llama[2].model.first_token_layer is None

def test_predict_probs_equal(setup):
    fm, task, sfm, cached = setup
    thetas = random_thetas(fm, 4)
    a = predict_probs(fm, task, thetas, batch_size=5)
    b = predict_probs(sfm, cached, thetas, batch_size=5)
    assert a.shape == b.shape == (4, len(task), task.num_classes)
    assert torch.allclose(a, b, atol=ATOL, rtol=0)
    # predict_probs visits batches sorted by length; the result is in task order all the same
    with torch.no_grad():
        in_order = torch.stack([torch.cat([cached.class_logits(sfm.forward_at(th), bt).softmax(-1)
                                           for bt in cached.batches(5)]) for th in thetas])
    assert torch.allclose(b, in_order, atol=ATOL, rtol=0)


def test_shuffled_batches(setup):
    fm, task, sfm, cached = setup
    theta = random_thetas(fm, 1)[0]
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    seen = []
    with torch.no_grad():
        for b_full, b_cached in zip(task.batches(4, shuffle=True, generator=g1),
                                    cached.batches(4, shuffle=True, generator=g2)):
            assert torch.equal(b_full["index"], b_cached["index"])
            a = task.class_logits(fm.forward_at(theta), b_full)
            b = cached.class_logits(sfm.forward_at(theta), b_cached)
            assert torch.allclose(a, b, atol=ATOL, rtol=0)
            seen.append(b_cached["index"])
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(len(task))) and order.tolist() != sorted(order.tolist())


def test_subset(setup):
    fm, task, sfm, cached = setup
    index = torch.tensor([5, 0, 3, -1])
    sub, sub_full = cached.subset(index), task.subset(index)
    assert isinstance(sub, CachedTask) and len(sub) == 4
    assert torch.equal(sub.labels, sub_full.labels)
    assert sub.hidden.shape[2] <= cached.hidden.shape[2]
    thetas = random_thetas(fm, 2)
    a = predict_probs(fm, sub_full, thetas, batch_size=3)
    b = predict_probs(sfm, sub, thetas, batch_size=3)
    assert torch.allclose(a, b, atol=ATOL, rtol=0)
    # a boolean mask works too
    mask = torch.zeros(len(task), dtype=torch.bool)
    mask[[1, 2]] = True
    assert torch.allclose(predict_probs(sfm, cached.subset(mask), thetas),
                          predict_probs(fm, task.subset(mask), thetas), atol=ATOL, rtol=0)


def test_full_model_refuses_cached_batches(bert):
    fm, _, _, cached = bert
    batch = next(iter(cached.batches(4)))
    with pytest.raises(ValueError, match="suffix model"):
        cached.class_logits(fm.forward_at(fm.layout.read(fm.model)), batch)


def test_key_tracks_data_and_model(bert):
    fm, task, _, cached = bert
    again = CachedTask.build(task, fm)
    assert again.key == cached.key
    assert torch.equal(again.hidden, cached.hidden)
    other = CachedTask.build(tiny_task(37, seed=4), fm)
    assert other.key != cached.key and other.model_key == cached.model_key
    assert cached.subset(torch.arange(10)).key != cached.key
    # another base model (same architecture, other weights): another key
    model2 = add_lora(tiny_bert(layers=4, seed=1), LoraSettings(r=4, alpha=8, layers=(2, 3)), "classifier")
    assert CachedTask.build(task, FunctionalModel(model2)).key != cached.key
    # θ does not enter the key
    params = dict(fm.model.named_parameters())
    name = fm.layout.names[0]
    saved = params[name].detach().clone()
    with torch.no_grad():
        params[name].add_(1.0)
    try:
        assert CachedTask.build(task, fm).key == cached.key
    finally:
        with torch.no_grad():
            params[name].copy_(saved)


def test_save_load(bert, tmp_path):
    fm, task, sfm, cached = bert
    path = cached.save(tmp_path / "cache.safetensors")
    loaded = CachedTask.load(path, task, fm)
    assert loaded.key == cached.key and torch.equal(loaded.hidden, cached.hidden)
    thetas = random_thetas(fm, 2)
    assert torch.allclose(predict_probs(sfm, loaded, thetas), predict_probs(fm, task, thetas), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="data differs"):
        CachedTask.load(path, tiny_task(37, seed=4), fm)
    model2 = add_lora(tiny_bert(layers=4, seed=1), LoraSettings(r=4, alpha=8, layers=(2, 3)), "classifier")
    with pytest.raises(ValueError, match="model differs"):
        CachedTask.load(path, task, FunctionalModel(model2))


def test_cache_dir_reuses_saved_cache(bert, tmp_path):
    fm, task, _, cached = bert
    _, first = with_prefix_cache(fm, task, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.safetensors"))
    assert len(files) == 1 and cached.key in files[0].name
    _, second = with_prefix_cache(fm, task, cache_dir=tmp_path)
    assert second.key == first.key and torch.equal(second.hidden, first.hidden)


def test_max_bytes(bert, llama):
    fm, task, _, cached = bert
    need = cache_bytes(task, fm.model)
    assert need == cached.nbytes
    with pytest.raises(ValueError, match=rf"{need} bytes.*max_bytes=1000"):
        CachedTask.build(task, fm, max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes"):
        with_prefix_cache(fm, task, tiny_task(10, seed=9), max_bytes=need)
    fm_l, task_l, _, cached_l = llama
    assert cache_bytes(task_l, fm_l.model) == cached_l.nbytes
    with pytest.raises(ValueError, match="max_bytes"):
        with_prefix_cache(fm_l, task_l, max_bytes=cached_l.nbytes - 1)


def test_all_layers_adapted_returns_originals():
    model = add_lora(tiny_bert(layers=4), LoraSettings(r=4, alpha=8), "classifier").eval()
    fm = FunctionalModel(model)
    task = tiny_task(8)
    assert first_adapted_layer(fm.layout) == 0
    out = with_prefix_cache(fm, task, task)
    assert out[0] is fm and out[1] is task and out[2] is task
    with pytest.raises(ValueError, match="nothing to cache"):
        suffix_functional_model(fm)


def test_head_only_layout_returns_originals():
    model = add_lora(tiny_bert(layers=4), LoraSettings(r=4, alpha=8, layers=(3,)), "classifier").eval()
    from bayes_lora.lora import ParamLayout

    head = [n for n, p in model.named_parameters() if ".modules_to_save." in n and p.requires_grad]
    fm = FunctionalModel(model, ParamLayout.from_model(model, head))
    assert first_adapted_layer(fm.layout) is None
    task = tiny_task(8)
    assert with_prefix_cache(fm, task) == (fm, task)


@pytest.mark.parametrize(
    "method, options",
    [("map", {}), ("mc_dropout", {"p": 0.1}), ("laplace", {"space": "full", "hessian": "kron", "subset": 24}),
     ("vi", {"steps": 5})],
)
def test_backends_unchanged_on_the_suffix(method, options):
    """Fine-tuning and fitted posteriors agree between the full and the cached path (the
    backends see the same θ layout; Laplace K-FAC calls the suffix module itself)."""
    from bayes_lora.inference.base import FitContext
    from bayes_lora.inference.registry import fit
    from bayes_lora.lora import FullSpace
    from bayes_lora.lora.train import TrainConfig, fine_tune

    lora = LoraSettings(r=4, alpha=8, layers=(2, 3), dropout=0.1)
    fm = FunctionalModel(add_lora(tiny_bert(layers=4), lora, "classifier").eval())
    train, test = tiny_task(32, seed=0), tiny_task(12, seed=1)
    sfm, ctrain, ctest = with_prefix_cache(fm, train, test)
    cfg = TrainConfig(epochs=100, max_steps=8, batch_size=16, lr=1e-2, seed=0)
    anchors = fine_tune(fm, FullSpace(fm.layout), train, cfg).latent[None]
    anchors_c = fine_tune(sfm, FullSpace(sfm.layout), ctrain, cfg).latent[None]
    assert torch.allclose(anchors, anchors_c, atol=1e-5)
    probs = []
    for f, tr, te in ((fm, train, test), (sfm, ctrain, ctest)):
        ctx = FitContext(fm=f, train=tr, anchors=anchors, train_config=cfg)
        if method == "vi":  # the LoRA-XS VI fits around the projected MAP, trained on either path
            ctx.fit_projected_map()
        torch.manual_seed(0)
        probs.append(fit(method, ctx, **options).predict(te, num_samples=3, seed=0).probs)
    assert torch.allclose(probs[0], probs[1], atol=ATOL, rtol=0)
