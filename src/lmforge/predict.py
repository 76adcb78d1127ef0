"""`lmforge predict`: run a fine-tuned model over a file, or over texts given on the command line,
and write predictions.jsonl.

The task comes from the model's saved head (classification, ner or qa); the file is read like
the training data (`--format.*` as for `lmforge finetune`), labels optional. A classification
model also takes a .txt file (one text per line) or `--text "first" "second"`. Rows of a
CSV/TSV/JSONL file keep their other columns (an `id`, a label, ...) in the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.runfolder import RunFolder
from lmforge.tasks import TaskName, scoring
from lmforge.tasks.data import FormatConfig


@dataclass
class PredictConfig:
    model: str = option("", "fine-tuned model folder (a finetune run's final/ or the run folder)")
    input: str = option(
        "", "file to predict: CSV/TSV/JSONL or .txt, one text per line (classification), CoNLL (ner), SQuAD JSON (qa)"
    )
    text: list[str] = option(
        [], 'classification: texts to predict instead of --input, one example each (--text "first" "second")'
    )
    out: str = option("runs/predict", "folder for predictions.jsonl")
    task: Optional[TaskName] = option(
        None, "check the model's head is for this task (default: whatever it was fine-tuned for)"
    )
    batch_size: int = option(64, "examples per forward pass")
    device: str = option("auto", "cpu, cuda or auto")
    format: FormatConfig = field(default_factory=FormatConfig)


def run(config: PredictConfig) -> Path:
    """Write `out/predictions.jsonl`, one row per example in input order; returns the folder."""
    if bool(config.input) == bool(config.text):
        raise LmforgeError(
            'give the examples with --input FILE or with --text "..." (one of the two): '
            + ("both were given" if config.input else "neither was given")
        )
    if config.input and not Path(config.input).is_file():  # before loading the model: a typo costs no wait
        raise LmforgeError(f"--input {config.input}: no such file; check the path")
    task, model, tokenizer, folder = scoring.load_task_model(config.model, config.task, config.format)
    out = Path(config.out)
    run_folder = RunFolder(out, "predict").start(config, [config.input, folder] if config.input else [folder])
    if config.text:
        examples = task.text_examples([(text, f"--text {i}") for i, text in enumerate(config.text, 1)])
        scored = scoring.score_examples(
            task, model, tokenizer, examples, config.format, False, config.device, config.batch_size
        )
    else:
        scored = scoring.score_file(
            task, model, tokenizer, config.input, config.format, False, config.device, config.batch_size, "input"
        )
    rows = scoring.predictions(scored)
    for row in rows:  # unlabelled input: no gold fields computed
        row.pop("label", None)
        row.pop("answers", None)
    carried = task.carried_columns(scored.examples) if config.input else None  # read once, with the examples
    if carried is not None:  # the input's own columns first; the prediction's fields win a name clash
        rows = [{**columns, **row} for columns, row in zip(carried, rows, strict=True)]
    scoring.write_jsonl(out / "predictions.jsonl", rows)
    run_folder.finish(predictions=len(rows))
    print(f"{len(rows):,} predictions in {out / 'predictions.jsonl'}", flush=True)
    return out
