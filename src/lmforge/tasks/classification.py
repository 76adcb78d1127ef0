"""Sequence classification: single sentences or pairs; multi-class, multi-label or regression."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.tasks import data, metrics
from lmforge.tasks.features import Features

PROBLEM_TYPES = {
    "single": "single_label_classification",
    "multi": "multi_label_classification",
    "regression": "regression",
}


class ClassificationTask:
    """Labels, encoding, loss, metrics and predictions for `AutoModelForSequenceClassification`."""

    name = "classification"
    head_suffix = "ForSequenceClassification"
    peft_task_type = "SEQ_CLS"
    default_max_length = 128
    group_by_length = True
    head_modules = ("dropout", "classifier")

    def __init__(self, kind: str, labels: list[str], separator: str = ","):
        self.kind = kind
        self.labels = labels  # id2label; regression has one output named "score"
        self.separator = separator
        self.label2id = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_train(cls, records: list[data.Record], cfg: data.FormatConfig) -> ClassificationTask:
        kind = data.label_kind(records, cfg)
        if kind == "regression":
            return cls(kind, ["score"])
        if kind == "multi":
            labels = data.build_label_map(l for r in records for l in data.split_labels(r.label, cfg.label_separator))
        else:
            labels = data.build_label_map(r.label for r in records)
        if len(labels) < 2 and kind == "single":
            raise LmforgeError(
                f"{records[0].where.rsplit(':', 1)[0]}: the train split has only one label ('{labels[0]}'); classification needs at least two"
            )
        return cls(kind, labels, cfg.label_separator)

    @classmethod
    def from_model_config(cls, config, cfg: data.FormatConfig) -> ClassificationTask:
        kind = {v: k for k, v in PROBLEM_TYPES.items()}.get(config.problem_type or "", "single")
        labels = [config.id2label[i] for i in range(config.num_labels)]
        return cls(kind, labels)

    @staticmethod
    def auto_class() -> type:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

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
    def config_fields() -> dict:
        return {}

    def labels_match(self, saved: list[str], num_labels: int) -> bool:
        return saved == list(self.labels) or (self.kind == "regression" and num_labels == 1)

    @staticmethod
    def read(path, cfg: data.FormatConfig, role: str, labelled: bool = True) -> list[data.Record]:
        """Records of a CSV/TSV/JSONL table, or of a .txt file: one text per line, unlabelled (predict)."""
        if Path(path).suffix.lower() == ".txt":
            return read_lines(path, role, labelled)
        return data.read_table(path, cfg, role, labelled)

    @staticmethod
    def text_examples(texts: list[tuple[str, str]]) -> list[data.Record]:
        return [data.Record(text, None, None, where) for text, where in texts]

    @staticmethod
    def carried_columns(examples: list[data.Record]) -> list[dict]:
        """Every column of a table row but the text one(s) (a .txt line has none)."""
        return [record.columns for record in examples]

    def target(self, record: data.Record):
        if self.kind == "regression":
            return data.regression_value(record.label, record.where)
        if self.kind == "multi":
            ids = {
                data.label_id(l, self.label2id, record.where) for l in data.split_labels(record.label, self.separator)
            }
            return [float(i in ids) for i in range(self.num_labels)]
        return data.label_id(record.label, self.label2id, record.where)

    def encode(self, records: list[data.Record], tokenizer, cfg: data.FormatConfig, labelled: bool = True) -> Features:
        labels = data.each_or_all_problems(records, self.target) if labelled else None  # before tokenizing
        texts = [r.text for r in records]
        pairs = [r.text_pair or "" for r in records] if records and records[0].text_pair is not None else None
        encoded = tokenizer(texts, pairs, truncation=True, max_length=cfg.max_length)
        columns = {"input_ids": encoded["input_ids"]}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = encoded["token_type_ids"]
        if labelled:
            columns["labels"] = labels
        sequence = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": 0}
        return Features(
            columns, {k: v for k, v in sequence.items() if k in columns}, {"where": [r.where for r in records]}
        )

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

    def row_metrics(self, rows: list[dict]) -> dict[str, float]:
        """`metrics` from prediction rows (`prediction_rows`), in this task's own label map."""
        gold, predicted = [self.gold(r["label"]) for r in rows], [r["prediction"] for r in rows]
        if self.kind == "regression":
            return metrics.regression(gold, predicted)
        index = {name: i for i, name in enumerate(self.labels)}
        if self.kind == "multi":
            hot = lambda names: [int(n in names) for n in self.labels]  # noqa: E731
            return metrics.multi_label([hot(g) for g in gold], [hot(p) for p in predicted])
        return metrics.classification([index[g] for g in gold], [index[p] for p in predicted], self.num_labels)

    @staticmethod
    def row_scorer(metric: str) -> None:
        return None  # compare recomputes `row_metrics` per replicate

    def prediction_text(self, predicted):
        """A prediction as the user's label (a name, a list of names, or a number)."""
        if self.kind == "regression":
            return float(predicted)
        if self.kind == "multi":
            return [self.labels[i] for i, on in enumerate(predicted) if on]
        return self.labels[predicted]

    def prediction_rows(
        self, examples: list[data.Record], logits: list[torch.Tensor], features: Features
    ) -> list[dict]:
        rows = []
        for record, logit, predicted in zip(examples, logits, self.predicted_ids(logits)):
            row = {"where": record.where, "text": record.text, "prediction": self.prediction_text(predicted)}
            if record.text_pair is not None:
                row["text_pair"] = record.text_pair
            if self.kind == "single":
                row["probabilities"] = {
                    self.labels[i]: round(p, 4) for i, p in enumerate(torch.softmax(logit, -1).tolist())
                }
            if record.label is not None:
                row["label"] = record.label
            rows.append(row)
        return rows

    def gold(self, value):
        """A raw label from the file as `prediction_text` gives predictions (regression: the number)."""
        if self.kind == "regression":
            return float(value)
        if self.kind == "multi":
            return sorted(data.split_labels(value, self.separator))
        return data.build_label_map([value])[0]

    def is_mistake(self, row: dict) -> bool:
        if self.kind == "regression":
            return abs(row["prediction"] - self.gold(row["label"])) > 0.5
        if self.kind == "multi":
            return sorted(row["prediction"]) != self.gold(row["label"])
        return row["prediction"] != self.gold(row["label"])

    def class_ids(self, logits: list[torch.Tensor], features: Features) -> tuple[list[int], list[int]] | None:
        if self.kind != "single":
            return None
        return list(features.columns["labels"]), self.predicted_ids(logits)

    def per_class(self, logits: list[torch.Tensor], features: Features) -> dict[str, dict] | None:
        ids = self.class_ids(logits, features)
        return metrics.class_report(*ids, self.labels) if ids is not None else None

    # --- head mode: cached [CLS] states -------------------------------------------------------

    @staticmethod
    def cache_row(hidden: torch.Tensor, labels_row) -> tuple[torch.Tensor, object]:
        return hidden[:1].clone(), labels_row  # (1, H): the pooler reads only [CLS]

    @staticmethod
    def head(model) -> torch.nn.Module:
        return PooledHead(model)


def read_lines(path, role: str, labelled: bool) -> list[data.Record]:
    """One unlabelled record per non-blank line of a text file."""
    path = Path(path)
    if labelled:
        raise LmforgeError(
            f"{path}: a .txt file holds texts without labels (one per line); for --{role} give a CSV/TSV/JSONL file with a label column"
        )
    if not path.is_file():
        raise LmforgeError(f"{path}: {role} file not found; pass an existing file to --{role}")
    with open(path, encoding="utf-8-sig") as handle:
        records = [
            data.Record(line.rstrip("\r\n"), None, None, f"{path}:{number}")
            for number, line in enumerate(handle, 1)
            if line.strip()
        ]
    if not records:
        raise LmforgeError(f"{path}: no text in this file; give one example per line")
    return records


class PooledHead(torch.nn.Module):
    """BERT's pooler + dropout + classifier over cached [CLS] states (B, 1, H) -> (B, labels)."""

    def __init__(self, model):
        super().__init__()
        self.pooler = dict(model.base_model.named_children()).get("pooler")  # None: BERT built without one
        self.dropout = model.dropout
        self.classifier = model.classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        pooled = self.pooler(hidden) if self.pooler is not None else hidden[:, 0]
        return self.classifier(self.dropout(pooled))
