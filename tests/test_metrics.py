"""Task metrics agree with scikit-learn, scipy and seqeval on known inputs; SQuAD normalisation as the official script."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from seqeval.metrics import f1_score as seqeval_f1
from seqeval.scheme import IOB2
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from lmforge.tasks import metrics


def test_classification_matches_sklearn():
    truth = [0, 1, 2, 2, 1, 0, 0, 2, 1, 1]
    predicted = [0, 2, 2, 2, 1, 0, 1, 0, 1, 1]
    out = metrics.classification(truth, predicted, 3)
    assert out["accuracy"] == pytest.approx(accuracy_score(truth, predicted)) == pytest.approx(0.7)
    assert out["f1_macro"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    assert out["f1_micro"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert out["mcc"] == pytest.approx(matthews_corrcoef(truth, predicted))
    assert "f1" not in out  # positive-class F1 only for binary tasks


def test_binary_f1_is_positive_class():
    truth, predicted = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    assert metrics.classification(truth, predicted, 2)["f1"] == pytest.approx(2 / 3)


def test_multi_label_and_regression():
    truth = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    predicted = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]])
    out = metrics.multi_label(truth, predicted)
    assert out["f1_micro"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert out["accuracy"] == pytest.approx(2 / 3)
    labels, scores = [0.0, 1.5, 3.2, 4.8, 2.0], [0.3, 1.0, 3.5, 4.0, 2.5]
    out = metrics.regression(labels, scores)
    assert out["pearson"] == pytest.approx(pearsonr(labels, scores)[0])
    assert out["spearman"] == pytest.approx(spearmanr(labels, scores)[0])
    assert metrics.regression(labels, [1.0] * 5)["pearson"] == 0.0  # constant prediction: defined as 0


def test_entity_f1_is_strict_seqeval():
    truth = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    predicted = [["B-PER", "I-PER", "O", "B-LOC"], ["I-ORG", "O"]]  # an entity starting with I- is wrong in strict mode
    out = metrics.entities(truth, predicted)
    assert out["f1"] == pytest.approx(seqeval_f1(truth, predicted, mode="strict", scheme=IOB2))
    assert out["precision"] == pytest.approx(1.0) and out["recall"] == pytest.approx(2 / 3)
    assert metrics.entity_report(truth, predicted)["ORG"]["recall"] == 0.0


@pytest.mark.parametrize(
    "text, normal",
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an  apple, a pear ", "apple pear"),
        ("Theory", "theory"),  # 'the' only as a whole word
        ("Denver Broncos.", "denver broncos"),
    ],
)
def test_squad_normalisation(text, normal):
    assert metrics.normalize_answer(text) == normal


def test_squad_exact_and_f1_take_the_best_reference():
    predictions = {"q1": "the Denver Broncos", "q2": "Carolina", "q3": "in 1990s"}
    references = {"q1": ["Denver Broncos", "Broncos"], "q2": ["Carolina Panthers"], "q3": ["the 1980s"]}
    out = metrics.squad(predictions, references)
    # q1 exact; q2: precision 1, recall 1/2 -> F1 2/3; q3: 0 overlap
    assert out["exact_match"] == pytest.approx(100 / 3)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)
