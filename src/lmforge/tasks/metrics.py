"""Task metrics: scikit-learn for classification, scipy for correlation, seqeval for entities,
and SQuAD's exact match / F1 with the official answer normalisation."""

from __future__ import annotations

import collections
import re
import string

import numpy as np


def classification(labels, predictions, num_labels: int) -> dict[str, float]:
    """Accuracy, macro/micro F1 and Matthews correlation of class ids; binary tasks add `f1` of class 1."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    labels, predictions = np.asarray(labels), np.asarray(predictions)
    out = {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1_macro": float(
            f1_score(labels, predictions, average="macro", labels=list(range(num_labels)), zero_division=0)
        ),
        "f1_micro": float(
            f1_score(labels, predictions, average="micro", labels=list(range(num_labels)), zero_division=0)
        ),
        "mcc": float(matthews_corrcoef(labels, predictions)),
    }
    if num_labels == 2:  # MRPC/QQP convention: F1 of the positive class
        out["f1"] = float(f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0))
    return out


def class_report(labels, predictions, names: list[str]) -> dict[str, dict[str, float]]:
    """Precision/recall/F1/support per class (class ids; `names[i]` is class i), and their averages."""
    from sklearn.metrics import classification_report

    report = classification_report(
        labels, predictions, labels=list(range(len(names))), target_names=names, output_dict=True, zero_division=0
    )
    return {k: v for k, v in report.items() if isinstance(v, dict)}


def multi_label(labels, predictions) -> dict[str, float]:
    """Micro/macro F1 and exact-set accuracy of 0/1 indicator matrices (N, classes)."""
    from sklearn.metrics import accuracy_score, f1_score

    labels, predictions = np.asarray(labels).astype(int), np.asarray(predictions).astype(int)
    return {
        "accuracy": float(accuracy_score(labels, predictions)),
        "f1_micro": float(f1_score(labels, predictions, average="micro", zero_division=0)),
        "f1_macro": float(f1_score(labels, predictions, average="macro", zero_division=0)),
    }


def regression(labels, predictions) -> dict[str, float]:
    """Pearson and Spearman correlation (STS-B), their mean, and mean squared error."""
    from scipy.stats import pearsonr, spearmanr

    labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    if np.std(predictions) == 0 or np.std(labels) == 0:
        pearson = spearman = 0.0  # undefined for a constant; 0 keeps best-model selection working
    else:
        pearson, spearman = float(pearsonr(labels, predictions)[0]), float(spearmanr(labels, predictions)[0])
    return {
        "pearson": pearson,
        "spearman": spearman,
        "corr": (pearson + spearman) / 2,
        "mse": float(np.mean((labels - predictions) ** 2)),
    }


def entities(tag_sequences, predicted_sequences) -> dict[str, float]:
    """Entity-level precision/recall/F1 (seqeval strict mode, IOB2) and token accuracy."""
    from seqeval.metrics import f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2

    kwargs = {"mode": "strict", "scheme": IOB2, "zero_division": 0}
    flat_true = [t for seq in tag_sequences for t in seq]
    flat_pred = [t for seq in predicted_sequences for t in seq]
    return {
        "f1": float(f1_score(tag_sequences, predicted_sequences, **kwargs)),
        "precision": float(precision_score(tag_sequences, predicted_sequences, **kwargs)),
        "recall": float(recall_score(tag_sequences, predicted_sequences, **kwargs)),
        "accuracy": float(np.mean([a == b for a, b in zip(flat_true, flat_pred)])) if flat_true else 0.0,
    }


def entity_report(tag_sequences, predicted_sequences) -> dict[str, dict[str, float]]:
    """Per entity type precision/recall/F1/support (strict IOB2)."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    report = classification_report(
        tag_sequences, predicted_sequences, mode="strict", scheme=IOB2, output_dict=True, zero_division=0
    )
    return {k: {m: float(v) for m, v in d.items()} for k, d in report.items()}


# --- SQuAD (the official v1.1 evaluation script's normalisation, re-implemented) ------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower case, drop punctuation, drop the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_f1(prediction: str, truth: str) -> float:
    predicted, true = normalize_answer(prediction).split(), normalize_answer(truth).split()
    if not predicted or not true:  # SQuAD v2: an empty answer matches only an empty answer
        return float(predicted == true)
    common = collections.Counter(predicted) & collections.Counter(true)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(true)
    return 2 * precision * recall / (precision + recall)


def answer_exact(prediction: str, truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(truth))


def squad(predictions: dict[str, str], references: dict[str, list[str]]) -> dict[str, float]:
    """Exact match and F1 in percent, each question scored against its best-matching reference.
    With unanswerable questions (SQuAD v2: no references, the right answer is ""), also the
    scores over the answerable ones and the share of unanswerable ones left unanswered."""
    scores = {}
    for qid, truths in references.items():
        prediction = predictions.get(qid, "")
        truths = truths or [""]  # unanswerable (v2)
        scores[qid] = (max(answer_exact(prediction, t) for t in truths), max(answer_f1(prediction, t) for t in truths))

    def mean(ids, column):
        return 100.0 * sum(scores[i][column] for i in ids) / max(len(ids), 1)

    result = {"exact_match": mean(list(scores), 0), "f1": mean(list(scores), 1)}
    unanswerable = [qid for qid, truths in references.items() if not truths]
    if unanswerable:
        answerable = [qid for qid, truths in references.items() if truths]
        result.update(
            has_answer_exact_match=mean(answerable, 0),
            has_answer_f1=mean(answerable, 1),
            no_answer_accuracy=mean(unanswerable, 0),
        )
    return result
