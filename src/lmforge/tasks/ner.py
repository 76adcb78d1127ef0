"""Token classification (NER): one tag per word, learned and predicted on the word's first sub-token.

A sentence longer than `max_length` sub-tokens is cut, between words, into consecutive pieces
that each fit; every piece is a row, and predictions are joined back per sentence, so no word
goes untagged and entities are scored over whole sentences.

A word the tokenizer turns into no sub-token at all (a zero-width space, a soft hyphen, a lone
combining mark) is invisible to the model: it carries no training label and is predicted "O".
Each row records which of its words own a first sub-token (`meta["has_token"]`), so the
predictions at the labelled positions go to those words, in order, and to no other.
"""

from __future__ import annotations

import collections
import re

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.tasks import data, metrics
from lmforge.tasks.features import IGNORE, Features

WORD = re.compile(r"\w+|[^\w\s]")  # a run of letters/digits, or one punctuation mark: BERT's pre-split


def words_with_offsets(text: str) -> list[tuple[str, int, int]]:
    """Raw text as NER words with their character spans (start, end): how `serve` tags a text and
    how `feedback export` turns corrected entity spans back into CoNLL tags."""
    return [(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def entity_spans(words: list[tuple[str, int, int]], tags: list[str], text: str) -> list[dict]:
    """IOB2 tags of `words` as entities: text, label and character span in `text`."""
    out: list[dict] = []
    for (_, start, end), tag in zip(words, tags):
        kind, _, label = tag.partition("-")
        if kind == "I" and out and out[-1]["label"] == label and out[-1]["open"]:
            out[-1]["end"] = end
            continue
        for entity in out:
            entity["open"] = False
        if kind in ("B", "I") and label:
            out.append({"label": label, "start": start, "end": end, "open": True})
    return [
        {"text": text[e["start"] : e["end"]], "label": e["label"], "start": e["start"], "end": e["end"]} for e in out
    ]


def spans_to_tags(words: list[tuple[str, int, int]], entities: list[dict]) -> list[str]:
    """Entity character spans (label, start, end) as IOB2 tags of `words`: a word inside a span is
    tagged with it, the first such word B-, the rest I-."""
    tags = ["O"] * len(words)
    for entity in sorted(entities, key=lambda e: e["start"]):
        inside = [i for i, (_, s, e) in enumerate(words) if s < entity["end"] and e > entity["start"]]
        for n, i in enumerate(inside):
            tags[i] = ("B-" if n == 0 else "I-") + entity["label"]
    return tags


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


def has_token(word_ids: list, words: int) -> list[bool]:
    """Whether each of a row's `words` owns a sub-token (False: tokenized to nothing, or cut off).

    >>> has_token([None, 0, 0, 2, None], 3)
    [True, False, True]
    """
    present = set(word_ids)
    return [word in present for word in range(words)]


def word_line(sentence_where: str, index: int) -> str:
    """`file:line` of a sentence's `index`-th word (one word per line, no blank lines inside)."""
    path, _, line = sentence_where.rpartition(":")
    return f"{path}:{int(line) + index}" if line.isdigit() else sentence_where


def word_pieces(word_ids: list, words: int, budget: int) -> list[tuple[int, int]]:
    """Word ranges [a, b) of one sentence whose sub-tokens fit `budget` each (a word longer than
    the budget on its own gets a range to itself and is truncated there).

    >>> word_pieces([None, 0, 0, 1, 2, 2, 2, None], 3, 3)
    [(0, 2), (2, 3)]
    """
    counts = collections.Counter(w for w in word_ids if w is not None)
    pieces, start, used = [], 0, 0
    for word in range(words):
        if used + counts[word] > budget and word > start:
            pieces.append((start, word))
            start, used = word, 0
        used += counts[word]
    pieces.append((start, words))
    return pieces


class NerTask(data.FileInputOnly):
    """Tags, encoding, loss, entity metrics and predictions for `AutoModelForTokenClassification`."""

    name = "ner"
    file_hint = "tags words (ner): give a CoNLL file (one word per line)"
    head_suffix = "ForTokenClassification"
    peft_task_type = "TOKEN_CLS"
    default_max_length = 128
    group_by_length = False  # cost ~1 entity F1 on CoNLL-2003 (features.py, benchmarks/results/ner_ab.md)
    head_modules = ("dropout", "classifier")
    default_metric = "f1"

    def __init__(self, labels: list[str]):
        self.labels = labels
        self.label2id = {label: i for i, label in enumerate(labels)}

    @classmethod
    def from_train(cls, sentences: list[data.Sentence], cfg: data.FormatConfig) -> NerTask:
        # "O" first, then entity tags grouped by type (B- before I-)
        tags = {t for s in sentences for t in s.tags}
        ordered = sorted(tags - {"O"}, key=lambda t: (t[2:], t[:1]))
        return cls((["O"] if "O" in tags else []) + ordered)

    @classmethod
    def from_model_config(cls, config, cfg: data.FormatConfig) -> NerTask:
        return cls([config.id2label[i] for i in range(config.num_labels)])

    @staticmethod
    def auto_class() -> type:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    def model_kwargs(self) -> dict:
        return {
            "num_labels": self.num_labels,
            "id2label": dict(enumerate(self.labels)),
            "label2id": dict(self.label2id),
        }

    @staticmethod
    def config_fields() -> dict:
        return {}

    def labels_match(self, saved: list[str], num_labels: int) -> bool:
        return saved == list(self.labels)

    @staticmethod
    def read(path, cfg: data.FormatConfig, role: str, labelled: bool = True) -> list[data.Sentence]:
        return data.read_conll(path, cfg, role, labelled)

    def encode(
        self, sentences: list[data.Sentence], tokenizer, cfg: data.FormatConfig, labelled: bool = True
    ) -> Features:
        if not tokenizer.is_fast:
            raise LmforgeError(
                "NER needs a fast tokenizer (tokenizer.json) to map words to sub-tokens; save the model's tokenizer with `tokenizers`"
            )
        full = tokenizer([s.words for s in sentences], is_split_into_words=True, add_special_tokens=False)
        budget = max(1, cfg.max_length - tokenizer.num_special_tokens_to_add())
        rows = [
            (i, a, b)
            for i, s in enumerate(sentences)
            if s.words
            for a, b in word_pieces(full.word_ids(i), len(s.words), budget)
        ]
        tags = (  # checked before tokenizing; every unseen tag of the file in one error
            data.each_or_all_problems(
                rows,
                lambda row: [
                    data.label_id(t, self.label2id, word_line(sentences[row[0]].where, row[1] + j))
                    for j, t in enumerate(sentences[row[0]].tags[row[1] : row[2]])
                ],
            )
            if labelled
            else None
        )
        encoded = tokenizer(
            [sentences[i].words[a:b] for i, a, b in rows],
            is_split_into_words=True,
            truncation=True,
            max_length=cfg.max_length,
        )
        columns = {"input_ids": encoded["input_ids"], "labels": []}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = encoded["token_type_ids"]
        for r, (_, a, b) in enumerate(rows):
            # unlabelled (predict): tag 0 marks the positions to predict; the loss is then ignored
            tag_ids = tags[r] if labelled else [0] * (b - a)
            columns["labels"].append(align_labels(encoded.word_ids(r), tag_ids))
        sequence = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": 0, "labels": IGNORE}
        meta = {
            "sentence": [i for i, _, _ in rows],
            "where": [sentences[i].where for i, _, _ in rows],
            "words": [sentences[i].words[a:b] for i, a, b in rows],
            "tags": [sentences[i].tags[a:b] for i, a, b in rows],
            "has_token": [has_token(encoded.word_ids(r), b - a) for r, (_, a, b) in enumerate(rows)],
        }
        return Features(columns, {k: v for k, v in sequence.items() if k in columns}, meta)

    # --- training -----------------------------------------------------------------------------

    @staticmethod
    def logits(output) -> torch.Tensor:
        return output.logits

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        return F.cross_entropy(
            logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=IGNORE, reduction="sum"
        )

    @staticmethod
    def count(batch: dict) -> int:
        return int((batch["labels"] != IGNORE).sum())

    @staticmethod
    def has_labels(batch: dict) -> bool:
        return "labels" in batch

    # --- evaluation ---------------------------------------------------------------------------

    def word_tags(self, logits: list[torch.Tensor], features: Features) -> list[list[str]]:
        """Predicted IOB2 tag per word, one list per sentence (its pieces joined in order)."""
        out: list[list[str]] = []
        previous = None
        for row, labels, has, sentence in zip(
            logits, features.columns["labels"], features.meta["has_token"], features.meta["sentence"]
        ):
            # labelled positions: the first sub-tokens (full model) or the cached rows (head mode), in word order
            ids = iter(row[torch.as_tensor(labels[: len(row)]) != IGNORE].argmax(-1).tolist())
            tags = [self.labels[next(ids)] if seen else "O" for seen in has]  # a word without sub-tokens: "O"
            if sentence == previous:
                out[-1].extend(tags)
            else:
                out.append(tags)
            previous = sentence
        return out

    @staticmethod
    def sentence_tags(features: Features) -> list[list[str]]:
        """Gold tags per sentence, pieces joined (the same grouping as `word_tags`)."""
        out: list[list[str]] = []
        previous = None
        for tags, sentence in zip(features.meta["tags"], features.meta["sentence"]):
            if sentence == previous:
                out[-1].extend(tags)
            else:
                out.append(list(tags))
            previous = sentence
        return out

    def metrics(self, logits: list[torch.Tensor], features: Features) -> dict[str, float]:
        return metrics.entities(self.sentence_tags(features), self.word_tags(logits, features))

    @staticmethod
    def row_metrics(rows: list[dict]) -> dict[str, float]:
        """`metrics` from prediction rows (`prediction_rows`)."""
        return metrics.entities([r["label"] for r in rows], [r["prediction"] for r in rows])

    @staticmethod
    def row_scorer(metric: str):
        """Entity precision, recall and F1 (seqeval's strict IOB2 micro average) are ratios of sums of
        per-sentence counts: each sentence's entities are found once, a resample only adds."""
        if metric not in ("f1", "precision", "recall"):
            return None
        from seqeval.scheme import IOB2, Entities

        def counts(row: dict) -> dict:
            true, predicted = (
                {e.to_tuple()[1:] for e in Entities([tags], IOB2).entities[0]}
                for tags in (row["label"], row["prediction"])
            )
            return {"hit": len(true & predicted), "predicted": len(predicted), "true": len(true)}

        def score(rows: list[dict]) -> float:
            hit, predicted, true = (sum(r[k] for r in rows) for k in ("hit", "predicted", "true"))
            precision = hit / predicted if predicted else 0.0
            recall = hit / true if true else 0.0
            if metric == "precision":
                return precision
            if metric == "recall":
                return recall
            return 2 * precision * recall / (precision + recall) if precision + recall else 0.0

        return counts, score

    def prediction_rows(
        self, examples: list[data.Sentence], logits: list[torch.Tensor], features: Features
    ) -> list[dict]:
        tags = self.word_tags(logits, features)
        return [{"where": s.where, "words": s.words, "prediction": t, "label": s.tags} for s, t in zip(examples, tags)]

    @staticmethod
    def is_mistake(row: dict) -> bool:
        return row["prediction"] != row["label"]

    def per_class(self, logits: list[torch.Tensor], features: Features) -> dict[str, dict]:
        return metrics.entity_report(self.sentence_tags(features), self.word_tags(logits, features))

    @staticmethod
    def class_ids(logits: list[torch.Tensor], features: Features) -> None:
        return None  # tags per word, scored as entities: no one class per example

    # --- head mode: cached states of first sub-tokens -----------------------------------------

    @staticmethod
    def cache_row(hidden: torch.Tensor, labels_row) -> tuple[torch.Tensor, list[int]]:
        labels_row = torch.as_tensor(labels_row[: len(hidden)])
        keep = labels_row != IGNORE
        return hidden[keep].clone(), labels_row[keep].tolist()  # (words, H): the classifier is per token

    @staticmethod
    def head(model) -> torch.nn.Module:
        return torch.nn.Sequential(model.dropout, model.classifier)
