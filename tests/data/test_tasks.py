"""Tasks declared by their files: string labels, text pairs, headerless TSV, nested JSON,
multiple choice (2/4/5 choices, a passage, yes/no answers), the registry, and every bad row a
DataError naming the file, the row and the field."""

import json
from dataclasses import replace

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from bayes_lora.data import (
    BUILTIN_TASKS,
    ColumnNotFoundError,
    DataError,
    MultipleChoiceData,
    TaskSpec,
    TextClassificationData,
    as_ood_texts,
    encode,
    get_task,
    load_task,
    register_task,
)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_jsonl(path, records):
    return write(path, "\n".join(json.dumps(r) for r in records) + "\n")


def pair_tokenizer():
    """A word-level tokenizer with a BERT pair template (segment ids 0 / 1)."""
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d", "e", "f", "g", "h", "the", "cat", "dog", "sat", "ran"]
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]",
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])


# --------------------------------------------------------------------------- classification


@pytest.fixture
def four_classes(tmp_path):
    """A TSV task whose labels are four class names; test and dev use a subset of them."""
    names = ["sports", "business", "world", "tech"]
    train = "text\ttopic\n" + "".join(f"item {i} a b\t{names[i % 4]}\n" for i in range(12))
    write(tmp_path / "news" / "train.tsv", train)
    write(tmp_path / "news" / "test.tsv", "text\ttopic\nx y\ttech\nz w\tbusiness\n")
    spec = TaskSpec(name="news", train="news/train.tsv", test="news/test.tsv", text="text", label="topic")
    return tmp_path, spec


def test_string_labels_take_the_sorted_training_values_in_every_split(four_classes):
    root, spec = four_classes
    assert spec.classes(root) == ("business", "sports", "tech", "world")
    train = spec.load("train", data_dir=root)
    assert train.num_classes == 4 and train.label_names == ("business", "sports", "tech", "world")
    assert train.labels[:4] == (1, 0, 3, 2)  # sports, business, world, tech
    test = spec.load("test", data_dir=root)  # two classes only: the ids still come from training
    assert test.labels == (2, 0) and test.num_classes == 4


def test_given_labels_fix_the_order_and_accept_integer_ids(tmp_path):
    write(tmp_path / "t.csv", "s,y\nhello there,pos\nbad day,neg\nok,1\n")
    spec = TaskSpec(name="t", train=str(tmp_path / "t.csv"), text="s", label="y", labels=("neg", "pos"))
    data = spec.load("train")
    assert data.labels == (1, 0, 1) and data.label_names == ("neg", "pos")


def test_integer_labels_need_no_names_and_unseen_test_classes_are_refused(tmp_path):
    write(tmp_path / "train.tsv", "sentence\tlabel\na\t0\nb\t2\nc\t1\n")
    write(tmp_path / "test.tsv", "sentence\tlabel\na\t1\nb\t3\n")
    spec = TaskSpec(name="ints", train="train.tsv", test="test.tsv")
    assert spec.load("train", data_dir=tmp_path).num_classes == 3
    with pytest.raises(DataError, match=r"test\.tsv, row 2 \(line 3\), field 'label'.*3.*0\.\.2"):
        spec.load("test", data_dir=tmp_path)


def test_a_test_label_training_never_saw_names_file_row_and_field(four_classes):
    root, spec = four_classes
    write(root / "news" / "test.tsv", "text\ttopic\nx y\ttech\nz w\tscience\n")
    with pytest.raises(DataError, match=r"news/test\.tsv, row 2 \(line 3\), field 'topic'.*'science'"
                                        r".*never appears in the training"):
        spec.load("test", data_dir=root)


def test_a_labels_list_that_does_not_cover_the_data(four_classes):
    root, spec = four_classes
    spec = replace(spec, labels=("sports", "business", "world"))
    with pytest.raises(DataError, match=r"train\.tsv, row 4 \(line 5\), field 'topic'.*'tech'.*labels"):
        spec.load("train", data_dir=root)


def test_text_pairs_reach_the_tokenizer_as_pairs_with_segment_ids(tmp_path):
    write(tmp_path / "p.csv", "premise,hypothesis,label\nthe cat sat,the dog ran,entailment\n"
                              "a b,c d e,not_entailment\n")
    spec = TaskSpec(name="pairs", train="p.csv", text=("premise", "hypothesis"))
    data = spec.load("train", data_dir=tmp_path)
    assert data.text_pairs == ("the dog ran", "c d e") and data.labels == (0, 1)
    enc = encode(data, pair_tokenizer(), max_length=16)
    tok = pair_tokenizer()
    assert enc.input_ids[0, :9].tolist() == tok("the cat sat", "the dog ran")["input_ids"]
    # segment 1 starts after the first [SEP]: positions 5..8 of the first pair
    assert enc.token_type_ids[0].tolist()[:9] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    batch = next(enc.batches(2))
    assert torch.equal(batch["inputs"]["token_type_ids"], enc.token_type_ids[:, :9])
    assert enc.subset([1]).token_type_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 1]]
    # a single text keeps no segment ids (the models' default of zeros)
    single = encode(TaskSpec(name="s", train="p.csv", text="premise").load("train", data_dir=tmp_path),
                    pair_tokenizer())
    assert single.token_type_ids is None and "token_type_ids" not in next(single.batches(2))["inputs"]


def test_a_missing_pair_column_names_it_and_the_file(tmp_path):
    write(tmp_path / "p.csv", "premise,label\nthe cat,yes\n")
    spec = TaskSpec(name="pairs", train="p.csv", text=("premise", "hypothesis"))
    with pytest.raises(ColumnNotFoundError, match=r"'hypothesis' not found in .*p\.csv.*'premise', 'label'"):
        spec.load("train", data_dir=tmp_path)


def test_an_empty_text_names_file_row_and_field(tmp_path):
    write(tmp_path / "p.tsv", "a\tb\tlabel\nx\ty\t0\nx\t \t1\n")
    spec = TaskSpec(name="pairs", train="p.tsv", text=("a", "b"))
    with pytest.raises(DataError, match=r"p\.tsv, row 2 \(line 3\), field 'b': empty text"):
        spec.load("train", data_dir=tmp_path)


def test_headerless_tsv_takes_its_field_names_from_columns(tmp_path):
    write(tmp_path / "cola.tsv", "gj04\t1\t\tThe cat sat .\ngj04\t0\t*\tCat the sat .\n")
    spec = TaskSpec(name="c", train="cola.tsv", columns=("source", "label", "mark", "sentence"),
                    text="sentence", labels=("unacceptable", "acceptable"))
    data = spec.load("train", data_dir=tmp_path)
    assert data.texts == ("The cat sat .", "Cat the sat .") and data.labels == (1, 0)
    bad = replace(spec, columns=("source", "label", "sentence"), text="sentence")
    with pytest.raises(ValueError, match=r"cola\.tsv has 4 fields per row but columns = .* names 3"):
        bad.load("train", data_dir=tmp_path)
    with pytest.raises(ValueError, match="field 'text' is not among columns"):
        TaskSpec(name="c", train="x.tsv", columns=("a", "label"), text="text")


def test_nested_json_fields_by_dotted_path(tmp_path):
    write_jsonl(tmp_path / "n.jsonl", [{"input": {"text": "hello a"}, "meta": {"y": "b"}},
                                       {"input": {"text": "bye c"}, "meta": {"y": "a"}}])
    spec = TaskSpec(name="n", train="n.jsonl", text="input.text", label="meta.y")
    data = spec.load("train", data_dir=tmp_path)
    assert data.texts == ("hello a", "bye c") and data.labels == (1, 0)
    with pytest.raises(ColumnNotFoundError, match=r"'meta\.z' not found at .*n\.jsonl, row 1 .*keys there: \['y'\]"):
        replace(spec, label="meta.z").load("train", data_dir=tmp_path)


def test_not_utf8_names_the_file_and_the_encoding(tmp_path):
    (tmp_path / "u.tsv").write_bytes("sentence\tlabel\nhé\t0\n".encode("utf-16"))
    with pytest.raises(ValueError, match=r"u\.tsv is not UTF-8 .*UTF-16"):
        TaskSpec(name="u", train="u.tsv").load("train", data_dir=tmp_path)


def test_a_texts_task_and_any_task_as_ood_texts(tmp_path):
    write(tmp_path / "ood.tsv", "id\ttext\n1\tsome other text\n2\tmore\n")
    spec = TaskSpec(name="other", kind="texts", test="ood.tsv", text="text")
    data = spec.load("test", data_dir=tmp_path)
    assert data.texts == ("some other text", "more") and data.labels == (0, 0)
    mc = MultipleChoiceData("q", ("why?",), (("a", "b"),), (0,), 2, contexts=("ctx",))
    assert as_ood_texts(mc, 3).texts == ("ctx\nwhy?",) and as_ood_texts(mc, 3).num_classes == 3


# --------------------------------------------------------------------------- multiple choice


def test_multiple_choice_with_a_list_of_choices_and_every_answer_form(tmp_path):
    write_jsonl(tmp_path / "mc.jsonl", [
        {"q": "one", "options": ["a", "b", "c", "d", "e"], "gold": 4},      # an index
        {"q": "two", "options": ["a", "b", "c", "d", "e"], "gold": "B"},    # a letter
        {"q": "three", "options": ["x", "y", "z", "w", "v"], "gold": "z"},  # the text
    ])
    spec = TaskSpec(name="mc", kind="multiple_choice", train="mc.jsonl", question="q", choices="options",
                    answer="gold")
    data = spec.load("train", data_dir=tmp_path)
    assert data.num_choices == 5 and data.answers == (4, 1, 2) and data.choices[2][2] == "z"
    write_jsonl(tmp_path / "one.jsonl", [{"q": "one", "options": ["a", "b"], "gold": 2}])
    one_based = replace(spec, train="one.jsonl", answer_base=1)
    assert one_based.load("train", data_dir=tmp_path).answers == (1,)


def test_one_column_per_choice_two_choices(tmp_path):
    write(tmp_path / "piqa.csv", "goal,sol1,sol2,label\nopen a jar,twist the lid,eat the lid,0\n"
                                 "dry hair,use a towel,use water,0\n")
    spec = TaskSpec(name="piqa", kind="multiple_choice", train="piqa.csv", question="goal",
                    choices=("sol1", "sol2"), answer="label")
    data = spec.load("train", data_dir=tmp_path)
    assert data.num_choices == 2 and data.choices[1] == ("use a towel", "use water") and data.answers == (0, 0)


def test_arc_format_is_one_description_with_a_passage(tmp_path):
    rec = {"id": "1", "para": "Plants need light.",
           "question": {"stem": "What do plants need?",
                        "choices": [{"text": "light", "label": "A"}, {"text": "dark", "label": "B"},
                                    {"text": "salt", "label": "C"}, {"text": "oil", "label": "D"}]},
           "answerKey": "A"}
    write_jsonl(tmp_path / "train.jsonl", [rec, {**rec, "answerKey": "D"}])
    spec = replace(get_task("openbookqa"), train=str(tmp_path / "train.jsonl"), context="para")
    data = spec.load("train")
    assert data.answers == (0, 3) and data.contexts == ("Plants need light.",) * 2
    from bayes_lora.data import format_prompt

    assert format_prompt(data.questions[0], data.contexts[0]) == \
        "Plants need light.\nQuestion: What do plants need?\nAnswer:"


def test_yes_no_questions_score_two_choices(tmp_path):
    write_jsonl(tmp_path / "boolq.jsonl", [
        {"question": "is water wet", "passage": "Water is wet.", "answer": True},
        {"question": "is fire cold", "passage": "Fire is hot.", "answer": False},
        {"question": "is it", "passage": "It is.", "answer": "yes"},
    ])
    spec = TaskSpec(name="boolq", kind="multiple_choice", train="boolq.jsonl", context="passage", choices="")
    data = spec.load("train", data_dir=tmp_path)
    assert data.choices == (("no", "yes"),) * 3 and data.answers == (1, 0, 1)
    assert replace(spec, yes_no=("false", "true")).load("train", data_dir=tmp_path).choices[0] == ("false", "true")
    write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "passage": "p", "answer": "maybe"}])
    with pytest.raises(DataError, match=r"bad\.jsonl, row 1, field 'answer'.*boolean.*'maybe'"):
        replace(spec, train="bad.jsonl").load("train", data_dir=tmp_path)


def test_a_choice_count_mismatch_names_the_row_unless_num_choices_filters(tmp_path):
    write_jsonl(tmp_path / "mc.jsonl", [{"q": "a", "c": ["x", "y", "z"], "y": 0},
                                        {"q": "b", "c": ["x", "y"], "y": 1},
                                        {"q": "c", "c": ["x", "y", "z"], "y": 2}])
    spec = TaskSpec(name="mc", kind="multiple_choice", train="mc.jsonl", question="q", choices="c", answer="y")
    with pytest.raises(DataError, match=r"mc\.jsonl, row 2, field 'c': 2 choices, but row 1 has 3.*num_choices = 3"):
        spec.load("train", data_dir=tmp_path)
    kept = replace(spec, num_choices=3).load("train", data_dir=tmp_path)
    assert kept.questions == ("a", "c") and kept.answers == (0, 2)


def test_an_answer_that_matches_no_choice(tmp_path):
    write_jsonl(tmp_path / "mc.jsonl", [{"q": "a", "c": ["x", "y"], "y": "x"},
                                        {"q": "b", "c": ["x", "y"], "y": "maybe"}])
    spec = TaskSpec(name="mc", kind="multiple_choice", train="mc.jsonl", question="q", choices="c", answer="y")
    with pytest.raises(DataError, match=r"mc\.jsonl, row 2, field 'y': answer 'maybe' matches no choice"):
        spec.load("train", data_dir=tmp_path)
    write_jsonl(tmp_path / "mc.jsonl", [{"q": "a", "c": ["x", "y"], "y": 2}])
    with pytest.raises(DataError, match="answer index 2 is out of range for 2 choices"):
        spec.load("train", data_dir=tmp_path)


# --------------------------------------------------------------------------- registry and specs


def test_builtin_tasks_are_descriptions_of_the_shared_files():
    assert {"sst2", "rte", "cola", "arc_easy", "arc_challenge", "openbookqa"} <= set(BUILTIN_TASKS)
    assert get_task("rte").pair and get_task("cola").columns == ("source", "label", "mark", "sentence")
    assert get_task("arc_easy").question == "question.stem"
    with pytest.raises(ValueError, match="unknown task 'mnli'.*rte.*TaskSpec"):
        get_task("mnli")


def test_register_a_task_and_load_it_by_name(tmp_path):
    write(tmp_path / "t.tsv", "sentence\tlabel\nhi\ta\nho\tb\n")
    spec = TaskSpec(name="my_registered_task", train=str(tmp_path / "t.tsv"))
    register_task(spec)
    try:
        assert load_task("my_registered_task").label_names == ("a", "b")
        with pytest.raises(ValueError, match="already registered"):
            register_task(spec)
    finally:
        BUILTIN_TASKS.pop("my_registered_task")


def test_spec_round_trips_through_its_dict_and_refuses_unknown_keys():
    spec = TaskSpec(name="x", train="a.tsv", text=("s1", "s2"), labels=("n", "y"))
    assert spec.to_dict() == {"name": "x", "train": "a.tsv", "text": ["s1", "s2"], "labels": ["n", "y"]}
    assert TaskSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="unknown key 'txt'.*allowed keys"):
        TaskSpec.from_dict({"name": "x", "train": "a", "txt": "s"})
    with pytest.raises(ValueError, match="kind must be one of"):
        TaskSpec(name="x", train="a", kind="regression")
    with pytest.raises(ValueError, match="names no file"):
        TaskSpec(name="x")


def test_a_missing_split_file_names_the_path_and_where_relative_paths_start(tmp_path):
    spec = TaskSpec(name="x", train="nowhere/train.tsv")
    with pytest.raises(FileNotFoundError, match=r"nowhere/train\.tsv .*relative paths are read from the data"):
        spec.load("train", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="task x has no test split"):
        spec.load("test", data_dir=tmp_path)


def test_a_hub_source_is_used_only_when_the_spec_names_one(monkeypatch, tmp_path):
    import sys
    import types

    calls = []

    def load_dataset(*args, split):
        calls.append((args, split))
        return {"question": ["is it", "is not"], "passage": ["yes it is", "it is not"], "answer": [True, False]}

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    spec = TaskSpec(name="boolq", kind="multiple_choice", context="passage", choices="",
                    hf_dataset="super_glue", hf_config="boolq", hf_splits={"train": "train", "test": "validation"})
    data = spec.load("test", data_dir=tmp_path)
    assert calls == [(("super_glue", "boolq"), "validation")] and data.answers == (1, 0)
    with pytest.raises(FileNotFoundError, match="no hub equivalent"):
        spec.load("dev", data_dir=tmp_path)


def test_containers_check_pairs_and_names():
    with pytest.raises(ValueError, match="2 texts but 1 second texts"):
        TextClassificationData("x", ("a", "b"), (0, 1), 2, text_pairs=("c",))
    with pytest.raises(ValueError, match="names 3 classes but has num_classes = 2"):
        TextClassificationData("x", ("a", "b"), (0, 1), 2, label_names=("a", "b", "c"))
    with pytest.raises(ValueError, match="2 questions but 1 contexts"):
        MultipleChoiceData("x", ("a", "b"), (("1", "2"), ("1", "2")), (0, 1), 2, contexts=("c",))
