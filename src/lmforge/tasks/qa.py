"""Extractive question answering (SQuAD style): long contexts cut into overlapping windows,
answers predicted as token spans and mapped back to character offsets of the context.

SQuAD v2 (questions without an answer, `is_impossible`): such questions train towards the
first position ([CLS]) of every window; at prediction time a question gets no answer ("") when
its null score, start[0] + end[0] minimised over its windows, beats the best span's score by
more than `no_answer_threshold` (the official v2 evaluation's null-score rule). Whether the model
was trained for this is saved in its config.json (`qa_no_answer`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.tasks import data, metrics
from lmforge.tasks.features import Features

MAX_ANSWER_TOKENS = 30
N_BEST = 20


def answer_span(offsets: list, sequence_ids: list, start_char: int, end_char: int) -> tuple[int, int]:
    """Token positions (start, end) of the characters [start_char, end_char) in one window,
    or (0, 0) - the [CLS] position - when the answer is not wholly inside the window."""
    context = [i for i, s in enumerate(sequence_ids) if s == 1]
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = next(i for i in context if offsets[i][1] > start_char)
    end = next(i for i in reversed(context) if offsets[i][0] < end_char)
    return start, end


def best_span(
    start_logits, end_logits, offsets: list, max_tokens: int = MAX_ANSWER_TOKENS
) -> tuple[float, int, int] | None:
    """(score, start_char, end_char) of the best context span in one window, or None."""
    starts = torch.topk(start_logits, min(N_BEST, len(start_logits))).indices.tolist()
    ends = torch.topk(end_logits, min(N_BEST, len(end_logits))).indices.tolist()
    best = None
    for s in starts:
        for e in ends:
            if offsets[s] is None or offsets[e] is None or e < s or e - s + 1 > max_tokens:
                continue
            score = float(start_logits[s] + end_logits[e])
            if best is None or score > best[0]:
                best = (score, offsets[s][0], offsets[e][1])
    return best


class QaTask(data.FileInputOnly):
    """Windows, loss, post-processing and SQuAD metrics for `AutoModelForQuestionAnswering`."""

    name = "qa"
    file_hint = "answers questions (qa): give SQuAD JSON (question and context)"
    head_suffix = "ForQuestionAnswering"
    peft_task_type = "QUESTION_ANS"
    default_max_length = 384
    group_by_length = True
    head_modules = ("qa_outputs",)
    default_metric = "f1"
    labels: list[str] = []
    num_labels = 2

    def __init__(self, no_answer: bool = False, no_answer_threshold: float = 0.0):
        self.no_answer = no_answer  # SQuAD v2: questions may have no answer in their context
        self.no_answer_threshold = no_answer_threshold

    @classmethod
    def from_train(cls, questions, cfg) -> QaTask:
        return cls(any(not q.answers for q in questions), cfg.no_answer_threshold or 0.0)

    @classmethod
    def from_model_config(cls, config, cfg: data.FormatConfig) -> QaTask:
        """The saved no-answer rule; `--format.no_answer_threshold` overrides the saved threshold."""
        saved = config.to_dict()  # fields written by `config_fields` (absent in models saved by other tools)
        threshold = (
            cfg.no_answer_threshold if cfg.no_answer_threshold is not None else saved.get("qa_no_answer_threshold", 0.0)
        )
        return cls(bool(saved.get("qa_no_answer", False)), float(threshold))

    @staticmethod
    def auto_class() -> type:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def model_kwargs(self) -> dict:
        return {}

    @staticmethod
    def labels_match(saved: list[str], num_labels: int) -> bool:
        return True  # start/end logits: no label map to compare

    def config_fields(self) -> dict:
        """Extra config.json fields, so `evaluate` and `predict` post-process as training did."""
        return {"qa_no_answer": self.no_answer, "qa_no_answer_threshold": self.no_answer_threshold}

    @staticmethod
    def read(path, cfg: data.FormatConfig, role: str, labelled: bool = True) -> list[data.Question]:
        return data.read_squad(path, role, labelled)

    def encode(
        self, questions: list[data.Question], tokenizer, cfg: data.FormatConfig, labelled: bool = True
    ) -> Features:
        """One row per window; every window of a question keeps its offsets for post-processing."""
        if not tokenizer.is_fast:
            raise LmforgeError("QA needs a fast tokenizer (tokenizer.json) for character offsets")
        if cfg.doc_stride >= cfg.max_length // 2:
            raise LmforgeError(
                f"--format.doc_stride {cfg.doc_stride} must be below half of --format.max_length {cfg.max_length} (e.g. 128 with 384)"
            )
        encoded = tokenizer(
            [q.question.lstrip() for q in questions],
            [q.context for q in questions],
            truncation="only_second",
            max_length=cfg.max_length,
            stride=cfg.doc_stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        columns: dict[str, list] = {"input_ids": encoded["input_ids"], "start_positions": [], "end_positions": []}
        if "token_type_ids" in encoded:
            columns["token_type_ids"] = encoded["token_type_ids"]
        meta: dict[str, list] = {"example": [], "offsets": [], "where": []}
        for i, example_index in enumerate(encoded["overflow_to_sample_mapping"]):
            question = questions[example_index]
            sequence_ids = encoded.sequence_ids(i)
            offsets = encoded["offset_mapping"][i]
            start = end = 0
            if labelled and question.answers:
                first = question.answers[0]
                start, end = answer_span(
                    offsets, sequence_ids, first["answer_start"], first["answer_start"] + len(first["text"])
                )
            columns["start_positions"].append(start)
            columns["end_positions"].append(end)
            meta["example"].append(example_index)
            meta["offsets"].append([o if s == 1 else None for o, s in zip(offsets, sequence_ids)])
            meta["where"].append(question.where)
        meta["questions"] = [questions] * len(meta["example"])  # one shared list, for post-processing
        sequence = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": 0}
        return Features(columns, {k: v for k, v in sequence.items() if k in columns}, meta)

    # --- training -----------------------------------------------------------------------------

    @staticmethod
    def logits(output) -> torch.Tensor:
        return torch.stack([output.start_logits, output.end_logits], dim=-1)  # (B, T, 2)

    def loss_sum(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        logits = logits.float()
        mask = batch.get("attention_mask")
        if mask is not None:  # padding can never be an answer position
            logits = logits.masked_fill(mask[..., None] == 0, -1e4)
        start = F.cross_entropy(logits[..., 0], batch["start_positions"], reduction="sum")
        end = F.cross_entropy(logits[..., 1], batch["end_positions"], reduction="sum")
        return (start + end) / 2

    @staticmethod
    def count(batch: dict) -> int:
        return len(batch["start_positions"])

    @staticmethod
    def has_labels(batch: dict) -> bool:
        return "start_positions" in batch

    # --- evaluation ---------------------------------------------------------------------------

    def answers(self, logits: list[torch.Tensor], features: Features) -> dict[str, str]:
        """Question id -> predicted answer text: the best-scoring span over all its windows,
        or "" when the model was trained with unanswerable questions and its null score wins."""
        return {qid: span["answer"] for qid, span in self.answer_spans(logits, features).items()}

    def answer_spans(self, logits: list[torch.Tensor], features: Features) -> dict[str, dict]:
        """Question id -> {answer, start, end (character offsets into its context), score (start
        plus end logit)}; no answer: "" at -1, -1."""
        best: dict[int, tuple] = {}
        null: dict[int, float] = {}
        for row, example, offsets in zip(logits, features.meta["example"], features.meta["offsets"]):
            span = best_span(row[:, 0], row[:, 1], offsets[: len(row)])
            if span is not None and (example not in best or span[0] > best[example][0]):
                best[example] = span
            null[example] = min(null.get(example, float("inf")), float(row[0, 0] + row[0, 1]))
        questions = features.meta["questions"][0] if features.meta["questions"] else []
        out = {}
        for index in sorted(set(features.meta["example"])):
            question = questions[index]
            span = best.get(index)
            if span is None or (self.no_answer and null[index] > span[0] + self.no_answer_threshold):
                out[question.id] = {"answer": "", "start": -1, "end": -1, "score": null[index]}
            else:
                score, start, end = span
                out[question.id] = {"answer": question.context[start:end], "start": start, "end": end, "score": score}
        return out

    def metrics(self, logits: list[torch.Tensor], features: Features) -> dict[str, float]:
        questions = features.meta["questions"][0]
        references = {
            questions[i].id: [a["text"] for a in questions[i].answers] for i in sorted(set(features.meta["example"]))
        }
        return metrics.squad(self.answers(logits, features), references)

    @staticmethod
    def row_metrics(rows: list[dict]) -> dict[str, float]:
        """`metrics` from prediction rows (`prediction_rows`); rows are keyed by position, so a
        resample that repeats a question counts it each time."""
        return metrics.squad(
            {str(i): r["prediction"] for i, r in enumerate(rows)}, {str(i): r["answers"] for i, r in enumerate(rows)}
        )

    @staticmethod
    def row_scorer(metric: str) -> None:
        return None  # compare recomputes `row_metrics` per replicate

    def prediction_rows(
        self, examples: list[data.Question], logits: list[torch.Tensor], features: Features
    ) -> list[dict]:
        """One row per question."""
        answers = self.answers(logits, features)
        return [
            {
                "id": q.id,
                "where": q.where,
                "question": q.question,
                "prediction": answers.get(q.id, ""),
                "answers": [a["text"] for a in q.answers],
            }
            for q in examples
        ]

    @staticmethod
    def is_mistake(row: dict) -> bool:
        # an unanswerable question (SQuAD v2, no answers) is right only when left unanswered
        return not any(metrics.answer_exact(row["prediction"], a) for a in row["answers"] or [""])

    @staticmethod
    def per_class(logits: list[torch.Tensor], features: Features) -> None:
        return None

    @staticmethod
    def class_ids(logits: list[torch.Tensor], features: Features) -> None:
        return None

    # --- head mode: cached states of every window token ---------------------------------------

    @staticmethod
    def cache_row(hidden: torch.Tensor, labels_row) -> tuple[torch.Tensor, object]:
        return hidden.to(torch.bfloat16).clone(), labels_row  # bf16: (T, H) per window adds up

    @staticmethod
    def head(model) -> torch.nn.Module:
        return QaHead(model.qa_outputs)


class QaHead(torch.nn.Module):
    """qa_outputs over cached token states (B, T, H) -> (B, T, 2), in the head's dtype."""

    def __init__(self, qa_outputs: torch.nn.Module):
        super().__init__()
        self.qa_outputs = qa_outputs

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.qa_outputs(hidden.to(self.qa_outputs.weight.dtype))
