"""Token classification (NER): one tag per word, learned and predicted on the word's first sub-token."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.tasks import data, metrics
from lmforge.tasks.objective import IGNORE, Features


def align_labels(word_ids: list, tag_ids: list[int]) -> list[int]:
    """Per sub-token labels: the word's tag on its first sub-token, IGNORE on the rest and on specials.

    >>> align_labels([None, 0, 0, 1, None], [3, 5])
    [-100, 3, -100, 5, -100]
    """
    labels, previous = [], None
    for word in word_ids:
        labels.append(IGNORE if word is None or word == previous else tag_ids[word])
        previous = word
    return labels


def word_line(sentence_where: str, index: int) -> str:
    """`file:line` of a sentence's `index`-th word (one word per line, no blank lines inside)."""
    path, _, line = sentence_where.rpartition(":")
    return f"{path}:{int(line) + index}" if line.isdigit() else sentence_where


class NerTask:
    """Tags, encoding, loss, entity metrics and predictions for `AutoModelForTokenClassification`."""

    name = "ner"
    auto_class = "AutoModelForTokenClassification"
    kind = "tags"
    default_metric = "f1"

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.label2id = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_train(cls, sentences: list[data.Sentence], cfg: data.FormatConfig) -> "NerTask":
        # "O" first, then entity tags grouped by type (B- before I-)
        tags = {t for s in sentences for t in s.tags}
        ordered = sorted(tags - {"O"}, key=lambda t: (t[2:], t[:1]))
        return cls((["O"] if "O" in tags else []) + ordered)

    @classmethod
    def from_model_config(cls, config) -> "NerTask":
        return cls([config.id2label[i] for i in range(config.num_labels)])

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def model_kwargs(self) -> dict:
        return {"num_labels": self.num_labels, "id2label": dict(enumerate(self.labels)), "label2id": dict(self.label2id)}

    @staticmethod
    def read(path, cfg: data.FormatConfig, role: str, labelled: bool = True):
        return data.read_conll(path, cfg, role, labelled)

    def encode(self, sentences: list[data.Sentence], tokenizer, cfg: data.FormatConfig, labelled: bool = True) -> Features:
        if not getattr(tokenizer, "is_fast", False):
            raise LmforgeError("NER needs a fast tokenizer (tokenizer.json) to map words to sub-tokens; save the model's tokenizer with `tokenizers`")
        encoded = tokenizer([s.words for s in sentences], is_split_into_words=True, truncation=True, max_length=cfg.max_length)
        columns = {"input_ids": encoded["input_ids"], "labels": []}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = encoded["token_type_ids"]
        kept = []
        for i, sentence in enumerate(sentences):
            # unlabelled (predict): tag 0 marks the positions to predict; the loss is then ignored
            tag_ids = [data.label_id(t, self.label2id, word_line(sentence.where, j)) for j, t in enumerate(sentence.tags)] if labelled else [0] * len(sentence.words)
            word_ids = encoded.word_ids(i)
            columns["labels"].append(align_labels(word_ids, tag_ids))
            kept.append(len({w for w in word_ids if w is not None}))
        sequence = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": 0, "labels": IGNORE}
        meta = {"where": [s.where for s in sentences], "words": [s.words for s in sentences],
                "tags": [s.tags for s in sentences], "kept_words": kept}
        return Features(columns, {k: v for k, v in sequence.items() if k in columns}, meta)

    # --- training -----------------------------------------------------------------------------

    @staticmethod
    def logits(output) -> torch.Tensor:
        return output.logits

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum")

    @staticmethod
    def count(batch: dict) -> int:
        return int((batch["labels"] != IGNORE).sum())

    @staticmethod
    def has_labels(batch: dict) -> bool:
        return "labels" in batch

    # --- evaluation ---------------------------------------------------------------------------

    def word_tags(self, logits: list[torch.Tensor], features: Features) -> list[list[str]]:
        """Predicted IOB2 tag per word; words cut off by max_length are tagged O."""
        out = []
        for row, labels, words in zip(logits, features.columns["labels"], features.meta["words"]):
            positions = torch.as_tensor(labels[: len(row)]) != IGNORE
            ids = row[positions].argmax(-1).tolist()
            out.append([self.labels[i] for i in ids] + ["O"] * (len(words) - len(ids)))
        return out

    def metrics(self, logits: list[torch.Tensor], features: Features) -> dict[str, float]:
        return metrics.entities(features.meta["tags"], self.word_tags(logits, features))

    # --- head mode: cached states of first sub-tokens -----------------------------------------

    @staticmethod
    def cache_row(hidden: torch.Tensor, labels_row) -> tuple[torch.Tensor, list[int]]:
        labels_row = torch.as_tensor(labels_row[: len(hidden)])
        keep = labels_row != IGNORE
        return hidden[keep].clone(), labels_row[keep].tolist()  # (words, H): the classifier is per token

    @staticmethod
    def head(model) -> torch.nn.Module:
        if not (hasattr(model, "classifier") and hasattr(model, "dropout")):
            raise LmforgeError(f"--mode head supports BERT-style token classifiers; {type(model).__name__} is not one; use --mode full or lora")
        return torch.nn.Sequential(model.dropout, model.classifier)
