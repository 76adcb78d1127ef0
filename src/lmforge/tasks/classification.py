"""Sequence classification: single sentences or pairs; multi-class, multi-label or regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.tasks import data, metrics
from lmforge.tasks.objective import Features

PROBLEM_TYPES = {"single": "single_label_classification", "multi": "multi_label_classification", "regression": "regression"}


class ClassificationTask:
    """Labels, encoding, loss, metrics and predictions for `AutoModelForSequenceClassification`."""

    name = "classification"
    auto_class = "AutoModelForSequenceClassification"

    def __init__(self, kind: str, labels: list[str], separator: str = ","):
        self.kind = kind
        self.labels = labels  # id2label; regression has one output named "score"
        self.separator = separator
        self.label2id = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_train(cls, records: list[data.Record], cfg: data.FormatConfig) -> "ClassificationTask":
        kind = data.label_kind(records, cfg)
        if kind == "regression":
            return cls(kind, ["score"])
        if kind == "multi":
            labels = data.build_label_map(l for r in records for l in data.split_labels(r.label, cfg.label_separator))
        else:
            labels = data.build_label_map(r.label for r in records)
        if len(labels) < 2 and kind == "single":
            raise LmforgeError(f"{records[0].where.rsplit(':', 1)[0]}: the train split has only one label ('{labels[0]}'); classification needs at least two")
        return cls(kind, labels, cfg.label_separator)

    @classmethod
    def from_model_config(cls, config) -> "ClassificationTask":
        kind = {v: k for k, v in PROBLEM_TYPES.items()}.get(getattr(config, "problem_type", None) or "", "single")
        labels = [config.id2label[i] for i in range(config.num_labels)]
        return cls(kind, labels)

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @property
    def default_metric(self) -> str:
        return {"single": "accuracy", "multi": "f1_micro", "regression": "pearson"}[self.kind]

    def model_kwargs(self) -> dict:
        kwargs = {"num_labels": self.num_labels, "problem_type": PROBLEM_TYPES[self.kind]}
        if self.kind != "regression":
            kwargs.update(id2label=dict(enumerate(self.labels)), label2id=dict(self.label2id))
        return kwargs

    @staticmethod
    def read(path, cfg: data.FormatConfig, role: str, labelled: bool = True):
        return data.read_table(path, cfg, role, labelled)

    def target(self, record: data.Record):
        if self.kind == "regression":
            return data.regression_value(record.label, record.where)
        if self.kind == "multi":
            ids = {data.label_id(l, self.label2id, record.where) for l in data.split_labels(record.label, self.separator)}
            return [float(i in ids) for i in range(self.num_labels)]
        return data.label_id(record.label, self.label2id, record.where)

    def encode(self, records: list[data.Record], tokenizer, cfg: data.FormatConfig, labelled: bool = True) -> Features:
        texts = [r.text for r in records]
        pairs = [r.text_pair or "" for r in records] if records and records[0].text_pair is not None else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=cfg.max_length)
        columns = {"input_ids": encoded["input_ids"]}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = encoded["token_type_ids"]
        if labelled:
            columns["labels"] = [self.target(r) for r in records]
        sequence = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": 0}
        return Features(columns, {k: v for k, v in sequence.items() if k in columns}, {"where": [r.where for r in records]})

    # --- training -----------------------------------------------------------------------------

    @staticmethod
    def logits(output) -> torch.Tensor:
        return output.logits

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        logits = logits.float()
        if self.kind == "regression":
            return F.mse_loss(logits.squeeze(-1), labels.float(), reduction="sum")
        if self.kind == "multi":
            # mean over classes, sum over rows: one target per row, like the other kinds
            return F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum") / self.num_labels
        return F.cross_entropy(logits, labels, reduction="sum")

    @staticmethod
    def count(batch: dict) -> int:
        return len(batch["labels"]) if "labels" in batch else len(batch["input_ids"])

    @staticmethod
    def has_labels(batch: dict) -> bool:
        return "labels" in batch

    # --- evaluation ---------------------------------------------------------------------------

    def predicted_ids(self, logits: list[torch.Tensor]):
        stacked = torch.stack(logits)
        if self.kind == "regression":
            return stacked.squeeze(-1).tolist()
        if self.kind == "multi":
            return (stacked > 0).int().tolist()
        return stacked.argmax(-1).tolist()

    def metrics(self, logits: list[torch.Tensor], features: Features) -> dict[str, float]:
        predicted, truth = self.predicted_ids(logits), features.columns["labels"]
        if self.kind == "regression":
            return metrics.regression(truth, predicted)
        if self.kind == "multi":
            return metrics.multi_label(truth, predicted)
        return metrics.classification(truth, predicted, self.num_labels)

    def prediction_text(self, predicted):
        """A prediction as the user's label (a name, a list of names, or a number)."""
        if self.kind == "regression":
            return float(predicted)
        if self.kind == "multi":
            return [self.labels[i] for i, on in enumerate(predicted) if on]
        return self.labels[predicted]

    # --- head mode: cached [CLS] states -------------------------------------------------------

    @staticmethod
    def cache_row(hidden: torch.Tensor, labels_row) -> tuple[torch.Tensor, object]:
        return hidden[:1].clone(), labels_row  # (1, H): the pooler reads only [CLS]

    @staticmethod
    def head(model) -> torch.nn.Module:
        return PooledHead(model)


class PooledHead(torch.nn.Module):
    """BERT's pooler + dropout + classifier over cached [CLS] states (B, 1, H) -> (B, labels)."""

    def __init__(self, model):
        super().__init__()
        if not (hasattr(model, "classifier") and hasattr(model, "dropout")):
            raise LmforgeError(f"--mode head supports BERT-style models (pooler + classifier); {type(model).__name__} is not one; use --mode full or lora")
        self.pooler = getattr(model.base_model, "pooler", None)
        self.dropout = model.dropout
        self.classifier = model.classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled = self.pooler(hidden) if self.pooler is not None else hidden[:, 0]
        return self.classifier(self.dropout(pooled))
