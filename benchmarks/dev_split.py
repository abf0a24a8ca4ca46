"""The SST-2 *dev* split the dev-chosen defaults were chosen on: 1,000 sentences of ≥ 5 words,
seeded, encoded and prefix-cached like the run's own tasks (never the test set)."""
from bayes_lora.data import encode, load_task_data
from bayes_lora.lora.prefix import with_prefix_cache


def dev_split(cfg, prep, data_dir: str = "../shared/data"):
    """The dev task for a prepared run (``Runner.prepare()``) of config ``cfg``."""
    dev = load_task_data("sst2", "dev", max_examples=1000, data_dir=data_dir, seed=0, min_words=5)
    dev = encode(dev, prep.backbone.tokenizer, max_length=cfg.model.max_length)
    return with_prefix_cache(prep.fm.full, dev)[1]
