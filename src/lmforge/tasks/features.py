"""Encoded examples and the loop objective over them: shuffled batches, dynamic padding.

`Features` holds one row per example (token ids, or cached encoder states in head mode) and
collates any subset into padded tensors. `TaskObjective` is what `loop.fit` trains on:
`batch(step)` is a pure function of (seed, step) - an epoch permutation seeded by
(seed, epoch), cut into batches - and `loss` trims a micro-batch's all-padding columns, so
each forward pass is only as long as its longest row.

Training batches are random unless grouping by length is asked for (`lmforge finetune` asks for
it for classification and QA, not for NER). Length-grouped batches (`group_chunk` 50: sorted
within chunks of 50 batches, as the Trainer's `group_by_length`) compute 2.4x fewer padded
tokens on CoNLL-2003, but there length is content: sentences of <= 8 words are results
tables, datelines and headlines (32% numeric words, 0.22 entities per word; longer ones 6%,
0.10), so a grouped batch holds one kind of text, and entity F1 fell on both sides: lmforge
-0.9, Trainer -1.3, lower in 6 of 6 seeds each (benchmarks/results/ner_ab.md). Inference
(`predict_logits`) still sorts by length: there order cannot change the result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

IGNORE = -100
GROUP_CHUNK = 50  # batches per length-sorting chunk when grouping is asked for (the Trainer's megabatch size)


@dataclass
class Features:
    """Columns of per-example values. `sequence` columns are padded (with `pad`) to the batch's longest row."""

    columns: dict[str, list]
    sequence: dict[str, Any] = field(default_factory=dict)  # column -> pad value
    meta: dict[str, list] = field(default_factory=dict)  # per-example values that never become tensors

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    @property
    def lengths(self) -> list[int]:
        key = "input_ids" if "input_ids" in self.columns else "hidden"
        return [len(row) for row in self.columns[key]]

    def collate(self, indices) -> dict[str, torch.Tensor]:
        """Padded tensors of the rows `indices`; `attention_mask` marks real positions."""
        batch: dict[str, torch.Tensor] = {}
        lengths = [len(self.columns[next(iter(self.sequence))][i]) for i in indices] if self.sequence else []
        longest = max(lengths, default=0)
        for name, values in self.columns.items():
            rows = [values[i] for i in indices]
            if name in self.sequence:
                batch[name] = _pad(rows, longest, self.sequence[name])
            elif isinstance(rows[0], torch.Tensor):
                batch[name] = torch.stack(rows)
            else:
                batch[name] = torch.tensor(rows)
        if self.sequence:
            batch["attention_mask"] = (torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]).long()
        return batch

    def subset(self, indices) -> Features:
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return Features(
            {k: pick(v) for k, v in self.columns.items()},
            dict(self.sequence),
            {k: pick(v) for k, v in self.meta.items()},
        )


def _pad(rows: list, longest: int, pad_value) -> torch.Tensor:
    if isinstance(rows[0], torch.Tensor):  # cached hidden states (L, H)
        out = torch.zeros((len(rows), longest) + tuple(rows[0].shape[1:]), dtype=rows[0].dtype)
        for i, row in enumerate(rows):
            out[i, : len(row)] = row
        return out
    out = torch.full((len(rows), longest), pad_value, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


def trim(batch: dict[str, torch.Tensor], sequence_keys) -> dict[str, torch.Tensor]:
    """Cut the columns that are padding in every row (dynamic padding per micro-batch)."""
    mask = batch.get("attention_mask")
    if mask is None:
        return batch
    length = int(mask.sum(1).max())
    keys = set(sequence_keys) | {"attention_mask"}
    return {k: v[:, :length] if k in keys else v for k, v in batch.items()}


def epoch_order(
    lengths: list[int], batch_size: int, seed: int, epoch: int, group_chunk: int = GROUP_CHUNK
) -> list[list[int]]:
    """Batches of example indices for one epoch: shuffled, every batch full, and length-grouped
    within chunks of `group_chunk` batches (1: plain random batches).

    The last batch is filled up with examples from the start of the permutation, so every
    step has `batch_size` rows (processes and micro-batches then split evenly).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    while len(order) % batch_size:
        order += order[: batch_size - len(order) % batch_size]
    batches = []
    chunk = batch_size * group_chunk
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


Normaliser = Literal["batch", "split"]


def mean_targets(features: Features, task, batch_size: int, chunk: int = 1024) -> float:
    """Loss-carrying targets per batch of `batch_size` rows, averaged over `features`."""
    # cached encoder states (head mode) are not needed to count targets: leave them out of the collate
    labels = Features(
        {k: v for k, v in features.columns.items() if k != "hidden"},
        {k: v for k, v in features.sequence.items() if k != "hidden"},
    )
    total = sum(
        task.count(labels.collate(range(start, min(start + chunk, len(labels)))))
        for start in range(0, len(labels), chunk)
    )
    return max(total, 1) * batch_size / len(labels)


class TaskObjective:
    """The loop's objective for a fine-tuning task over `features`.

    `forward(model, batch)` returns the task's logits; `task.loss_sum(logits, batch)` the summed
    loss and `task.count(batch)` the number of loss-carrying targets.
    Switches for A/B runs (benchmarks/ner_ab.py), both measured: `group_chunk` > 1 groups
    batches by length (faster, ~1 F1 worse on CoNLL-2003); `normaliser` "split" divides by the
    split's mean target count per batch instead of this batch's (every labelled token weighs
    the same under length grouping; no F1 change measured: +0.1 over 6 seeds).
    """

    def __init__(
        self,
        features: Features,
        task,
        batch_size: int,
        seed: int,
        forward: Callable,
        group_chunk: int = 1,
        normaliser: Normaliser = "batch",
    ):
        self.features = features
        self.task = task
        self.batch_size = batch_size
        self.seed = seed
        self.forward = forward
        self.group_chunk = group_chunk
        self.normaliser = normaliser
        self.lengths = features.lengths
        self.steps_per_epoch = -(-len(features) // batch_size)
        self._epoch: tuple[int, list] | None = None
        self._mean_targets = mean_targets(features, task, batch_size) if normaliser == "split" else None

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._epoch is None or self._epoch[0] != epoch:
            self._epoch = (epoch, epoch_order(self.lengths, self.batch_size, self.seed, epoch, self.group_chunk))
        return self.features.collate(self._epoch[1][index])

    def targets(self, batch: dict[str, torch.Tensor]) -> float:
        """What the loop divides a step's summed loss by: this batch's target count (`batch`), or
        the split's mean count per batch (`split`: every target weighs the same, whatever its batch)."""
        return self._mean_targets if self.normaliser == "split" else self.task.count(batch)

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        mask = batch.get("attention_mask")
        return int(mask.sum()) if mask is not None else len(next(iter(batch.values())))

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        batch = trim(batch, self.features.sequence)
        return self.task.loss_sum(self.forward(model, batch), batch)


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors a transformers model takes (not labels or offsets)."""
    return {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}


@torch.no_grad()
def predict_logits(
    model, features: Features, forward: Callable, task, batch_size: int, autocast
) -> tuple[list[torch.Tensor], float]:
    """Per-example float logits (trimmed to each row's length) and the mean loss per target.

    Rows go through in length order so padding stays small; results come back in input order.
    """
    was_training = model.training
    model.eval()
    order = sorted(range(len(features)), key=lambda i: -features.lengths[i])
    out: list = [None] * len(features)
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = trim(features.collate(indices), features.sequence)
        with autocast():
            logits = forward(model, batch)
        logits = logits.float()
        if task.has_labels(batch):
            total += float(task.loss_sum(logits, batch))
            count += task.count(batch)
        mask = batch.get("attention_mask")
        for row, i in enumerate(indices):
            out[i] = logits[row, : int(mask[row].sum())] if (mask is not None and logits.dim() >= 3) else logits[row]
    if was_training:
        model.train()
    return out, (total / count if count else float("nan"))
