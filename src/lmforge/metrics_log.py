"""`metrics.jsonl`, a run folder's log: one JSON row per logged or evaluated step, written by the
loop and read back by report.html and by fine-tuning (the best checkpoint's metrics).

    {"step": 20, "tokens": 40960, "loss": 2.31, "lr": 0.001, "tokens_per_second": 8123.4,
     "elapsed_seconds": 5.04, "val_loss": 2.35, ...evaluation metrics on evaluated steps}

Rows are appended as they happen; a resumed run cuts the log back to its checkpoint's step first.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmforge.publish import write_text_atomic

FILENAME = "metrics.jsonl"
TRAIN_KEYS = ("loss", "lr", "tokens", "tokens_per_second", "elapsed_seconds")  # the rest of a row is evaluation


class MetricsLog:
    """The metrics.jsonl of `run_dir`; `enabled=False` (ranks other than 0) makes writes no-ops."""

    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = False):
        self.path = Path(run_dir) / FILENAME
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:  # event files beside the log, for `tensorboard --logdir RUN/tensorboard`
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def rows(self) -> list[dict]:
        """Every complete row, in order ([] without a log)."""
        if not self.path.is_file():
            return []
        rows = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except ValueError:  # blank, or a row cut short by a kill mid-append
                continue
        return rows

    def evaluation_at(self, step: int | None) -> dict | None:
        """The evaluation row (one with `val_loss`) of `step`, the last if a resume wrote it twice."""
        rows = [r for r in self.rows() if r.get("step") == step and "val_loss" in r]
        return rows[-1] if rows else None

    def clear(self) -> None:
        """A fresh start: no rows of an earlier attempt."""
        if self.enabled:
            self.path.unlink(missing_ok=True)

    def truncate_after(self, step: int) -> None:
        """Keep the rows up to `step` (a resume's checkpoint), rewritten through a temp file and a
        rename, so a kill never loses the earlier rows."""
        if self.enabled and self.path.is_file():
            kept = [row for row in self.rows() if row.get("step", step + 1) <= step]
            write_text_atomic(self.path, "".join(json.dumps(row) + "\n" for row in kept))

    def append(self, row: dict) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(row) + "\n")
        if self.writer is not None:  # every number of the row as a scalar at its step: train/loss, valid/accuracy, ...
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    tag = f"train/{key}" if key in TRAIN_KEYS else f"valid/{key.removeprefix('val_')}"
                    self.writer.add_scalar(tag, value, row["step"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
