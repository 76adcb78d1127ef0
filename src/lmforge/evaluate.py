"""`lmforge evaluate`: how good is a language model on a text file.

Causal LM: perplexity and bits per byte over the whole text, scored with a sliding window
(each token is predicted once, with up to `context - stride` tokens of left context carried
over). Bits per byte divide the summed negative log-likelihood by the UTF-8 byte count, so
models with different tokenizers can be compared. Masked LM: masked-token loss and accuracy
with BERT masking at a fixed seed, and pseudo-perplexity (each token masked in turn).

The text is tokenized as the shards tokenize it (`tokenizer.encode_text`, a boundary token after
each document). A corpus folder is scored on its valid split unless `split` says otherwise;
report.json records the files, the split, the tokens and bytes scored and whether `max_tokens` cut.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F

from lmforge import documents, hardware, objectives, report
from lmforge import model as model_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.config import option
from lmforge.documents.split import ending_last
from lmforge.errors import LmforgeError
from lmforge.publish import write_json_atomic
from lmforge.runfolder import RunFolder
from lmforge.tasks.data import FormatConfig


@dataclass
class EvaluateConfig:
    model: str = option("", "model folder (a run's final/ or checkpoints/step_N/)")
    data: list[str] = option([], "text to score: files, folders or globs")
    out: str = option("runs/evaluate", "folder for report.json and report.html")
    objective: Literal["auto", "clm", "mlm"] = option("auto", "auto: from the model (causal or masked LM)")
    context: Optional[int] = option(None, "window length (default: the model's max positions)")
    stride: Optional[int] = option(None, "clm: tokens advanced per window (default: context / 2)")
    batch_size: int = option(16, "windows per forward pass")
    split: Optional[Literal["valid", "test", "train", "all"]] = option(
        None,
        "a corpus folder (from `lmforge corpus`): which split to score (default valid; all: train, valid, test in that order); plain files are scored whole",
    )
    max_tokens: Optional[int] = option(
        None, "score at most this many tokens of the text (the report says whether it cut)"
    )
    mlm_probability: float = option(0.15, "mlm: fraction of tokens masked")
    seed: int = option(0, "mlm: masking seed")
    pseudo_perplexity_tokens: Optional[int] = option(
        20_000,
        "mlm: pseudo-perplexity scores the first this many tokens, each masked in turn (one forward row of `context` tokens each); 0: skip, null: all",
    )
    device: str = option("auto", "cpu, cuda or auto")
    read: documents.ReadConfig = field(default_factory=documents.ReadConfig)
    task: Literal["lm", "classification", "ner", "qa"] = option(
        "lm",
        "lm: perplexity of a language model; classification/ner/qa: metrics of a fine-tuned model on one labelled file (report.html, errors.jsonl)",
    )
    format: FormatConfig = field(default_factory=FormatConfig)


@dataclass
class ScoredText:
    """The token stream that is scored, with what the report needs to say about it."""

    tokens: np.ndarray  # (N,) int64, documents joined by the boundary token
    bytes: int  # UTF-8 bytes of the text behind `tokens`
    cut: bool  # max_tokens stopped reading before the end of the text


def select_split(sources: list[documents.Source], split: str | None) -> tuple[list[documents.Source], str]:
    """The sources to score and the split they are: a corpus folder gives one split (valid unless
    told), plain files are scored whole ("whole"). Raises LmforgeError for a split that cannot apply."""
    if not any(s.split for s in sources):
        if split is not None:
            raise LmforgeError(
                f"--split {split}: only a corpus folder (written by `lmforge corpus`) has splits, and --data names plain files, "
                "which are scored whole; drop --split or point --data at a corpus folder"
            )
        return sources, "whole"
    split = split or "valid"
    if split == "all":
        return sources, split
    if not any(s.split == split for s in sources):
        folders = ", ".join(sorted({str(s.path.parent) for s in sources if s.split}))
        raise LmforgeError(
            f"--data {folders}: the corpus has no {split} split (no {split}-*.jsonl files); pick another --split (valid, test, train or all)"
        )
    return [s for s in sources if s.split in (None, split)], split


def whole_documents(sources: list[documents.Source], read: documents.ReadConfig) -> Iterator[tuple[str, bool]]:
    """(text block, ends_document) over whole sources: a text file is one document, a JSONL line is one."""
    for source in sources:
        if source.kind == "jsonl":
            for _, text in documents.read_jsonl_documents(source.path, read.text_field, read.encoding_errors):
                yield text, True
            continue
        yield from ending_last(documents.read_text_blocks(source.path, encoding_errors=read.encoding_errors))


def _covered_text(tokenizer, block: str, keep: int) -> str:
    """The start of `block` that its first `keep` tokens (as `encode_text` gives them) cover."""
    consumed = 0
    for line, encoding in tokenizer_mod.encode_lines(tokenizer, block):
        if keep < len(encoding.ids):
            return block[: consumed + max((end for _, end in encoding.offsets[:keep]), default=0)]
        keep -= len(encoding.ids)
        consumed += len(line)
    return block[:consumed]


def read_tokens(blocks: Iterable[tuple[str, bool]], tokenizer, max_tokens: int | None) -> ScoredText:
    """The text of (block, ends_document) pairs as the shards hold it: `tokenizer.encode_text` of
    each block, the boundary token after each document. Stops after `max_tokens` tokens; the byte
    count then covers only the scored part."""
    from lmforge.shards import boundary_token_id

    boundary = boundary_token_id(tokenizer)
    pieces, n_bytes, count = [], 0, 0
    for block, ends_document in blocks:
        ids = tokenizer_mod.encode_text(tokenizer, block) + ([boundary] if ends_document else [])
        if max_tokens and count + len(ids) > max_tokens:
            keep = max_tokens - count
            pieces.append(np.asarray(ids[:keep], dtype=np.int64))
            n_bytes += len(_covered_text(tokenizer, block, keep).encode("utf-8"))
            return ScoredText(np.concatenate(pieces), n_bytes, cut=True)
        pieces.append(np.asarray(ids, dtype=np.int64))
        n_bytes += len(block.encode("utf-8"))
        count += len(ids)
    return ScoredText(np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64), n_bytes, cut=False)


@torch.no_grad()
def causal_scores(model, tokens: np.ndarray, context: int, stride: int, batch_size: int, device) -> tuple[float, int]:
    """Summed NLL (nats) and predicted-token count over sliding windows of `context` moved by `stride`.

    The first window scores all its tokens, later ones only the `stride` tokens not yet scored,
    so every token is predicted exactly once.
    """
    full = [s for s in range(0, len(tokens) - context, stride)]
    total, predicted = 0.0, 0
    for i in range(0, len(full), batch_size):
        starts = full[i : i + batch_size]
        batch = torch.from_numpy(np.stack([tokens[s : s + context + 1] for s in starts])).to(device)
        logits = model(input_ids=batch[:, :-1]).logits.float()  # (B, T, V)
        nll = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="none").view(len(starts), context)
        for row, start in enumerate(starts):
            first = 0 if start == 0 else context - stride
            total += float(nll[row, first:].sum())
            predicted += context - first
    tail_start = full[-1] + stride if full else 0
    if tail_start < len(tokens) - 1:
        # the last, shorter window: score only the tokens not yet scored
        begin = max(0, len(tokens) - 1 - context)
        chunk = torch.from_numpy(tokens[begin:]).unsqueeze(0).to(device)
        logits = model(input_ids=chunk[:, :-1]).logits[0].float()
        already = (full[-1] + context - begin) if full else 0
        nll = F.cross_entropy(logits[already:], chunk[0, 1:][already:], reduction="sum")
        total += float(nll)
        predicted += chunk.shape[1] - 1 - already
    return total, predicted


@torch.no_grad()
def masked_scores(
    model, tokenizer, tokens: np.ndarray, context: int, batch_size: int, probability: float, seed: int, device
) -> dict:
    objective = objectives.MaskedLM(
        tokens,
        context,
        batch_size,
        seed,
        tokenizer.mask_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        model.config.vocab_size,
        tuple(tokenizer.all_special_ids),
        probability,
    )
    offsets = objectives.eval_offsets(len(tokens), objective.window, None)
    if len(offsets) == 0:
        raise LmforgeError(
            f"the text has {len(tokens)} tokens, fewer than one window of {objective.window}; give more text or a smaller --context"
        )
    generator = torch.Generator().manual_seed(seed)
    loss_sum = correct = count = 0.0
    for i in range(0, len(offsets), batch_size):
        windows = objectives.gather(tokens, offsets[i : i + batch_size], objective.window)
        batch = objective.mask(objective._wrap(windows), generator)
        batch = {k: v.to(device) for k, v in batch.items()}
        loss_sum += float(objective.loss(model, batch))
        predicted, truth = objective.predictions(model, batch)
        correct += float((predicted == truth).sum())
        count += truth.numel()
    return {"masked_loss": loss_sum / count, "masked_accuracy": correct / count, "masked_tokens": int(count)}


@torch.no_grad()
def pseudo_log_likelihood(
    model, tokenizer, tokens: np.ndarray, context: int, batch_size: int, device
) -> tuple[float, int]:
    """Summed NLL (nats) and count of the tokens scored by masking each in turn (Salazar et al. 2020,
    "Masked Language Model Scoring"); pseudo-perplexity is exp(NLL / count).

    The text is cut into `[CLS] window [SEP]` rows of up to `context` tokens as in training (the
    last row shorter). Each non-special token gets its own copy of its row with that token
    replaced by [MASK]; copies go `batch_size` per forward pass, and only the masked position
    reaches the vocabulary projection (one head row per copy instead of `context`).
    """
    window = context - 2
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    head = objectives.mlm_head(model)
    full = len(tokens) // window * window
    groups = [tokens[:full].reshape(-1, window), tokens[full:].reshape(1, -1)]  # (N, window) and (1, tail)
    total, scored = 0.0, 0
    for windows in groups:
        if windows.size == 0:
            continue
        windows = torch.from_numpy(np.asarray(windows, dtype=np.int64))
        cls = torch.full((len(windows), 1), tokenizer.cls_token_id)
        sep = torch.full((len(windows), 1), tokenizer.sep_token_id)
        rows = torch.cat([cls, windows, sep], dim=1)  # (N, T)
        positions = (~torch.isin(rows, special)).nonzero()  # (P, 2): row, column of each token to score
        for chunk in positions.split(batch_size):
            index = torch.arange(len(chunk))
            copies = rows[chunk[:, 0]]  # (b, T)
            truth = copies[index, chunk[:, 1]].clone()
            copies[index, chunk[:, 1]] = tokenizer.mask_token_id
            hidden = model.base_model(input_ids=copies.to(device)).last_hidden_state  # (b, T, C)
            logits = head(hidden[index.to(device), chunk[:, 1].to(device)])  # (b, V)
            total += float(F.cross_entropy(logits.float(), truth.to(device), reduction="sum"))
            scored += len(chunk)
    return total, scored


def score(model, tokenizer, text: ScoredText, objective: str, context: int, config: EvaluateConfig, device) -> dict:
    """The metrics of a causal LM (loss, perplexity, bits per byte) or a masked LM (masked-token
    loss and accuracy, pseudo-perplexity) on `text`."""
    if objective == "clm":
        stride = config.stride or max(context // 2, 1)
        nll, predicted = causal_scores(model, text.tokens, context, stride, config.batch_size, device)
        return {
            "loss": nll / predicted,
            "perplexity": math.exp(nll / predicted),
            "bits_per_byte": nll / math.log(2) / text.bytes,
            "predicted_tokens": predicted,
            "stride": stride,
        }
    results = masked_scores(
        model, tokenizer, text.tokens, context, config.batch_size, config.mlm_probability, config.seed, device
    )
    if config.pseudo_perplexity_tokens != 0:
        nll, count = pseudo_log_likelihood(
            model, tokenizer, text.tokens[: config.pseudo_perplexity_tokens], context, config.batch_size, device
        )
        if count:
            results.update(pseudo_loss=nll / count, pseudo_perplexity=math.exp(nll / count), pseudo_scored_tokens=count)
    return results


def check_context(context: int | None, model, model_dir: Path) -> int:
    """The window length to score with: the model's own by default; beyond its positions it is an
    error (position ids past the trained table index garbage or fail inside the model)."""
    positions = model_mod.max_positions(model.config)
    if context is None:
        return int(positions or 512)
    if context < 2:
        raise LmforgeError(f"--context {context}: must be at least 2 tokens")
    if positions and context > positions:
        raise LmforgeError(
            f"--context {context}: {model_dir} was built for at most {positions} positions; give --context {positions} or less (or leave it out)"
        )
    return context


def run(config: EvaluateConfig) -> Path:
    """Score `config.model` on `config.data`; write report.json and report.html into `out`."""
    if config.task != "lm":
        from lmforge.tasks.scoring import evaluate_file

        evaluate_file(config)
        return Path(config.out)
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    model_dir = model_mod.folder_of(config.model)
    if config.pseudo_perplexity_tokens is not None and config.pseudo_perplexity_tokens < 0:
        raise LmforgeError(
            f"--pseudo_perplexity_tokens {config.pseudo_perplexity_tokens}: must be 0 (skip), a positive count, or null (all)"
        )
    objective = model_mod.objective_of(model_dir) if config.objective == "auto" else config.objective
    sources, split = select_split(documents.resolve_sources(config.data), config.split)
    tokenizer = tokenizer_mod.load(model_dir)
    model = model_mod.load(model_dir, AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM)
    model_mod.check_vocab(model, tokenizer, str(model_dir))
    context = check_context(config.context, model, model_dir)
    device = hardware.resolve_device(config.device)
    model.to(device).eval()
    folder = RunFolder(config.out, "evaluate").start(config, [s.path for s in sources] + [model_dir])
    text = read_tokens(whole_documents(sources, config.read), tokenizer, config.max_tokens)
    tokens = text.tokens
    if len(tokens) < 2:
        raise LmforgeError(
            f"--data: {', '.join(str(s.path) for s in sources[:3])}: no text to score ({len(tokens)} token(s) after tokenizing); give files with text in them"
        )
    if tokens.max() >= model.config.vocab_size:
        raise LmforgeError(
            f"token id {int(tokens.max())} is outside {model_dir}'s vocabulary of {model.config.vocab_size}; the tokenizer does not belong to this model"
        )
    scored = {
        "data": [str(s.path) for s in sources],
        "split": split,
        "tokens": int(len(tokens)),
        "bytes": text.bytes,
        "max_tokens": config.max_tokens,
        "cut_by_max_tokens": text.cut,
    }
    results = {
        "model": str(model_dir),
        "objective": objective,
        "context": context,
        **score(model, tokenizer, text, objective, context, config, device),
    }
    out = Path(config.out)
    write_json_atomic(out / "report.json", {**results, **scored})
    headline = next(
        (
            f"{k.replace('_', ' ')} {results[k]:.4f}"
            for k in ("perplexity", "pseudo_perplexity", "masked_accuracy", "loss")
            if isinstance(results.get(k), float)
        ),
        "",
    )
    lead = report.Lead(
        f"Score {model_dir} as a {objective.upper()} on held-out text",
        headline,
        f"{scored['split']} ({scored['tokens']:,} tokens)",
        {"data": ", ".join(scored["data"])},
    )
    report.write_html(
        out / "report.html",
        f"lmforge evaluate: {Path(config.out).name}",
        [("What was scored", report.table_html(scored)), ("Results", report.table_html(results))],
        lead,
    )
    folder.finish()
    shown = {
        k: round(v, 4) if isinstance(v, float) else v
        for k, v in results.items()
        if k in ("loss", "perplexity", "bits_per_byte", "masked_loss", "masked_accuracy", "pseudo_perplexity")
    }
    what = (
        f"{len(tokens):,} tokens"
        + ("" if split == "whole" else f" of the {split} split")
        + (", cut at --max_tokens" if text.cut else "")
    )
    print(
        f"{model_dir}: "
        + ", ".join(f"{k} {v}" for k, v in shown.items())
        + f" ({what}); report in {out / 'report.json'}"
    )
    return out
