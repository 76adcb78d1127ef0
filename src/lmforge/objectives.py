"""Pretraining objectives: each is a batch maker over token shards plus a loss.

The loop needs three things from an objective:
- `batch(step)`: the whole global batch of that step as tensors, a pure function of
  (seed, step), so resumed, accumulated and multi-process runs see the same data;
- `targets(batch)`: how many positions carry a loss, so the loss can be normalised by the
  global count and not by each micro-batch's own;
- `loss(model, batch)`: the summed loss over the batch's target positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

IGNORE = -100


def window_offsets(tokens: int, window: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` random start offsets of windows of length `window` in a stream of `tokens`."""
    return torch.randint(0, tokens - window + 1, (count,), generator=generator)


def eval_offsets(tokens: int, window: int, max_windows: int | None) -> np.ndarray:
    """Non-overlapping windows over the validation stream, evenly spread when capped."""
    starts = np.arange(0, tokens - window + 1, window)
    if max_windows and len(starts) > max_windows:
        starts = starts[np.linspace(0, len(starts) - 1, max_windows).astype(int)]
    return starts


def gather(tokens: np.ndarray, offsets, window: int) -> torch.Tensor:
    """(N, window) int64 tensor of token windows starting at `offsets`."""
    rows = np.stack([np.asarray(tokens[o : o + window], dtype=np.int64) for o in np.asarray(offsets)])
    return torch.from_numpy(rows)


def _step_generator(seed: int, step: int) -> torch.Generator:
    # One generator per (seed, step): the batch of step N never depends on how we got there.
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@dataclass
class CausalLM:
    """Next-token prediction on packed windows of `context + 1` tokens."""

    train_tokens: np.ndarray
    context: int
    global_batch: int
    seed: int

    @property
    def window(self) -> int:
        return self.context + 1

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        offsets = window_offsets(
            len(self.train_tokens), self.window, self.global_batch, _step_generator(self.seed, step)
        )
        return {"tokens": gather(self.train_tokens, offsets, self.window)}

    def eval_batch(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tokens": windows}

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        tokens = batch["tokens"]
        return tokens.shape[0] * (tokens.shape[1] - 1)

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Input tokens the model reads (throughput counts these)."""
        return self.targets(batch)

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = batch["tokens"]
        inputs, labels = tokens[:, :-1], tokens[:, 1:]  # (B, T) each
        hidden = model.base_model(input_ids=inputs).last_hidden_state  # (B, T, C)
        logits = model.get_output_embeddings()(hidden)  # (B, T, V)
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), reduction="sum")


@dataclass
class MaskedLM:
    """BERT-style masking (80% [MASK], 10% random, 10% kept) on packed `[CLS] ... [SEP]` windows.

    With `sparse_prediction`, only the masked rows go through the vocabulary projection
    (Cramming): at 15% masking that skips ~85% of the head's FLOPs and memory.
    """

    train_tokens: np.ndarray
    context: int
    global_batch: int
    seed: int
    mask_token_id: int
    cls_token_id: int
    sep_token_id: int
    vocab_size: int
    special_ids: tuple[int, ...]
    mlm_probability: float = 0.15
    sparse_prediction: bool = True
    word_starts: torch.Tensor | None = None  # (V,) bool: the token begins a word; set for whole-word masking

    @property
    def window(self) -> int:
        return self.context - 2

    def _chosen(self, input_ids: torch.Tensor, candidates: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Positions to mask: each token with mlm_probability, or with whole-word masking each word
        (a word-start token and the continuation pieces after it) as one draw, all of it or none."""
        draw = torch.rand(input_ids.shape, generator=generator)
        if self.word_starts is not None:
            starts = self.word_starts[input_ids] | ~candidates  # specials stand alone
            columns = torch.arange(input_ids.shape[1]).expand_as(input_ids)
            first = torch.where(starts, columns, 0).cummax(dim=1).values  # (B, T): where each token's word begins
            draw = draw.gather(1, first)
        return (draw < self.mlm_probability) & candidates

    def _wrap(self, windows: torch.Tensor) -> torch.Tensor:
        rows = windows.shape[0]
        cls = torch.full((rows, 1), self.cls_token_id, dtype=torch.long)
        sep = torch.full((rows, 1), self.sep_token_id, dtype=torch.long)
        return torch.cat([cls, windows, sep], dim=1)

    def mask(self, input_ids: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        labels = input_ids.clone()
        candidates = ~torch.isin(input_ids, torch.tensor(self.special_ids))
        chosen = self._chosen(input_ids, candidates, generator)
        labels[~chosen] = IGNORE
        roll = torch.rand(input_ids.shape, generator=generator)
        corrupted = input_ids.clone()
        corrupted[chosen & (roll < 0.8)] = self.mask_token_id
        random_rows = chosen & (roll >= 0.8) & (roll < 0.9)
        corrupted[random_rows] = torch.randint(0, self.vocab_size, input_ids.shape, generator=generator)[random_rows]
        return {"input_ids": corrupted, "labels": labels}

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        generator = _step_generator(self.seed, step)
        offsets = window_offsets(len(self.train_tokens), self.window, self.global_batch, generator)
        return self.mask(self._wrap(gather(self.train_tokens, offsets, self.window)), generator)

    def eval_batch(self, windows: torch.Tensor) -> dict[str, torch.Tensor]:
        # A fixed generator so every evaluation masks the same positions.
        return self.mask(self._wrap(windows), torch.Generator().manual_seed(12345 + int(windows[:, 0].sum())))

    def targets(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return batch["input_ids"].numel()

    def loss(self, model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        if not self.sparse_prediction:
            logits = model(input_ids=batch["input_ids"]).logits  # (B, T, V)
            return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        hidden = model.base_model(input_ids=batch["input_ids"]).last_hidden_state  # (B, T, C)
        rows, targets = padded_selection(labels.flatten(), selection_size(labels.numel(), self.mlm_probability))
        logits = mlm_head(model)(hidden.flatten(0, 1)[rows])  # (M, V), M ~ 15% of B*T, rounded up
        return F.cross_entropy(logits.float(), targets, ignore_index=IGNORE, reduction="sum")

    def predictions(self, model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(predicted ids, true ids) at the masked positions, for masked-token accuracy."""
        labels = batch["labels"]
        hidden = model.base_model(input_ids=batch["input_ids"]).last_hidden_state
        selected = labels != IGNORE
        return mlm_head(model)(hidden[selected]).argmax(-1), labels[selected]


def word_starts(tokenizer) -> torch.Tensor:
    """(V,) bool: which token ids begin a word, for whole-word masking. WordPiece marks the pieces
    that continue a word (`##`); byte-level BPE (`Ġ`) and Unigram/Metaspace (`▁`) mark the ones that
    begin one. Raises ValueError for a tokenizer that marks neither (character level)."""
    import json

    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    prefix = model.get("continuing_subword_prefix")
    vocab = tokenizer.get_vocab()
    starts = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    for token, index in vocab.items():
        starts[index] = not token.startswith(prefix) if prefix else token.startswith(("Ġ", "▁"))
    if prefix is None and not bool(starts.any()):
        raise ValueError("the tokenizer marks no word boundaries")
    for index in tokenizer.all_special_ids:
        starts[index] = True
    return starts


def selection_size(positions: int, probability: float) -> int:
    """Rows the sparse head computes for `positions` tokens masked with `probability`: the mean
    count plus 4 standard deviations (a binomial count exceeds it about once in 30,000 batches),
    rounded up to a multiple of 16. One size for every step keeps the head's shapes fixed, so
    torch.compile never recompiles it: with counts rounded to multiples of 64, a compiled BERT
    4x256 step stalled ~5 s on a recompile inside its first 20 steps. It costs ~15% more head rows
    (the head is ~10% of the step)."""
    mean = positions * probability
    bound = mean + 4 * math.sqrt(positions * probability * (1 - probability))
    return min(positions, max(16, math.ceil(bound / 16) * 16))


def padded_selection(labels: torch.Tensor, size: int = 0, multiple: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Row indices of the masked positions and their labels, padded to `size` rows (to a multiple of
    `multiple` when there are more than `size`, or no `size`).

    The masked count changes every step; a fixed size keeps the head's matmul shapes fixed, so
    kernel caches (oneDNN, torch.compile) stop growing. Padding rows carry IGNORE and add no loss.
    """
    rows = (labels != IGNORE).nonzero().squeeze(1)
    pad = size - rows.numel() if rows.numel() <= size else -rows.numel() % multiple
    targets = labels[rows]
    if pad:
        rows = torch.cat([rows, rows.new_zeros(pad)])
        targets = torch.cat([targets, targets.new_full((pad,), IGNORE)])
    return rows, targets


def mlm_head(model):
    """The prediction head of a stock masked-LM class, applied to selected hidden rows."""
    if hasattr(model, "cls"):  # BertForMaskedLM: transform + decoder
        return model.cls
    if hasattr(model, "head") and hasattr(model, "decoder"):  # ModernBertForMaskedLM
        return lambda rows: model.decoder(model.head(rows))
    raise TypeError(f"no known masked-LM head on {type(model).__name__}")
