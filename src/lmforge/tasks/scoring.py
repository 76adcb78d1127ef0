"""Run a fine-tuned model over a file: predictions, and with labels, metrics and the mistakes.

Used by `lmforge predict` (predictions.jsonl) and `lmforge evaluate --task ...`
(report.json, report.html with a confusion matrix and per-class table, errors.jsonl).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from lmforge import hardware, report
from lmforge.errors import LmforgeError
from lmforge.tasks import TASKS, Task, backbone, data, format_for
from lmforge.tasks.features import Features, predict_logits


@dataclass
class Scored:
    """A model's outputs over one file's examples (or predict's --text)."""

    task: Task
    features: Features
    examples: list
    logits: list
    loss: float


def load_task_model(model: str, task_name: str | None, fmt: data.FormatConfig):
    """(task, model, tokenizer, folder) of a fine-tuned model; `task_name` must match its saved head,
    `fmt`'s flags override settings saved with it (QA's no-answer threshold)."""
    folder = backbone.resolve(model)
    saved, _ = backbone.saved_head(folder)
    if saved is None:
        raise LmforgeError(
            f"{folder}: this model has no task head (it is a bare encoder); fine-tune it first with `lmforge finetune`"
        )
    if task_name and task_name != saved:
        raise LmforgeError(
            f"{folder} has a {saved} head but --task is {task_name}; pass --task {saved} or a model fine-tuned for {task_name}"
        )
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder))
    task = TASKS[saved].from_model_config(config, fmt)
    model_obj, tokenizer = backbone.load(folder, task)
    return task, model_obj, tokenizer, folder


def score_examples(
    task: Task, model, tokenizer, examples: list, fmt: data.FormatConfig, labelled: bool, device: str, batch_size: int
) -> Scored:
    """Encode and run `model` over `examples` (labels checked against the model's label map)."""
    fmt = format_for(type(task), fmt)
    features = task.encode(examples, tokenizer, fmt, labelled=labelled)
    target = hardware.resolve_device(device)
    model.to(target)
    dtype = hardware.resolve_precision("auto", target)
    from lmforge.loop import autocast

    logits, loss = predict_logits(
        model, features, backbone.full_forward(task), task, batch_size, lambda: autocast(target, dtype)
    )
    return Scored(task, features, examples, logits, loss)


def score_file(
    task: Task,
    model,
    tokenizer,
    path: str,
    fmt: data.FormatConfig,
    labelled: bool,
    device: str,
    batch_size: int,
    role: str = "data",
) -> Scored:
    """Read `path` (`role`: its flag, for errors) and score its examples."""
    examples = task.read(path, format_for(type(task), fmt), role, labelled)
    return score_examples(task, model, tokenizer, examples, fmt, labelled, device, batch_size)


def predictions(scored: Scored) -> list[dict]:
    """One JSON-ready row per example (per question for QA), in file order."""
    return scored.task.prediction_rows(scored.examples, scored.logits, scored.features)


def mistakes(task: Task, rows: list[dict]) -> list[dict]:
    """The rows the model got wrong (regression: off by more than 0.5)."""
    return [r for r in rows if task.is_mistake(r)]


def confusion_svg(names: list[str], truth: list[int], predicted: list[int]) -> str:
    """Confusion matrix (rows: true, columns: predicted) of class ids as inline SVG; `names[i]` is class i."""
    from sklearn.metrics import confusion_matrix

    plt = report.pyplot()
    labels = list(range(len(names)))
    matrix = confusion_matrix(truth, predicted, labels=labels)
    size = min(2 + 0.5 * len(labels), 12)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(labels, names, rotation=45, ha="right")
    ax.set_yticks(labels, names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in labels:
        for j in labels:
            ax.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if matrix[i, j] > matrix.max() / 2 else "black",
            )
    svg = report.svg_figure(fig)
    plt.close(fig)
    return svg


def sections(task: Task, scored: Scored, results: dict, table: dict | None) -> list[tuple[str, str]]:
    """report.html sections: metrics, the per-class `table` (from `task.per_class`), confusion matrix."""
    out = [("Metrics", report.table_html(results))]
    if table:
        out.append(("Per label (class or entity type)", report.grid_html(table)))
    ids = task.class_ids(scored.logits, scored.features)
    if ids is not None:
        out.append(("Confusion matrix", confusion_svg(task.labels, *ids)))
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
    task, model_obj, tokenizer, folder = load_task_model(config.model, config.task, config.format)
    out = Path(config.out)
    run_folder = RunFolder(out, "evaluate").start(config, [path, folder])
    scored = score_file(task, model_obj, tokenizer, path, config.format, True, config.device, config.batch_size)
    rows = predictions(scored)
    wrong = mistakes(task, rows)
    results = {
        "task": task.name,
        "model": str(folder),
        "data": str(path),
        "examples": len(rows),
        "errors": len(wrong),
        "metrics": task.metrics(scored.logits, scored.features),
        "loss": scored.loss,
    }
    table = task.per_class(scored.logits, scored.features)
    if table is not None:
        results["per_class"] = table
    write_json_atomic(out / "report.json", results)
    write_jsonl(out / "errors.jsonl", wrong)
    flat = {k: v for k, v in results.items() if k not in ("metrics", "per_class")} | results["metrics"]
    metric = task.default_metric if task.default_metric in results["metrics"] else next(iter(results["metrics"]), None)
    lead = report.Lead(
        f"Score {folder} ({task.name}) on a labelled file",
        f"{metric} {results['metrics'][metric]:.4f}" if metric else "",
        f"{path} ({len(rows):,} examples, {len(wrong):,} mistakes in errors.jsonl)",
        {"model": str(folder), "data": str(path)},
    )
    report.write_html(
        out / "report.html",
        f"lmforge evaluate: {out.name}",
        sections(task, scored, flat, results.get("per_class")),
        lead,
    )
    run_folder.finish(report=str(out / "report.json"))
    shown = ", ".join(f"{k} {v:.4f}" for k, v in results["metrics"].items())
    print(f"{folder} on {path}: {shown}; {len(wrong):,} errors in {out / 'errors.jsonl'}", flush=True)
    return results
