"""NER labels on the first sub-token, QA answers through windows and back to characters: checked exactly."""

from __future__ import annotations

import pytest
import torch

from lmforge.tasks import data
from lmforge.tasks.ner import NerTask, align_labels
from lmforge.tasks.objective import IGNORE, Features, epoch_order, trim
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
    features = task.encode([sentence], tokenizer, data.for_task(data.FormatConfig(), "ner"))
    tokens = tokenizer.convert_ids_to_tokens(features.columns["input_ids"][0])
    labels = features.columns["labels"][0]
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    labelled = [(tok, task.labels[lab]) for tok, lab in zip(tokens, labels) if lab != IGNORE]
    # exactly one label per word, on the word's first piece
    assert labelled == [(tokenizer.tokenize("Blackburn")[0], "B-PER"), ("visited", "O"), (tokenizer.tokenize("Wolfsburg")[0], "B-LOC")]
    assert len(tokenizer.tokenize("Wolfsburg")) > 1  # the example does test sub-tokens
    # predicted logits that favour each word's gold tag map back to word tags
    logits = torch.full((len(labels), 3), -5.0)
    for position, label in enumerate(labels):
        if label != IGNORE:
            logits[position, label] = 5.0
    assert task.word_tags([logits], features) == [["B-PER", "O", "B-LOC"]]


def test_ner_truncated_words_are_tagged_o(tokenizer):
    sentence = data.Sentence(["a"] * 20, ["O"] * 20, "x:1")
    task = NerTask(["O", "B-X"])
    features = task.encode([sentence], tokenizer, data.FormatConfig(max_length=8))
    logits = torch.zeros(8, 2)
    assert task.word_tags([logits], features)[0] == ["O"] * 20


def test_answer_span_by_hand():
    # [CLS] q [SEP] paris is the capital [SEP]; context characters of each token
    offsets = [(0, 0), (0, 4), (0, 0), (0, 5), (6, 8), (9, 12), (13, 20), (0, 0)]
    sequence_ids = [None, 0, None, 1, 1, 1, 1, None]
    assert answer_span(offsets, sequence_ids, 9, 20) == (5, 6)      # "the capital"
    assert answer_span(offsets, sequence_ids, 0, 5) == (3, 3)       # "paris"
    assert answer_span(offsets, sequence_ids, 15, 30) == (0, 0)     # runs past the window: [CLS]


def qa_question(context: str, answer: str) -> data.Question:
    return data.Question("q1", "Which city hosts the tower?", context, [{"text": answer, "answer_start": context.index(answer)}], "x")


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
    start = torch.tensor([9.0, 0, 1, 0, 3])   # [CLS] scores highest but is not context
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
