"""A task the project has never seen, declared only in the config (and from Python): four string
labelled classes given as text pairs, an OOD file of texts; bad rows of such files end with exit
code 2 and a message naming the file, the row and the field, before any stage."""
from __future__ import annotations

import json

import pytest
import torch
from scenarios import (
    FILLER,
    NEGATIVE,
    POSITIVE,
    WORDS,
    assert_user_error,
    tiny_bert,
    tiny_run_config,
)
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from bayes_lora.data import TaskSpec
from bayes_lora.experiment.cli import main
from bayes_lora.experiment.config import ExperimentConfig, dump_toml, load_config
from bayes_lora.experiment.runner import Runner

#: four topics, each named by a word group; the key word sits in the first text of the pair
TOPICS = {"alpha": POSITIVE[:4], "beta": POSITIVE[4:], "gamma": NEGATIVE[:4], "delta": NEGATIVE[4:]}


def pair_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "</s>"]
    vocab = {t: i for i, t in enumerate(specials + WORDS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", eos_token="</s>",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


def topic_rows(n: int, seed: int) -> list[tuple[str, str, str]]:
    g = torch.Generator().manual_seed(seed)
    names = list(TOPICS)
    rows = []
    for _ in range(n):
        name = names[int(torch.randint(4, (1,), generator=g))]
        key = TOPICS[name][int(torch.randint(4, (1,), generator=g))]
        fill = [FILLER[int(i)] for i in torch.randint(len(FILLER), (5,), generator=g)]
        rows.append((f"{fill[0]} {key} {fill[1]}", " ".join(fill[2:]), name))
    return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("own-task")
    model_dir = root / "tiny-bert-4"
    tiny_bert(num_labels=4, layers=2).save_pretrained(model_dir)
    pair_tokenizer().save_pretrained(model_dir)
    data = root / "mydata"
    data.mkdir()
    for split, n, seed in (("train", 160, 0), ("dev", 32, 1), ("test", 48, 2)):
        lines = ["premise\thypothesis\ttopic"] + ["\t".join(r) for r in topic_rows(n, seed)]
        (data / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    (data / "other.jsonl").write_text("\n".join(json.dumps({"body": {"text": " ".join(WORDS[16 + i: 20 + i])}})
                                                 for i in range(20)) + "\n")
    return root, model_dir, data


def task_table(**over) -> dict:
    return {"name": "topics", "train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv",
            "text": ["premise", "hypothesis"], "label": "topic", **over}


def config(model_dir, **data) -> dict:
    cfg = tiny_run_config(model_dir, data={"task": task_table(), "train_examples": 160, "min_words": 0,
                                           "ood_task": {"name": "other", "kind": "texts", "test": "other.jsonl",
                                                        "text": "body.text"}, **data},
                          anchors={"count": 2, "epochs": 20.0, "lr": 1e-2, "max_steps": 120})
    cfg["methods"] = {"map": {}, "ensemble": {},
                      "laplace_lowrank": {"method": "laplace", "space": "full", "hessian": "lowrank", "subset": 48},
                      "curve_svi": {"method": "curve", "inference": "svi", "svi_steps": 10, "num_samples": 20}}
    return cfg


def test_a_declared_pair_task_with_string_labels_runs_end_to_end(setup, tmp_path, capsys):
    _root, model_dir, data = setup
    path = tmp_path / "topics.toml"
    path.write_text(dump_toml(config(model_dir)))
    assert load_config(path).data.task_spec.pair  # the table is a TaskSpec
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--data-dir", str(data), "--quiet"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["task"] == "topics" and res["label_names"] == ["alpha", "beta", "delta", "gamma"]
    assert res["data"]["task"]["text"] == ["premise", "hypothesis"] and res["data"]["ood_examples"] == 20
    m = res["methods"]
    assert m["map"]["accuracy"] > 0.6  # four classes: chance is 0.25
    for label, row in m.items():
        assert -1 <= row["mcc"] <= 1 and len(row["per_class_accuracy"]) == 4, label
        assert 0 <= row["ood_auroc"] <= 1, label
    # the MCC is the one of the saved predictions
    from bayes_lora.diagnostics.metrics import matthews_corrcoef

    saved = Runner(load_config(path), out).predictions("map")
    assert m["map"]["mcc"] == pytest.approx(matthews_corrcoef(saved["probs"], saved["labels"]))
    # the OOD means are those of the saved OOD predictions, tabulated in the report with their ratio
    from bayes_lora.diagnostics.metrics import ood_auroc, uncertainty_decomposition

    ens = Runner(load_config(path), out).predictions("ensemble")
    h_in, _, mi_in = uncertainty_decomposition(ens["probs"])
    h_out, _, mi_out = uncertainty_decomposition(ens["ood_probs"])
    e = m["ensemble"]
    assert e["ood_mutual_information"] == pytest.approx(float(mi_out.mean()))
    assert e["ood_entropy"] == pytest.approx(float(h_out.mean()))
    assert e["ood_auroc"] == pytest.approx(ood_auroc(mi_in, mi_out))
    assert e["ood_auroc_entropy"] == pytest.approx(ood_auroc(h_in, h_out))
    assert m["map"]["ood_mutual_information"] == 0.0 and m["map"]["ood_auroc"] == 0.5  # one draw: no MI
    report = (out / "report.md").read_text()
    assert "0 = alpha, 1 = beta, 2 = delta, 3 = gamma" in report
    assert "| method | alpha | beta | delta | gamma |" in report
    ratio = e["ood_mutual_information"] / e["mutual_information"]
    assert (f"| ensemble | {e['mutual_information']:.4f} | {e['ood_mutual_information']:.4f} | {ratio:.2f} | "
            f"{e['entropy']:.4f} | {e['ood_entropy']:.4f} | {e['ood_auroc']:.4f} | {e['ood_auroc_entropy']:.4f} |"
            ) in report
    assert "## In- vs out-of-distribution (other)" in report
    assert "[data.task]" in (out / "resolved_config.toml").read_text()


def test_the_same_task_from_python_objects(setup, tmp_path):
    _root, model_dir, data = setup
    task = TaskSpec(name="topics", train=str(data / "train.tsv"), test=str(data / "test.tsv"),
                    text=("premise", "hypothesis"), label="topic")
    d = config(model_dir, task=task, ood_task="")
    d["methods"] = {"map": {}}
    d["anchors"] = {**d["anchors"], "count": 1}
    cfg = ExperimentConfig.from_dict(d)
    assert cfg.data.task is task
    r = Runner(cfg, tmp_path / "py", log=lambda m: None)
    prep = r.prepare()
    assert prep.train.num_classes == 4 and prep.data_info["label_names"] == ["alpha", "beta", "delta", "gamma"]
    batch = next(prep.train.task.batches(4)) if hasattr(prep.train, "task") else next(prep.train.batches(4))
    assert batch["inputs"]["token_type_ids"].max() == 1  # the pair's second segment reaches the model
    res = r.run()
    assert res["methods"]["map"]["accuracy"] > 0.6


def _bad(data_dir, name, text):
    d = data_dir.parent / f"bad-{name}"
    d.mkdir(exist_ok=True)
    for f in data_dir.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    target, content = text
    (d / target).write_text(content)
    return d


_HEAD = "premise\thypothesis\ttopic\n"
_OK = "the good movie\tthe plot was\talpha\nthe bad movie\tit was\tgamma\n"

BAD_ROWS = {
    # case: (config overrides of [data.task], (file, content) or None, words in the message)
    "a test label training never saw": ({}, ("test.tsv", _HEAD + _OK + "a fine film\tit is\tomega\n"),
                                        ["test.tsv, row 3 (line 4), field 'topic'", "'omega'", "never appears"]),
    "a missing pair column": ({"text": ["premise", "claim"]}, None, ["'claim' not found", "train.tsv"]),
    "an empty text": ({}, ("train.tsv", _HEAD + _OK + "the movie\t \tbeta\n"),
                      ["train.tsv, row 3 (line 4), field 'hypothesis': empty text"]),
    "labels that do not cover the data": ({"labels": ["alpha", "beta", "gamma"]}, None,
                                          ["field 'topic'", "'delta'", "labels"]),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_rows_of_a_declared_task_exit_2_naming_file_row_and_field(case, setup, tmp_path, capsys):
    _root, model_dir, data = setup
    over, content, words = BAD_ROWS[case]
    ddir = _bad(data, case.replace(" ", "_"), content) if content else data
    cfg = config(model_dir)
    cfg["data"]["task"] = task_table(**over)
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--data-dir", str(ddir), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert_user_error(err, words, case)
    assert not (out / "stages").exists(), "the error must come before any stage"


def test_config_errors_in_a_task_table_name_the_key(setup):
    _root, model_dir, _data = setup
    from bayes_lora.experiment.config import ConfigError

    with pytest.raises(ConfigError, match=r"data.task: unknown key 'txt'"):
        ExperimentConfig.from_dict(config(model_dir, task=task_table(txt="s")))
    with pytest.raises(ConfigError, match=r"data.task = 'topics' is multiple choice: set model.kind"):
        ExperimentConfig.from_dict(config(model_dir, task=task_table(kind="multiple_choice")))
    with pytest.raises(ConfigError, match=r"data.task: unknown task 'nope'"):
        ExperimentConfig.from_dict(config(model_dir, task="nope"))
    with pytest.raises(ConfigError, match=r"data.task = 'topics' has no test split"):
        ExperimentConfig.from_dict(config(model_dir, task=task_table(test="")))


def test_a_checkpoint_head_of_another_size_is_replaced_or_refused_when_frozen(tmp_path, caplog):
    from bayes_lora.lora.backbone import LoraSettings, load_backbone

    tiny_bert(num_labels=2).save_pretrained(tmp_path / "m")
    pair_tokenizer().save_pretrained(tmp_path / "m")
    with caplog.at_level("WARNING"):
        bb = load_backbone(str(tmp_path / "m"), num_labels=4, lora=LoraSettings(r=2, layers=(1,)))
    assert "head for 2 labels; the task has 4 classes" in caplog.text
    out = bb.model(**pair_tokenizer()(["good film"], return_tensors="pt")).logits
    assert out.shape == (1, 4)
    with pytest.raises(ValueError, match="head for 2 labels but the task has 4 classes.*train_head"):
        load_backbone(str(tmp_path / "m"), num_labels=4, lora=LoraSettings(r=2, train_head=False))
