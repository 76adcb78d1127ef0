"""NER labels on the first sub-token, QA answers through windows and back to characters: checked exactly."""

from __future__ import annotations

import pytest
import torch

from lmforge.tasks import data, format_for
from lmforge.tasks.features import IGNORE, Features, epoch_order, trim
from lmforge.tasks.ner import NerTask, align_labels, word_pieces
from lmforge.tasks.qa import QaTask, answer_span, best_span


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from lmforge.tasks.backbone import minilm_folder

    return AutoTokenizer.from_pretrained(str(minilm_folder()))


def test_align_labels_first_subtoken():
    assert align_labels([None, 0, 0, 1, 2, 2, 2, None], [3, 5, 1]) == [IGNORE, 3, IGNORE, 5, 1, IGNORE, IGNORE, IGNORE]


def test_ner_encoding_on_real_wordpieces(tokenizer):
    sentence = data.Sentence(["Blackburn", "visited", "Wolfsburg"], ["B-PER", "O", "B-LOC"], "x:1")
    task = NerTask(["O", "B-LOC", "B-PER"])
    features = task.encode([sentence], tokenizer, format_for(NerTask, data.FormatConfig()))
    tokens = tokenizer.convert_ids_to_tokens(features.columns["input_ids"][0])
    labels = features.columns["labels"][0]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    labelled = [(tok, task.labels[lab]) for tok, lab in zip(tokens, labels) if lab != IGNORE]
    # exactly one label per word, on the word's first piece
    assert labelled == [
        (tokenizer.tokenize("Blackburn")[0], "B-PER"),
        ("visited", "O"),
        (tokenizer.tokenize("Wolfsburg")[0], "B-LOC"),
    ]
    assert len(tokenizer.tokenize("Wolfsburg")) > 1  # the example does test sub-tokens
    # predicted logits that favour each word's gold tag map back to word tags
    logits = torch.full((len(labels), 3), -5.0)
    for position, label in enumerate(labels):
        if label != IGNORE:
            logits[position, label] = 5.0
    assert task.word_tags([logits], features) == [["B-PER", "O", "B-LOC"]]


def test_long_ner_sentences_are_split_between_words_and_joined_back(tokenizer):
    words = [f"Wolfsburg{i}" if i % 7 == 0 else "visited" for i in range(40)]  # some words take several pieces
    tags = ["B-LOC" if i % 7 == 0 else "O" for i in range(40)]
    short = data.Sentence(["Paris"], ["B-LOC"], "x:50")
    task = NerTask(["O", "B-LOC"])
    features = task.encode([data.Sentence(words, tags, "x:1"), short], tokenizer, data.FormatConfig(max_length=16))
    assert len(features) > 3 and features.meta["sentence"][-1] == 1
    assert all(len(ids) <= 16 for ids in features.columns["input_ids"])
    assert [
        w for i, piece in enumerate(features.meta["words"]) if features.meta["sentence"][i] == 0 for w in piece
    ] == words
    # logits that favour each word's gold tag give back every word's tag, per sentence
    logits = []
    for labels in features.columns["labels"]:
        row = torch.full((len(labels), 2), -5.0)
        for position, label in enumerate(labels):
            if label != IGNORE:
                row[position, label] = 5.0
        logits.append(row)
    assert task.word_tags(logits, features) == [tags, ["B-LOC"]]
    assert task.sentence_tags(features) == [tags, ["B-LOC"]]
    assert task.metrics(logits, features)["f1"] == 1.0


def test_word_pieces_never_split_a_word():
    assert word_pieces([None, 0, 0, 1, 2, 2, 2, None], 3, 3) == [(0, 2), (2, 3)]
    assert word_pieces([0, 0, 0, 0, 0, 1], 2, 3) == [(0, 1), (1, 2)]  # a word over budget stands alone
    assert word_pieces([0, 1, 2], 3, 10) == [(0, 3)]


def test_answer_span_by_hand():
    # [CLS] q [SEP] paris is the capital [SEP]; context characters of each token
    offsets = [(0, 0), (0, 4), (0, 0), (0, 5), (6, 8), (9, 12), (13, 20), (0, 0)]
    sequence_ids = [None, 0, None, 1, 1, 1, 1, None]
    assert answer_span(offsets, sequence_ids, 9, 20) == (5, 6)  # "the capital"
    assert answer_span(offsets, sequence_ids, 0, 5) == (3, 3)  # "paris"
    assert answer_span(offsets, sequence_ids, 15, 30) == (0, 0)  # runs past the window: [CLS]


def qa_question(context: str, answer: str) -> data.Question:
    return data.Question(
        "q1", "Which city hosts the tower?", context, [{"text": answer, "answer_start": context.index(answer)}], "x"
    )


def test_qa_windows_map_answers_back_to_characters(tokenizer):
    filler = " ".join(["The river flows slowly through the valley."] * 12)
    context = f"{filler} The Eiffel Tower stands in Paris, France. {filler}"
    question = qa_question(context, "Paris, France")
    fmt = data.FormatConfig(max_length=64, doc_stride=16)
    features = QaTask().encode([question], tokenizer, fmt)
    assert len(features) > 3  # the long context became several windows
    hits = [i for i in range(len(features)) if features.columns["start_positions"][i] != 0]
    assert hits, "some window holds the answer"
    for i in range(len(features)):
        offsets = features.meta["offsets"][i]
        start, end = features.columns["start_positions"][i], features.columns["end_positions"][i]
        if start == 0:
            continue
        assert context[offsets[start][0] : offsets[end][1]] == "Paris, France"
    # logits that point at the gold tokens in one window decode to the exact character span
    i = hits[0]
    length = len(features.columns["input_ids"][i])
    logits = [torch.zeros(len(features.columns["input_ids"][j]), 2) for j in range(len(features))]
    logits[i][features.columns["start_positions"][i], 0] = 10.0
    logits[i][features.columns["end_positions"][i], 1] = 10.0
    assert len(logits[i]) == length
    assert QaTask().answers(logits, features) == {"q1": "Paris, France"}
    assert QaTask().metrics(logits, features) == {"exact_match": 100.0, "f1": 100.0}


def test_best_span_rejects_question_tokens_and_reversed_spans():
    offsets = [None, None, (0, 5), (6, 8), (9, 12)]
    start = torch.tensor([9.0, 0, 1, 0, 3])  # [CLS] scores highest but is not context
    end = torch.tensor([0.0, 0, 4, 0, 0])
    assert best_span(start, end, offsets) == (pytest.approx(5.0), 0, 5)  # start 2, end 2 (4 -> 2 would be reversed)


def test_epoch_order_is_full_grouped_and_deterministic():
    lengths = [i % 17 for i in range(203)]
    a = epoch_order(lengths, 8, seed=1, epoch=0)
    assert a == epoch_order(lengths, 8, seed=1, epoch=0) and a != epoch_order(lengths, 8, seed=1, epoch=1)
    assert all(len(b) == 8 for b in a) and len(a) == 26
    assert set(i for b in a for i in b) == set(range(203))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 4  # sorted within chunks: batches hold similar lengths


def test_dynamic_padding_trims_all_pad_columns():
    features = Features({"input_ids": [[5, 6, 7, 8, 9], [5, 6]], "labels": [1, 0]}, {"input_ids": 0})
    batch = features.collate([1])
    assert batch["input_ids"].shape == (1, 2)
    batch = features.collate([0, 1])
    trimmed = trim({k: v[1:] for k, v in batch.items()}, features.sequence)
    assert trimmed["input_ids"].tolist() == [[5, 6]] and trimmed["attention_mask"].tolist() == [[1, 1]]


def test_unanswerable_questions_decode_to_empty_by_the_null_score(tokenizer):
    context = "The Eiffel Tower stands in Paris, France."
    answerable = qa_question(context, "Paris, France")
    impossible = data.Question("q2", "Who painted it?", context, [], "x")
    fmt = data.FormatConfig(max_length=64, doc_stride=16)
    task = QaTask.from_train([answerable, impossible], fmt)
    assert task.no_answer and task.config_fields() == {"qa_no_answer": True, "qa_no_answer_threshold": 0.0}
    features = task.encode([answerable, impossible], tokenizer, fmt)
    assert (
        features.columns["start_positions"][1] == 0 and features.columns["end_positions"][1] == 0
    )  # trains towards [CLS]
    logits = [torch.zeros(len(ids), 2) for ids in features.columns["input_ids"]]
    gold = features.columns["start_positions"][0], features.columns["end_positions"][0]
    logits[0][gold[0], 0] = logits[0][gold[1], 1] = 5.0  # span score 10 vs null 0: answered
    logits[1][0, :] = 4.0  # null score 8 vs any span <= 0: no answer
    assert task.answers(logits, features) == {"q1": "Paris, France", "q2": ""}
    assert task.metrics(logits, features) == {
        "exact_match": 100.0,
        "f1": 100.0,
        "has_answer_exact_match": 100.0,
        "has_answer_f1": 100.0,
        "no_answer_accuracy": 100.0,
    }
    # a v1 model (trained without unanswerable questions) always answers
    assert QaTask(no_answer=False).answers(logits, features)["q2"] != ""
    # the threshold moves the decision: a null score must beat the span by more than it
    logits[0][0, :] = 5.5  # null 11 > span 10
    assert task.answers(logits, features)["q1"] == ""
    assert QaTask(True, no_answer_threshold=2.0).answers(logits, features)["q1"] == "Paris, France"


def test_squad_json_with_a_missing_field_names_the_record(tmp_path):
    import json

    from lmforge.errors import LmforgeError

    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"data": [{"paragraphs": [{"context": "abc", "qas": [{"id": "q7", "answers": []}]}]}]}))
    with pytest.raises(LmforgeError, match=r"bad.json: question q7: field 'question' is missing"):
        data.read_squad(path)
    path.write_text(json.dumps({"data": [{"paragraphs": [{"qas": []}]}]}))
    with pytest.raises(LmforgeError, match=r"data\[0\]\.paragraphs\[0\]: field 'context' is missing"):
        data.read_squad(path)


def test_a_wrong_answer_to_an_unanswerable_question_is_a_mistake():
    from lmforge.tasks.scoring import mistakes

    rows = [
        {"prediction": "Paris", "answers": []},
        {"prediction": "", "answers": []},
        {"prediction": "Paris", "answers": ["Paris"]},
        {"prediction": "", "answers": ["Paris"]},
    ]
    assert mistakes(QaTask(no_answer=True), rows) == [rows[0], rows[3]]
