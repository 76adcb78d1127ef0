"""`lmforge evaluate`: how good is a language model on a text file.

Causal LM: perplexity and bits per byte over the whole text, scored with a sliding window
(each token is predicted once, with up to `context - stride` tokens of left context carried
over). Bits per byte divide the summed negative log-likelihood by the UTF-8 byte count, so
models with different tokenizers can be compared. Masked LM: masked-token loss and accuracy
with BERT masking at a fixed seed.
"""

from __future__ import annotations

import math
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
from lmforge.errors import LmforgeError
from lmforge.runfolder import RunFolder, write_json_atomic
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
    max_tokens: Optional[int] = option(None, "score at most this many tokens of the text")
    mlm_probability: float = option(0.15, "mlm: fraction of tokens masked")
    seed: int = option(0, "mlm: masking seed")
    device: str = option("auto", "cpu, cuda or auto")
    encoding_errors: Literal["strict", "replace"] = option("strict", "non-UTF-8 bytes: stop (strict) or replace with U+FFFD")
    task: Literal["lm", "classification", "ner", "qa"] = option("lm", "lm: perplexity of a language model; classification/ner/qa: metrics of a fine-tuned model on one labelled file (report.html, errors.jsonl)")
    format: FormatConfig = field(default_factory=FormatConfig)


def _objective_of(model_dir: Path) -> str:
    import json

    archs = json.loads((model_dir / "config.json").read_text()).get("architectures") or [""]
    return "mlm" if archs[0].endswith("ForMaskedLM") else "clm"


def read_tokens(sources, tokenizer, encoding_errors: str, max_tokens: int | None) -> tuple[np.ndarray, int]:
    """Token ids of all the text (documents joined by the boundary token) and its UTF-8 byte count."""
    from lmforge.shards import boundary_token_id

    boundary = boundary_token_id(tokenizer)
    pieces, total_bytes, count = [], 0, 0
    for source in sources:
        blocks = documents.read_text_blocks(source.path, encoding_errors=encoding_errors) if source.kind == "text" else (t for _, t in documents.read_jsonl_documents(source.path))
        for block in blocks:
            encoding = tokenizer.backend_tokenizer.encode(block, add_special_tokens=False)
            ids = encoding.ids
            if max_tokens and count + len(ids) >= max_tokens:
                ids = ids[: max_tokens - count]
                block = block[: encoding.offsets[len(ids) - 1][1]] if ids else ""  # bytes of the scored part only
            pieces.append(np.asarray(ids, dtype=np.int64))
            total_bytes += len(block.encode("utf-8"))
            count += len(ids)
            if max_tokens and count >= max_tokens:
                return np.concatenate(pieces), total_bytes
        pieces.append(np.asarray([boundary], dtype=np.int64))
        count += 1
    return np.concatenate(pieces), total_bytes


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
def masked_scores(model, tokenizer, tokens: np.ndarray, context: int, batch_size: int, probability: float, seed: int, device) -> dict:
    objective = objectives.MaskedLM(tokens, context, batch_size, seed, tokenizer.mask_token_id, tokenizer.cls_token_id,
                                    tokenizer.sep_token_id, model.config.vocab_size, tuple(tokenizer.all_special_ids), probability)
    offsets = objectives.eval_offsets(len(tokens), objective.window, None)
    if len(offsets) == 0:
        raise LmforgeError(f"the text has {len(tokens)} tokens, fewer than one window of {objective.window}; give more text or a smaller --context")
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


def run(config: EvaluateConfig) -> Path:
    """Score `config.model` on `config.data`; write report.json and report.html into `out`."""
    if config.task != "lm":
        from lmforge.tasks.evaluation import evaluate_file

        evaluate_file(config)
        return Path(config.out)
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    if not config.model:
        raise LmforgeError("--model is required: a model folder such as runs/NAME/final")
    model_dir = Path(config.model)
    if not (model_dir / "config.json").is_file():
        raise LmforgeError(f"{model_dir}: not a model folder (no config.json); point at a run's final/ folder")
    objective = _objective_of(model_dir) if config.objective == "auto" else config.objective
    tokenizer = tokenizer_mod.load(model_dir)
    model = model_mod.load(model_dir, AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM)
    model_mod.check_vocab(model, tokenizer, str(model_dir))
    device = hardware.resolve_device(config.device)
    model.to(device).eval()
    sources = documents.resolve_sources(config.data)
    folder = RunFolder(config.out, "evaluate").start(config, [s.path for s in sources] + [model_dir])
    tokens, n_bytes = read_tokens(sources, tokenizer, config.encoding_errors, config.max_tokens)
    if tokens.max() >= model.config.vocab_size:
        raise LmforgeError(f"token id {int(tokens.max())} is outside {model_dir}'s vocabulary of {model.config.vocab_size}; the tokenizer does not belong to this model")
    context = config.context or int(getattr(model.config, "max_position_embeddings", 512))
    results: dict = {"model": str(model_dir), "objective": objective, "tokens": int(len(tokens)), "bytes": n_bytes, "context": context}
    if objective == "clm":
        stride = config.stride or max(context // 2, 1)
        nll, predicted = causal_scores(model, tokens, context, stride, config.batch_size, device)
        results.update(loss=nll / predicted, perplexity=math.exp(nll / predicted), bits_per_byte=nll / math.log(2) / n_bytes,
                       predicted_tokens=predicted, stride=stride)
    else:
        results.update(masked_scores(model, tokenizer, tokens, context, config.batch_size, config.mlm_probability, config.seed, device))
    out = Path(config.out)
    write_json_atomic(out / "report.json", results)
    report.write_html(out / "report.html", f"Evaluation of {model_dir}", [("Results", report.table_html(results))])
    folder.finish()
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in results.items() if k in ("loss", "perplexity", "bits_per_byte", "masked_loss", "masked_accuracy")}
    print(f"{model_dir}: " + ", ".join(f"{k} {v}" for k, v in shown.items()) + f" ({len(tokens):,} tokens); report in {out / 'report.json'}")
    return out
