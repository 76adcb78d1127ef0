"""Labelled-data tasks for fine-tuning: readers, encoders, losses, post-processing and metrics.

    data.py            CSV/TSV/JSONL tables, CoNLL columns, SQuAD JSON; label maps
    classification.py  single sentences and pairs: multi-class, multi-label, regression
    ner.py             token classification, labels on the first sub-token of each word
    qa.py              extractive QA with doc stride; answers mapped back to character offsets
    metrics.py         accuracy, F1, MCC, Pearson/Spearman, seqeval entity F1, SQuAD EM/F1
    features.py        encoded examples and the loop's objective over them (length-grouped batches, dynamic padding)
    backbone.py        the pretrained model: --model sources, task heads, full / LoRA / head-only (cached states)
    scoring.py         a fine-tuned model over a file: predictions, metrics, report.html, errors.jsonl

`Task` is everything finetune, evaluate and predict use of a task; `TASKS` maps `--task` to its class.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from lmforge.tasks.classification import ClassificationTask
from lmforge.tasks.ner import NerTask
from lmforge.tasks.qa import QaTask

if TYPE_CHECKING:
    import torch

    from lmforge.tasks.data import FormatConfig
    from lmforge.tasks.features import Features

TaskName = Literal["classification", "ner", "qa"]


@runtime_checkable
class Task(Protocol):
    """A fine-tuning task: its facts (class members, known before any data is read) and what it does
    with examples, a model's outputs and its predictions."""

    name: ClassVar[str]  # the --task value
    head_suffix: ClassVar[str]  # how the saved head's architecture name ends, e.g. "ForTokenClassification"
    peft_task_type: ClassVar[str]  # peft's TaskType for --mode lora
    default_max_length: ClassVar[int]  # --format.max_length when not given
    group_by_length: ClassVar[bool]  # --train.group_by_length auto
    head_modules: ClassVar[tuple[str, ...]]  # the HF model's children that --mode head trains
    labels: list[str]  # id2label ([] for QA)
    default_metric: str  # the valid metric that picks the best checkpoint unless told

    @staticmethod
    def auto_class() -> type:
        """The transformers Auto class that loads a model with this task's head."""

    @staticmethod
    def read(path: str | Path, cfg: FormatConfig, role: str, labelled: bool = True) -> list:
        """The examples of a file (`role` names its flag in errors)."""

    @classmethod
    def from_train(cls, examples: list, cfg: FormatConfig) -> Task:
        """The task (label map, kind) as the train split defines it."""

    @classmethod
    def from_model_config(cls, config, cfg: FormatConfig) -> Task:
        """The task a fine-tuned model was saved with; `--format.*` flags override saved settings."""

    def model_kwargs(self) -> dict:
        """from_pretrained arguments of a new head (num_labels, id2label, ...)."""

    def config_fields(self) -> dict:
        """Extra config.json fields saved with the model, read back by `from_model_config`."""

    def labels_match(self, saved: list[str], num_labels: int) -> bool:
        """Whether a saved head, with id2label `saved` and `num_labels` outputs, fits this task's labels."""

    def encode(self, examples: list, tokenizer, cfg: FormatConfig, labelled: bool = True) -> Features: ...

    def text_examples(self, texts: list[tuple[str, str]]) -> list:
        """Unlabelled examples from plain texts, (text, where) each (predict's --text); LmforgeError
        where one text is not an example of this task."""

    def carried_columns(self, examples: list) -> list[dict] | None:
        """Per example read from a file, the input columns predict copies into its row (ids and the
        like); None where the format has none."""

    # training
    def logits(self, output) -> torch.Tensor: ...
    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor: ...
    def count(self, batch: dict) -> int: ...
    def has_labels(self, batch: dict) -> bool: ...

    # evaluation
    def metrics(self, logits: list[torch.Tensor], features: Features) -> dict[str, float]: ...

    def row_metrics(self, rows: list[dict]) -> dict[str, float]:
        """`metrics` recomputed from `prediction_rows` output (what `lmforge compare` resamples)."""

    def row_scorer(self, metric: str) -> tuple[Callable[[dict], dict], Callable[[list[dict]], float]] | None:
        """For a metric that is a ratio of per-example counts: (row -> its counts, counts of many rows
        -> the metric), so a bootstrap replicate sums counts instead of recomputing everything; None
        where the metric has no such form (then `row_metrics` is used)."""

    def prediction_rows(self, examples: list, logits: list[torch.Tensor], features: Features) -> list[dict]:
        """One JSON-ready row per example, in file order; gold fields are `label` or `answers`."""

    def is_mistake(self, row: dict) -> bool:
        """Whether a labelled prediction row is wrong."""

    def per_class(self, logits: list[torch.Tensor], features: Features) -> dict[str, dict] | None:
        """Precision/recall/F1/support per class or entity type; None where the task has no classes."""

    def class_ids(self, logits: list[torch.Tensor], features: Features) -> tuple[list[int], list[int]] | None:
        """(true, predicted) class id per example when each has exactly one class (a confusion matrix applies), else None."""

    # head mode
    def cache_row(self, hidden: torch.Tensor, labels_row) -> tuple[torch.Tensor, Any]: ...
    def head(self, model) -> torch.nn.Module: ...


TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "ner": NerTask, "qa": QaTask}


def format_for(task: type[Task], cfg: FormatConfig) -> FormatConfig:
    """`cfg` with the task's defaults filled in (max_length)."""
    return dataclasses.replace(cfg, max_length=cfg.max_length or task.default_max_length)
