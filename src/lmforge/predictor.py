"""A loaded model that answers requests: one call, one forward pass over a batch of inputs.

Used by `lmforge serve` (its micro-batcher calls `Predictor.run` with the inputs of several
requests at once). Inputs are plain dicts, checked by the server before they get here:

    classification  {"text": str, "text_pair": str | None}  -> {"label", "scores"} (multi: labels; regression: value)
    ner             {"text": str}                          -> {"entities": [{text, label, start, end}], "words", "tags"}
    qa              {"question": str, "context": str}      -> {"answer", "start", "end", "score"}
    fill-mask       {"text": str with the mask token, "top_k": int} -> {"candidates": [{token, score, sequence}]}

Scoring is the code `predict` and `evaluate` use (task.encode, predict_logits); with the onnx
backend the model is an onnxruntime session behind the same call.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import random
import threading
from pathlib import Path
from typing import Optional

from lmforge import export as export_mod
from lmforge.errors import LmforgeError
from lmforge.tasks import TASKS, backbone, data, format_for
from lmforge.tasks.features import predict_logits
from lmforge.tasks.ner import entity_spans, words_with_offsets


def weights_hash(folder: Path) -> str:
    """sha256 (first 16 hex digits) of the weights: which model made a prediction, in feedback rows."""
    digest = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.onnx"))
    for path in files:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()[:16]


def card_metrics(folder: Path) -> tuple[dict, Optional[str]]:
    """(metrics, the split they are on) from an export's export.json or the run that made the folder."""
    for path in (folder / "export.json", folder.parent / "report.json"):
        if path.is_file():
            try:
                summary = json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                continue
            metrics = summary.get("metrics") or {}
            if metrics:
                return {k: v for k, v in metrics.items() if isinstance(v, (int, float))}, summary.get("metrics_split")
    return {}, None


class Predictor:
    def __init__(self, model: str, backend: str = "torch", onnx_file: str = "model.onnx", precision: str = "auto"):
        import torch

        from lmforge import hardware

        self.folder = backbone.resolve(model)
        source = export_mod.source_of(str(self.folder))
        self.kind = source.kind
        self.fmt = data.FormatConfig()
        self.task, torch_model, self.tokenizer = export_mod.load(source, self.fmt)
        self.labels = list(getattr(self.task, "labels", []) or [])
        self.backend = backend
        self.metrics, self.metrics_split = card_metrics(self.folder)
        self.lock = threading.Lock()  # generation runs beside the batcher: one forward at a time
        if backend == "onnx":
            if self.kind == "generate":
                raise LmforgeError("--backend onnx serves classification, ner, qa and fill-mask; generate with --backend torch")  # fmt: skip
            path = self.folder / onnx_file
            if not path.is_file():
                raise LmforgeError(
                    f"{path}: no ONNX model; make one with `lmforge export --model {model} --out DIR --onnx true`, "
                    "then serve DIR"
                )
            self.model = export_mod.OnnxModel(path, self.kind)
            self.model_hash = weights_hash(self.folder) + "-" + hashlib.sha256(path.read_bytes()).hexdigest()[:8]
            self.autocast = contextlib.nullcontext
        else:
            self.model = torch_model
            self.model_hash = weights_hash(self.folder)
            dtype = hardware.resolve_precision(precision, torch.device("cpu"))
            from lmforge.loop import autocast

            self.autocast = lambda: autocast(torch.device("cpu"), dtype)
            self.dtype = str(dtype).removeprefix("torch.")
        if self.kind == "fill-mask" and self.tokenizer.mask_token is None:
            raise LmforgeError(f"{self.folder}: its tokenizer has no mask token, so fill-mask cannot be served")

    @property
    def max_tokens(self) -> int:
        limit = getattr(self.tokenizer, "model_max_length", 512) or 512
        return min(int(limit), 8192)

    def describe(self) -> dict:
        return {
            "task": self.kind,
            "labels": self.labels,
            "model": self.folder.parent.name if self.folder.name == "final" else self.folder.name,
            "model_hash": self.model_hash,
            "backend": self.backend,
            "metrics": self.metrics,
            "metrics_split": self.metrics_split,
            "mask_token": self.tokenizer.mask_token if self.kind == "fill-mask" else None,
        }

    # --- one batch --------------------------------------------------------------------------------

    def run(self, items: list[dict]) -> list[dict]:
        import torch

        with self.lock, torch.inference_mode():
            if self.kind == "classification":
                return self.classify(items)
            if self.kind == "ner":
                return self.tag(items)
            if self.kind == "qa":
                return self.answer(items)
            if self.kind == "fill-mask":
                return self.fill(items)
        raise LmforgeError(f"{self.kind} is not batched; use the generate endpoint")

    def logits(self, examples: list, fmt: data.FormatConfig):
        fmt = format_for(type(self.task), fmt)
        features = self.task.encode(examples, self.tokenizer, fmt, labelled=False)
        forward = backbone.full_forward(self.task)
        logits, _ = predict_logits(self.model, features, forward, self.task, max(1, len(features)), self.autocast)
        return features, logits

    def classify(self, items: list[dict]) -> list[dict]:
        examples = [data.Record(i["text"], i.get("text_pair"), None, "request") for i in items]
        features, logits = self.logits(examples, self.fmt)
        rows = self.task.prediction_rows(examples, logits, features)
        out = []
        for row in rows:
            if self.task.kind == "single":
                scores = dict(sorted(row["probabilities"].items(), key=lambda kv: -kv[1]))
                out.append({"label": row["prediction"], "scores": scores})
            elif self.task.kind == "multi":
                out.append({"labels": row["prediction"]})
            else:
                out.append({"value": row["prediction"]})
        return out

    def tag(self, items: list[dict]) -> list[dict]:
        words = [words_with_offsets(i["text"]) for i in items]
        kept = [n for n, w in enumerate(words) if w]  # a text without words has no entities
        sentences = [data.Sentence([w for w, _, _ in words[n]], ["O"] * len(words[n]), "request") for n in kept]
        tags: dict[int, list[str]] = {}
        if sentences:
            features, logits = self.logits(sentences, self.fmt)
            tags = dict(zip(kept, self.task.word_tags(logits, features)))
        out = []
        for n, item in enumerate(items):
            sentence_tags = tags.get(n, [])
            out.append({
                "entities": entity_spans(words[n], sentence_tags, item["text"]),
                "words": [{"text": w, "start": s, "end": e} for w, s, e in words[n]],
                "tags": sentence_tags,
            })  # fmt: skip
        return out

    def answer(self, items: list[dict]) -> list[dict]:
        questions = [data.Question(str(n), i["question"], i["context"], [], "request") for n, i in enumerate(items)]
        features, logits = self.logits(questions, self.fmt)
        spans = self.task.answer_spans(logits, features)
        empty = {"answer": "", "start": -1, "end": -1, "score": None}
        return [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in spans.get(q.id, empty).items()}
            for q in questions
        ]

    def fill(self, items: list[dict]) -> list[dict]:
        import torch

        tokenizer = self.tokenizer
        encoded = tokenizer(
            [i["text"] for i in items], padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        )
        with self.autocast():
            logits = self.model(**{k: v for k, v in encoded.items() if k in export_mod.input_names(tokenizer)}).logits
        logits = logits.float()
        out = []
        for row, item in enumerate(items):
            ids = encoded["input_ids"][row]
            positions = (ids == tokenizer.mask_token_id).nonzero().flatten().tolist()
            candidates = []
            if positions:
                probs = torch.softmax(logits[row, positions[0]], -1)
                top = torch.topk(probs, item.get("top_k", 5))
                for p, token_id in zip(top.values.tolist(), top.indices.tolist()):
                    filled = ids.clone()
                    filled[positions[0]] = token_id
                    token = tokenizer.decode([token_id]).strip()
                    sequence = tokenizer.decode(filled[encoded["attention_mask"][row].bool()], skip_special_tokens=True)
                    candidates.append({"token": token, "score": round(p, 4), "sequence": sequence})
            out.append({"candidates": candidates})
        return out

    # --- generation (streamed) --------------------------------------------------------------------

    def generate(self, prompt: str, max_new_tokens: int, temperature: float, top_k: int, seed: int | None):
        """Yield the generated text piece by piece: `lmforge generate`'s sampling loop (the same
        encoding of the prompt, a sliding window past the trained context), one token at a time."""
        from lmforge import generate as generate_mod

        tokenizer, start, shown = self.tokenizer, None, ""
        with self.lock:
            for ids in generate_mod.steps(self.model, tokenizer, prompt, max_new_tokens, temperature, top_k or None, None, 1, random.randrange(2**31) if seed is None else seed):  # fmt: skip
                if start is None:
                    start = ids.shape[1]
                    continue
                text = tokenizer.decode(ids[0, start:].tolist(), skip_special_tokens=True)
                if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
                    continue
                yield text[len(shown) :]
                shown = text


def task_names() -> list[str]:
    return [*TASKS, "fill-mask", "generate"]
