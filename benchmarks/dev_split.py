"""The *dev* split the dev-chosen settings are chosen on, encoded and prefix-cached like the run's
own tasks (never the test set). SST-2: 1,000 sentences of ≥ 5 words, seeded; any other task:
its whole dev split (or a seeded subsample), with the training split's classes."""
from bayes_lora.data import encode
from bayes_lora.lora.prefix import with_prefix_cache


def dev_split(cfg, prep, data_dir: str = "../shared/data", max_examples: int | None = None):
    """The dev task for a prepared run (``Runner.prepare()``) of config ``cfg``."""
    spec = cfg.data.task_spec
    if spec.name == "sst2" and max_examples is None:
        max_examples = 1000
    classes = spec.classes(data_dir) if spec.kind == "classification" else None
    words = 5 if spec.name == "sst2" else 0
    dev = spec.load("dev", data_dir=data_dir, max_examples=max_examples, seed=0, min_words=words,
                    classes=classes)
    dev = encode(dev, prep.backbone.tokenizer, max_length=cfg.model.max_length)
    return with_prefix_cache(getattr(prep.fm, "full", prep.fm), dev)[1]
