"""BERT masking statistics of `objectives.MaskedLM.mask` on a large batch at a fixed seed."""

import math

import numpy as np
import torch

from lmforge import objectives

PAD, UNK, CLS, SEP, MASK = 0, 1, 2, 3, 4
VOCAB = 1000


def within(count: int, trials: int, probability: float, sds: float = 4.0) -> bool:
    """`count` successes in `trials` is within `sds` binomial standard deviations of the expectation."""
    return abs(count - trials * probability) <= sds * math.sqrt(trials * probability * (1 - probability))


def masking_batch() -> tuple[objectives.MaskedLM, torch.Tensor]:
    """1024 rows of `[CLS] text [SEP] more text [SEP] [PAD]...`: special tokens at known places."""
    objective = objectives.MaskedLM(
        np.zeros(10, dtype=np.int64),
        context=128,
        global_batch=1,
        seed=0,
        mask_token_id=MASK,
        cls_token_id=CLS,
        sep_token_id=SEP,
        vocab_size=VOCAB,
        special_ids=(PAD, UNK, CLS, SEP, MASK),
        mlm_probability=0.15,
    )
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(5, VOCAB, (1024, 128), generator=generator)
    input_ids[:, 0] = CLS
    input_ids[:, 60] = SEP
    input_ids[:, 100] = SEP
    input_ids[:, 101:] = PAD
    input_ids[::7, 30] = UNK
    return objective, input_ids


def test_mask_selects_mlm_probability_of_ordinary_tokens_and_never_a_special_one():
    objective, input_ids = masking_batch()
    batch = objective.mask(input_ids, torch.Generator().manual_seed(0))
    labels, corrupted = batch["labels"], batch["input_ids"]
    special = torch.isin(input_ids, torch.tensor(objective.special_ids))
    selected = labels != objectives.IGNORE
    assert not (selected & special).any()
    assert torch.equal(labels[selected], input_ids[selected])  # a selected position's label is its original token
    assert torch.equal(corrupted[~selected], input_ids[~selected])  # positions not selected are left alone
    ordinary = int((~special).sum())
    assert within(int(selected.sum()), ordinary, 0.15)


def test_selected_tokens_are_80_percent_mask_10_percent_random_10_percent_kept():
    objective, input_ids = masking_batch()
    batch = objective.mask(input_ids, torch.Generator().manual_seed(0))
    selected = batch["labels"] != objectives.IGNORE
    original, corrupted = input_ids[selected], batch["input_ids"][selected]
    total = int(selected.sum())  # ~15,000
    masked = int((corrupted == MASK).sum())
    kept = int((corrupted == original).sum())
    random_token = total - masked - kept
    # a random draw lands on [MASK] or on the original token with probability 1/VOCAB each
    assert within(masked, total, 0.8 + 0.1 / VOCAB)
    assert within(kept, total, 0.1 + 0.1 / VOCAB)
    assert within(random_token, total, 0.1 * (1 - 2 / VOCAB))
    replaced = corrupted[(corrupted != MASK) & (corrupted != original)]
    assert len(torch.unique(replaced)) > 0.25 * VOCAB  # spread over the vocabulary, not one token


def test_masking_is_a_function_of_the_generator_seed():
    objective, input_ids = masking_batch()
    first = objective.mask(input_ids, torch.Generator().manual_seed(0))
    again = objective.mask(input_ids, torch.Generator().manual_seed(0))
    other = objective.mask(input_ids, torch.Generator().manual_seed(1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["labels"], other["labels"])


def test_sparse_head_rows_have_one_size_whatever_the_masked_count():
    """A fixed row count keeps compiled shapes fixed; padding rows carry no loss."""
    size = objectives.selection_size(4096, 0.15)
    assert size % 16 == 0 and 4096 * 0.15 + 3 * (4096 * 0.15 * 0.85) ** 0.5 < size < 4096 * 0.15 * 1.25
    for count in (0, 500, 614, size):
        labels = torch.full((4096,), objectives.IGNORE)
        labels[torch.randperm(4096)[:count]] = 7
        rows, targets = objectives.padded_selection(labels, size)
        assert rows.shape == targets.shape == (size,)
        assert int((targets != objectives.IGNORE).sum()) == count
        assert torch.equal(torch.sort(rows[:count]).values, (labels != objectives.IGNORE).nonzero().squeeze(1))
    labels = torch.full((4096,), 7)  # more than the size: rounded up to a multiple of 64 instead
    rows, _ = objectives.padded_selection(labels, size)
    assert rows.numel() == 4096
    assert objectives.selection_size(10, 0.15) == 10  # never more rows than positions
