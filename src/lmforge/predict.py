"""`lmforge predict`: run a fine-tuned model over a file and write predictions.jsonl.

The task comes from the model's saved head (classification, ner or qa); the file is read like
the training data (`--format.*` as for `lmforge finetune`), labels optional.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from lmforge.config import option
from lmforge.runfolder import RunFolder
from lmforge.tasks import evaluation
from lmforge.tasks.data import FormatConfig


@dataclass
class PredictConfig:
    model: str = option("", "fine-tuned model folder (a finetune run's final/ or the run folder)")
    input: str = option("", "file to predict: CSV/TSV/JSONL (classification), CoNLL (ner), SQuAD JSON (qa)")
    out: str = option("runs/predict", "folder for predictions.jsonl")
    task: Optional[Literal["classification", "ner", "qa"]] = option(None, "check the model's head is for this task (default: whatever it was fine-tuned for)")
    batch_size: int = option(64, "examples per forward pass")
    device: str = option("auto", "cpu, cuda or auto")
    format: FormatConfig = field(default_factory=FormatConfig)


def run(config: PredictConfig) -> Path:
    """Write `out/predictions.jsonl`, one row per example in file order; returns the folder."""
    from lmforge.errors import LmforgeError

    if not config.input:
        raise LmforgeError("--input is required: the file to run the model over")
    task, model, tokenizer, folder = evaluation.load_task_model(config.model, config.task)
    out = Path(config.out)
    run_folder = RunFolder(out, "predict").start(config, [config.input, folder])
    scored = evaluation.score_file(task, model, tokenizer, config.input, config.format, False, config.device, config.batch_size)
    rows = evaluation.predictions(scored)
    for row in rows:  # unlabelled input: no gold fields in the output
        row.pop("label", None)
        row.pop("answers", None)
    evaluation.write_jsonl(out / "predictions.jsonl", rows)
    run_folder.finish(predictions=len(rows))
    print(f"{len(rows):,} predictions in {out / 'predictions.jsonl'}", flush=True)
    return out
