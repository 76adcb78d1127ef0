"""NER alignment: every predicted tag belongs to its own word, through every path that maps
sub-tokens back to words (full model, head-mode cache, sentences split at max_length, predict)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert_config

from lmforge.tasks import data
from lmforge.tasks.backbone import minilm_folder
from lmforge.tasks.features import IGNORE, Features
from lmforge.tasks.ner import NerTask, align_labels, word_pieces

# MiniLM's WordPiece tokenizer drops these words entirely: zero sub-tokens each
ZERO_WIDTH_SPACE, SOFT_HYPHEN, COMBINING_ACUTE, BYTE_ORDER_MARK = "\u200b", "\u00ad", "\u0301", "\ufeff"
SENTENCES = [
    ("EU \u200b rejects German call to boycott British lamb .", "B-ORG O O B-MISC O O O B-MISC O O"),
    ("Peter \u00ad Blackburn met \u0301 John Smith in \ufeff Paris", "B-PER O I-PER O O B-PER I-PER O O B-LOC"),
    ("\u200b Mary visited London \u00ad", "O B-PER O B-LOC O"),
]


@pytest.fixture(scope="module")
def tokenizer():
    from lmforge import tokenizer as tokenizer_mod

    return tokenizer_mod.load(minilm_folder())


def sentences() -> list[data.Sentence]:
    return [
        data.Sentence(words.split(" "), tags.split(), f"ner.txt:{1 + 20 * i}")
        for i, (words, tags) in enumerate(SENTENCES)
    ]


def perfect_logits(task: NerTask, features: Features, gold: list[list[str]]) -> list[torch.Tensor]:
    """(T, labels) per row: the gold tag of each word at its first sub-token, found from the
    tokenizer's own word ids (not from the labels under test); noise everywhere else."""
    rows, sentence_words = [], {}
    for r, sentence in enumerate(features.meta["sentence"]):
        start = sentence_words.get(sentence, 0)
        words = features.meta["words"][r]
        sentence_words[sentence] = start + len(words)
        logits = torch.randn(
            len(features.columns["input_ids"][r]), task.num_labels, generator=torch.Generator().manual_seed(r)
        )
        for position, word in enumerate(features.meta["word_ids"][r]):
            if word is not None and (position == 0 or features.meta["word_ids"][r][position - 1] != word):
                logits[position] = -10.0
                logits[position, task.label2id[gold[sentence][start + word]]] = 10.0
        rows.append(logits)
    return rows


@pytest.fixture(scope="module")
def zero_words(tokenizer):
    words = [ZERO_WIDTH_SPACE, SOFT_HYPHEN, COMBINING_ACUTE, BYTE_ORDER_MARK]
    encoded = tokenizer(words, is_split_into_words=True, add_special_tokens=False)
    assert encoded.word_ids() == [], "the test needs words that tokenize to nothing"
    return words


def encode_with_word_ids(task, tokenizer, examples, max_length, labelled=True):
    """The task's features plus, for the test only, the tokenizer's word ids of each row."""
    fmt = data.FormatConfig(max_length=max_length)
    features = task.encode(examples, tokenizer, fmt, labelled=labelled)
    features.meta["word_ids"] = [
        tokenizer(words, is_split_into_words=True, truncation=True, max_length=max_length).word_ids()
        for words in features.meta["words"]
    ]
    return features


def perfect_round_trip(tokenizer, max_length: int):
    """Encode `sentences()` at `max_length`, score perfect logits; (features, word tags, entity F1, gold)."""
    examples = sentences()
    task = NerTask.from_train(examples, data.FormatConfig())
    features = encode_with_word_ids(task, tokenizer, examples, max_length)
    gold = [s.tags for s in examples]
    logits = perfect_logits(task, features, gold)
    return features, task.word_tags(logits, features), task.metrics(logits, features)["f1"], gold


def test_perfect_logits_score_f1_one_with_zero_subtoken_words(tokenizer, zero_words):
    _, tags, f1, gold = perfect_round_trip(tokenizer, 128)
    assert tags == gold
    assert f1 == 1.0


def test_sentences_split_at_max_length_keep_each_tag_on_its_word(tokenizer, zero_words):
    features, tags, f1, gold = perfect_round_trip(tokenizer, 4)  # 2 sub-tokens per piece: every sentence is cut
    assert all(features.meta["sentence"].count(i) > 1 for i in range(len(gold)))
    assert tags == gold
    assert f1 == 1.0


def test_unlabelled_prediction_keeps_each_tag_on_its_word(tokenizer, zero_words):
    examples = sentences()
    task = NerTask.from_train(examples, data.FormatConfig())
    unlabelled = [data.Sentence(s.words, ["O"] * len(s.words), s.where) for s in examples]
    features = encode_with_word_ids(task, tokenizer, unlabelled, 128, labelled=False)
    gold = [s.tags for s in examples]
    assert task.word_tags(perfect_logits(task, features, gold), features) == gold


def test_head_mode_cache_keeps_each_tag_on_its_word(tokenizer, zero_words):
    """Head mode caches first-sub-token states; scored through an identity head, perfect states give F1 1."""
    examples = sentences()
    task = NerTask.from_train(examples, data.FormatConfig())
    features = encode_with_word_ids(task, tokenizer, examples, 128)
    gold = [s.tags for s in examples]
    cached = [
        task.cache_row(states, labels)
        for states, labels in zip(perfect_logits(task, features, gold), features.columns["labels"])
    ]
    head_features = Features(
        {"hidden": [h for h, _ in cached], "labels": [l for _, l in cached]},
        {"hidden": 0.0, "labels": IGNORE},
        features.meta,
    )
    assert task.word_tags([h for h, _ in cached], head_features) == gold
    assert task.metrics([h for h, _ in cached], head_features)["f1"] == 1.0
    # the split normaliser counts head-mode (cached) rows' labels as it counts full-mode ones
    from lmforge.tasks.features import TaskObjective

    labelled = sum(len(l) for _, l in cached)
    assert TaskObjective(head_features, task, 2, 0, None, normaliser="split").targets(None) == pytest.approx(
        labelled * 2 / len(cached)
    )


def test_zero_subtoken_words_carry_no_training_label(tokenizer, zero_words):
    examples = sentences()
    task = NerTask.from_train(examples, data.FormatConfig())
    features = task.encode(examples, tokenizer, data.FormatConfig(max_length=128))
    for labels, sentence in zip(features.columns["labels"], examples):
        kept = [l for l in labels if l != IGNORE]
        visible = [t for w, t in zip(sentence.words, sentence.tags) if w not in zero_words]
        assert kept == [task.label2id[t] for t in visible]


def test_align_labels_and_word_pieces_skip_words_without_subtokens():
    # word 1 has no sub-token: no label of its own, and word 2 keeps its own tag
    assert align_labels([None, 0, 0, 2, None], [3, 7, 5]) == [IGNORE, 3, IGNORE, 5, IGNORE]
    assert word_pieces([0, 0, 2, 3, 3], 4, 2) == [(0, 2), (2, 3), (3, 4)]  # the empty word stays with its neighbour


def test_training_batches_are_not_grouped_by_length(tokenizer):
    """Length-homogeneous batches cost ~1 NER F1 on CoNLL-2003 (benchmarks/results/ner_ab.md):
    by default a batch mixes short and long sentences as a shuffled epoch gives them."""
    from lmforge.tasks.features import TaskObjective

    short = data.Sentence(["Paris"], ["B-LOC"], "s.txt:1")
    long = data.Sentence("John Smith flew from Paris to London and then on to Rome".split(), ["O"] * 12, "l.txt:1")
    examples = [short, long] * 32
    task = NerTask.from_train(examples, data.FormatConfig())
    features = task.encode(examples, tokenizer, data.FormatConfig(max_length=64))
    objective = TaskObjective(features, task, batch_size=8, seed=0, forward=None)
    shares = [
        float((objective.batch(step)["attention_mask"].sum(1) <= 3).float().mean())
        for step in range(objective.steps_per_epoch)
    ]
    assert sum(share in (0.0, 1.0) for share in shares) <= 1, shares  # grouped by length: all 8 batches pure
    grouped = TaskObjective(features, task, batch_size=8, seed=0, forward=None, group_chunk=50)
    assert all(
        float((grouped.batch(step)["attention_mask"].sum(1) <= 3).float().mean()) in (0.0, 1.0) for step in range(8)
    )


def test_split_normaliser_weighs_every_labelled_token_the_same(tokenizer):
    """With length-grouped batches, dividing each batch's summed loss by its own token count gives a
    token of a short sentence several times the weight of one in a long sentence; `normaliser`
    "split" makes an epoch's gradients add up to the split's per-token mean."""
    from transformers import BertForTokenClassification

    from lmforge.tasks.backbone import full_forward
    from lmforge.tasks.features import TaskObjective

    short = [data.Sentence(["Paris"], ["B-LOC"], "s.txt:1"), data.Sentence(["John", "left"], ["B-PER", "O"], "s.txt:3")]
    long = [
        data.Sentence(("John Smith flew from Paris to London and then on to Rome " * 2).split(), ["O"] * 24, "l.txt:1")
    ]
    examples = short * 4 + long * 4
    task = NerTask.from_train(examples, data.FormatConfig())
    features = task.encode(examples, tokenizer, data.FormatConfig(max_length=64))
    torch.manual_seed(0)
    model = BertForTokenClassification(
        tiny_bert_config(tokenizer.vocab_size, num_labels=task.num_labels)
    ).eval()  # eval: no dropout
    objective = TaskObjective(
        features, task, batch_size=4, seed=0, forward=full_forward(task), group_chunk=50, normaliser="split"
    )
    steps = objective.steps_per_epoch
    assert steps * 4 == len(features)  # every row once per epoch
    for step in range(steps):
        batch = objective.batch(step)
        (objective.loss(model, batch) / objective.targets(batch)).backward()
    per_step = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    everything = features.collate(range(len(features)))
    (objective.loss(model, everything) * steps / task.count(everything)).backward()
    for got, want in zip(per_step, (p.grad for p in model.parameters())):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
