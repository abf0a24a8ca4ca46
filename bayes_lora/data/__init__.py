"""Data loading and tokenisation for Bayesian LoRA experiments.

Describe a task by its files and fields (:class:`TaskSpec`; the built-in benchmarks are
registered ones: :func:`get_task`, :func:`task_names`) and load a split (:meth:`TaskSpec.load`,
:func:`load_task`; or :func:`load_sst2`, :func:`load_multiple_choice`, the generic
:func:`load_text_classification` / :func:`load_arc_jsonl`) into an immutable
container, then :func:`encode` it with a tokenizer into an
:class:`~bayes_lora.types.EncodedTask` (:class:`EncodedClassification`, or
:class:`PackedMultipleChoice` for a causal LM) that yields batches and class logits.

The benchmark files live outside the repository; :func:`resolve_data_dir` finds them.
"""

from bayes_lora.data.arc import load_arc_jsonl
from bayes_lora.data.batching import batch_to
from bayes_lora.data.choice import (
    EncodedMultipleChoice,
    PackedMultipleChoice,
    format_prompt,
    packing_error,
)
from bayes_lora.data.containers import (
    MultipleChoiceData,
    TextClassificationData,
    subsample_indices,
)
from bayes_lora.data.encode import EncodedClassification, encode
from bayes_lora.data.loaders import (
    MC_TASKS,
    SPLITS,
    TASKS,
    load_multiple_choice,
    load_sst2,
    load_task_data,
    load_text_classification,
)
from bayes_lora.data.paths import DATA_DIR_ENV, resolve_data_dir
from bayes_lora.data.readers import ColumnNotFoundError
from bayes_lora.data.tasks import (
    BUILTIN_TASKS,
    DataError,
    TaskSpec,
    as_ood_texts,
    get_task,
    load_task,
    register_task,
    task_names,
)

__all__ = [
    "BUILTIN_TASKS",
    "DATA_DIR_ENV",
    "MC_TASKS",
    "SPLITS",
    "TASKS",
    "ColumnNotFoundError",
    "DataError",
    "EncodedClassification",
    "EncodedMultipleChoice",
    "MultipleChoiceData",
    "PackedMultipleChoice",
    "TaskSpec",
    "TextClassificationData",
    "as_ood_texts",
    "batch_to",
    "encode",
    "format_prompt",
    "get_task",
    "load_arc_jsonl",
    "load_multiple_choice",
    "load_sst2",
    "load_task",
    "load_task_data",
    "load_text_classification",
    "packing_error",
    "register_task",
    "resolve_data_dir",
    "subsample_indices",
    "task_names",
]
