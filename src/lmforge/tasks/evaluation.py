"""Run a fine-tuned model over a file: predictions, and with labels, metrics and the mistakes.

Used by `lmforge predict` (predictions.jsonl) and `lmforge evaluate --task ...`
(report.json, report.html with a confusion matrix and per-class table, errors.jsonl).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lmforge import hardware, report
from lmforge.errors import LmforgeError
from lmforge.tasks import backbone, data
from lmforge.tasks.classification import ClassificationTask
from lmforge.tasks.ner import NerTask
from lmforge.tasks.objective import Features, predict_logits
from lmforge.tasks.qa import QaTask

TASKS = {"classification": ClassificationTask, "ner": NerTask, "qa": QaTask}


@dataclass
class Scored:
    """A model's outputs over one file."""

    task: object
    features: Features
    examples: list
    logits: list
    loss: float


def load_task_model(model: str, task_name: str | None):
    """(task, model, tokenizer, folder) of a fine-tuned model; `task_name` must match its saved head."""
    folder = backbone.resolve(model)
    saved, _ = backbone.saved_head(folder)
    if saved is None:
        raise LmforgeError(f"{folder}: this model has no task head (it is a bare encoder); fine-tune it first with `lmforge finetune`")
    if task_name and task_name != saved:
        raise LmforgeError(f"{folder} has a {saved} head but --task is {task_name}; pass --task {saved} or a model fine-tuned for {task_name}")
    import transformers

    task_cls = TASKS[saved]
    config = transformers.AutoConfig.from_pretrained(str(folder))
    task = task_cls.from_model_config(config)
    model_obj, tokenizer = backbone.load(folder, task)
    return task, model_obj, tokenizer, folder


def score_file(task, model, tokenizer, path: str, fmt: data.FormatConfig, labelled: bool, device: str, batch_size: int) -> Scored:
    """Read, encode and run `model` over `path` (labels checked against the model's label map)."""
    fmt = data.for_task(fmt, task.name)
    if getattr(fmt, "no_answer_threshold", None) is not None and hasattr(task, "no_answer_threshold"):
        task.no_answer_threshold = fmt.no_answer_threshold  # the flag overrides the value saved with the model
    examples = task.read(path, fmt, "data", labelled)
    features = task.encode(examples, tokenizer, fmt, labelled=labelled)
    target = hardware.resolve_device(device)
    model.to(target)
    dtype = hardware.resolve_precision("auto", target)
    from lmforge.loop import autocast

    logits, loss = predict_logits(model, features, backbone.full_forward(task), task, batch_size, lambda: autocast(target, dtype))
    return Scored(task, features, examples, logits, loss)


def predictions(scored: Scored) -> list[dict]:
    """One JSON-ready row per example (per question for QA), in file order."""
    task = scored.task
    if task.name == "qa":
        answers = task.answers(scored.logits, scored.features)
        return [{"id": q.id, "where": q.where, "question": q.question, "prediction": answers.get(q.id, ""),
                 "answers": [a["text"] for a in q.answers]} for q in scored.examples]
    if task.name == "ner":
        tags = task.word_tags(scored.logits, scored.features)
        return [{"where": s.where, "words": s.words, "prediction": t, "label": s.tags} for s, t in zip(scored.examples, tags)]
    predicted = task.predicted_ids(scored.logits)
    rows = []
    for record, logit, pred in zip(scored.examples, scored.logits, predicted):
        row = {"where": record.where, "text": record.text, "prediction": task.prediction_text(pred)}
        if record.text_pair is not None:
            row["text_pair"] = record.text_pair
        if task.kind == "single":
            row["probabilities"] = {task.labels[i]: round(p, 4) for i, p in enumerate(torch.softmax(logit, -1).tolist())}
        if record.label is not None:
            row["label"] = record.label
        rows.append(row)
    return rows


def _normalise_label(task, value):
    if task.kind == "regression":
        return float(value)
    if task.kind == "multi":
        return sorted(data.split_labels(value, task.separator))
    return data.build_label_map([value])[0]


def mistakes(task, rows: list[dict]) -> list[dict]:
    """The rows the model got wrong (regression: off by more than 0.5)."""
    if task.name == "qa":
        from lmforge.tasks.metrics import answer_exact

        # an unanswerable question (SQuAD v2, no answers) is right only when left unanswered
        return [r for r in rows if not any(answer_exact(r["prediction"], a) for a in r["answers"] or [""])]
    if task.name == "ner":
        return [r for r in rows if r["prediction"] != r["label"]]
    if task.kind == "regression":
        return [r for r in rows if abs(r["prediction"] - float(r["label"])) > 0.5]
    if task.kind == "multi":
        return [r for r in rows if sorted(r["prediction"]) != _normalise_label(task, r["label"])]
    return [r for r in rows if r["prediction"] != _normalise_label(task, r["label"])]


def confusion_svg(task, scored: Scored) -> str:
    """Confusion matrix (rows: true, columns: predicted) as inline SVG."""
    from sklearn.metrics import confusion_matrix

    plt = report.pyplot()
    labels = list(range(task.num_labels))
    matrix = confusion_matrix(scored.features.columns["labels"], task.predicted_ids(scored.logits), labels=labels)
    size = min(2 + 0.5 * len(labels), 12)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(labels, task.labels, rotation=45, ha="right")
    ax.set_yticks(labels, task.labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in labels:
        for j in labels:
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", color="white" if matrix[i, j] > matrix.max() / 2 else "black")
    svg = report.svg_figure(fig)
    plt.close(fig)
    return svg


def per_class(task, scored: Scored) -> dict[str, dict]:
    """Precision/recall/F1/support per class (classification) or per entity type (NER)."""
    if task.name == "ner":
        return task_entity_report(task, scored)
    from sklearn.metrics import classification_report

    out = classification_report(scored.features.columns["labels"], task.predicted_ids(scored.logits), labels=list(range(task.num_labels)),
                                target_names=task.labels, output_dict=True, zero_division=0)
    return {k: v for k, v in out.items() if isinstance(v, dict)}


def task_entity_report(task, scored: Scored) -> dict[str, dict]:
    from lmforge.tasks.metrics import entity_report

    return entity_report(task.sentence_tags(scored.features), task.word_tags(scored.logits, scored.features))


def sections(task, scored: Scored, results: dict, table: dict | None) -> list[tuple[str, str]]:
    """report.html sections: metrics, the per-class `table` (from `per_class`), confusion matrix."""
    out = [("Metrics", report.table_html(results))]
    if table:
        rows = "".join(f"<tr><th>{html.escape(name)}</th>" + "".join(f"<td>{v:.4g}</td>" for v in m.values()) + "</tr>" for name, m in table.items())
        head = "".join(f"<th>{html.escape(k)}</th>" for k in next(iter(table.values()), {}))
        out.append(("Per class", f"<table><tr><th></th>{head}</tr>{rows}</table>"))
    if task.name == "classification" and task.kind == "single":
        out.append(("Confusion matrix", confusion_svg(task, scored)))
    return out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def evaluate_file(config) -> dict:
    """`lmforge evaluate --task ...` (an EvaluateConfig): metrics of a fine-tuned model on one labelled file.

    Writes report.json, report.html (per-class table, confusion matrix) and errors.jsonl into `config.out`.
    """
    from lmforge.runfolder import RunFolder, write_json_atomic

    if len(config.data) != 1:
        raise LmforgeError(f"--data takes one labelled file for --task {config.task}, got {len(config.data)}")
    path = config.data[0]
    task, model_obj, tokenizer, folder = load_task_model(config.model, config.task)
    out = Path(config.out)
    run_folder = RunFolder(out, "evaluate").start(config, [path, folder])
    scored = score_file(task, model_obj, tokenizer, path, config.format, True, config.device, config.batch_size)
    rows = predictions(scored)
    wrong = mistakes(task, rows)
    results = {"task": task.name, "model": str(folder), "data": str(path), "examples": len(rows), "errors": len(wrong),
               "metrics": task.metrics(scored.logits, scored.features), "loss": scored.loss}
    if task.name == "ner" or getattr(task, "kind", "") == "single":
        results["per_class"] = per_class(task, scored)
    write_json_atomic(out / "report.json", results)
    write_jsonl(out / "errors.jsonl", wrong)
    flat = {k: v for k, v in results.items() if k not in ("metrics", "per_class")} | results["metrics"]
    report.write_html(out / "report.html", f"{task.name} evaluation of {folder}", sections(task, scored, flat, results.get("per_class")))
    run_folder.finish(report=str(out / "report.json"))
    shown = ", ".join(f"{k} {v:.4f}" for k, v in results["metrics"].items())
    print(f"{folder} on {path}: {shown}; {len(wrong):,} errors in {out / 'errors.jsonl'}", flush=True)
    return results
