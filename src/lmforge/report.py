"""`report.html`: one self-contained page template for every stage.

A page leads with what the run was for (`Lead`: the purpose in a sentence, the headline figure
and the split it was measured on, the data and the model), then the curves in the axis the user
thinks in (steps for fine-tuning, tokens for pretraining: loss, learning rate, validation
metrics), then the stage's own tables, then the run facts in a readable table that leaves out
whatever does not apply (no `flops 0` for a fine-tune, no empty kernel timings).
"""

from __future__ import annotations

import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.metrics_log import TRAIN_KEYS, MetricsLog
from lmforge.publish import write_text_atomic


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed), for the report figures."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def svg_figure(fig) -> str:
    """`fig` as inline SVG markup (closes nothing; the caller closes the figure)."""
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]


@dataclass
class ReportConfig:
    """The `--report.*` section of the stages that train."""

    tensorboard: bool = option(
        False,
        "also write TensorBoard event files into RUN/tensorboard/ as the run logs (needs the tensorboard package: pip install tensorboard)",
    )

    def check(self) -> None:
        """A missing tensorboard package is an error before training, not after the first log row."""
        if self.tensorboard:
            import importlib.util

            if importlib.util.find_spec("tensorboard") is None:
                raise LmforgeError(
                    "--report.tensorboard true needs the tensorboard package: pip install tensorboard (or drop the flag)"
                )


@dataclass
class Lead:
    """The top of a page: what the run was for and its one figure that answers it."""

    purpose: str  # e.g. "Fine-tune minilm for classification (full, 3 epochs)"
    headline: str = ""  # e.g. "accuracy 0.9120"
    split: str = ""  # where the headline was measured, e.g. "test (scored once, with the model chosen on valid)"
    facts: dict = field(default_factory=dict)  # data, model, task ... shown under the headline


def curves_svg(rows: list[dict], x: str = "tokens", steps_per_epoch: int | None = None) -> str:
    """Loss (train and validation), learning rate and every other validation metric against `x`
    (the axis the user thinks in: steps and epochs for fine-tuning, tokens for pretraining)."""
    plt = pyplot()
    train = [(r[x], r["loss"]) for r in rows if x in r and "loss" in r]
    valid = [(r[x], r["val_loss"]) for r in rows if x in r and "val_loss" in r]
    rates = [(r[x], r["lr"]) for r in rows if x in r and isinstance(r.get("lr"), (int, float))]
    metric_names = sorted(
        {
            k
            for r in rows
            for k, v in r.items()
            if k not in (*TRAIN_KEYS, "step", "val_loss") and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    )
    panels = 2 + (1 if metric_names else 0)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    loss_ax, lr_ax = axes[0], axes[1]
    if train:
        loss_ax.plot(*zip(*train), label="train loss", color="#1f77b4", linewidth=1)
    if valid:
        loss_ax.plot(*zip(*valid), "o-", label="validation loss", color="#d62728", markersize=4)
    loss_ax.set_ylabel("loss (nats/token)")
    loss_ax.set_title("loss")
    if train or valid:
        loss_ax.legend()
    if rates:
        lr_ax.plot(*zip(*rates), color="#2ca02c", linewidth=1)
    lr_ax.set_title("learning rate")
    if metric_names:
        metric_ax = axes[2]
        for name in metric_names:
            points = [(r[x], r[name]) for r in rows if x in r and isinstance(r.get(name), (int, float))]
            metric_ax.plot(*zip(*points), "o-", label=name, markersize=4)
        metric_ax.set_title("validation")
        metric_ax.legend(fontsize=8)
    for ax in axes:
        ax.set_xlabel(x if x != "step" else "optimizer step")
        ax.grid(alpha=0.3)
        if x == "step" and steps_per_epoch:
            epochs = ax.secondary_xaxis("top", functions=(lambda s: s / steps_per_epoch, lambda e: e * steps_per_epoch))
            epochs.set_xlabel("epoch")
    fig.tight_layout()
    svg = svg_figure(fig)
    plt.close(fig)
    return svg


# run facts people read: key -> label; keys not listed are shown under their own name
FACT_LABELS = {
    "steps": "optimizer steps",
    "tokens": "training tokens",
    "training_seconds": "training time",
    "evaluation_seconds": "evaluation time",
    "checkpoint_seconds": "checkpoint writes",
    "wall_seconds": "wall time",
    "tokens_per_second": "tokens/s (training)",
    "mfu": "model FLOPs utilisation",
    "peak_flops": "matmul peak probed",
    "flops": "training FLOPs",
    "flops_per_token": "FLOPs per token",
    "params": "parameters",
    "trainable_parameters": "trainable parameters",
    "peak_rss_mb": "peak memory (RSS)",
    "precision": "precision",
    "attention": "attention kernel",
    "compile": "torch.compile",
    "device": "device",
    "processes": "processes",
    "stopped_by": "stopped by",
    "stopped_in_warmup": "stopped inside warm-up",
    "train_loss": "train loss (last steps)",
    "val_loss": "validation loss",
    "train_rows": "train rows",
    "valid_rows": "valid rows",
    "test_rows": "test rows",
    "tokenizer": "tokenizer",
    "shards": "token shards",
    "valid_windows": "validation windows",
    "valid_tokens": "validation tokens",
    "tokenize_tokens_per_second": "tokenizing tokens/s",
    "seed": "seed",
}
# shown elsewhere on the page, or raw material for other tools
NOT_FACTS = {"metrics", "valid_metrics", "test_metrics", "attention_ms", "finished", "labels", "per_class", "best"}


def shown_path(value: str) -> str:
    """A path as a reader wants it: a file inside an installed package by its package-relative
    path, not the absolute site-packages location."""
    marker = "site-packages/"
    return f"(installed) {value.split(marker, 1)[1]}" if marker in value else value


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes // 60}h {minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m {rest:02d}s"


def _number(value: float) -> str:
    magnitude = abs(value)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6)):
        if magnitude >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:,.0f}" if float(value).is_integer() or magnitude >= 1000 else f"{value:.4g}"


def fact_text(key: str, value) -> str | None:
    """One fact as text, or None when it does not apply (nothing measured, a zero that means 'not counted')."""
    if value is None or value == {} or value == [] or value == "":
        return None
    if key.endswith("_seconds"):
        return _duration(float(value))
    if key == "mfu":
        return f"{100 * value:.1f}%" if value else None
    if key in ("flops", "flops_per_token", "peak_flops"):
        return (_number(value) + (" FLOP/s" if key == "peak_flops" else "")) if value else None
    if key == "peak_rss_mb":
        return f"{value:,.0f} MiB"
    if key == "compile" and isinstance(value, dict):
        choice = value.get("choice") or ("compiled" if value.get("setting") is True else "eager")
        return f"{choice} (setting: {str(value.get('setting')).lower()})"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, (int, float)):
        return _number(value)
    if isinstance(value, dict):
        parts = [f"{k} {t}" for k, v in value.items() if (t := fact_text(str(k), v)) is not None]
        return ", ".join(parts) or None
    if isinstance(value, (list, tuple)):
        return ", ".join(shown_path(str(v)) for v in value) or None
    return shown_path(str(value))


def facts_html(summary: dict) -> str:
    rows = []
    # the peak only serves MFU; a run that counts no FLOPs needs neither
    skip = NOT_FACTS if summary.get("mfu") else {*NOT_FACTS, "peak_flops"}
    for key, value in summary.items():
        if key in skip:
            continue
        text = fact_text(key, value)
        if text is not None:
            rows.append((FACT_LABELS.get(key, key.replace("_", " ")), text))
    return rows_html(rows)


def rows_html(rows) -> str:
    """A two-column table of (label, value) pairs."""
    cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def table_html(summary: dict) -> str:
    """A two-column table of a flat dict, values formatted as run facts (metrics keep 4 figures)."""
    return rows_html(
        (k, f"{v:.4g}" if isinstance(v, float) else (fact_text(str(k), v) or "")) for k, v in summary.items()
    )


def grid_html(table: dict[str, dict]) -> str:
    """Rows of named dicts with the same keys (a per-class table) as one table."""
    if not table:
        return ""
    columns = list(next(iter(table.values())))
    head = "<tr><th></th>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in columns) + "</tr>"
    body = "".join(
        f"<tr><th>{html.escape(str(name))}</th>"
        + "".join(
            f"<td>{v:.4g}</td>" if isinstance(v, float) else f"<td>{html.escape(str(v))}</td>" for v in row.values()
        )
        + "</tr>"
        for name, row in table.items()
    )
    return f"<table>{head}{body}</table>"


def lead_html(lead: Lead) -> str:
    headline = ""
    if lead.headline:
        split = f" <span class='split'>on {html.escape(lead.split)}</span>" if lead.split else ""
        headline = f"<p class='headline'>{html.escape(lead.headline)}{split}</p>"
    facts = [(k, shown_path(str(v))) for k, v in lead.facts.items() if v not in (None, "", [])]
    return f"<div class='lead'><p class='purpose'>{html.escape(lead.purpose)}</p>{headline}{rows_html(facts) if facts else ''}</div>"


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;color:#222}}
table{{border-collapse:collapse;margin:.5em 0}}th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}
th{{background:#f4f4f4;font-weight:600}}.lead{{background:#f7f9fc;border:1px solid #d8e0ec;padding:.6em 1em;border-radius:6px}}
.purpose{{font-size:1.1em;margin:.2em 0}}.headline{{font-size:1.8em;font-weight:600;margin:.3em 0}}
.split{{font-size:.5em;font-weight:400;color:#555}}svg{{max-width:100%;height:auto}}</style></head>
<body><h1>{title}</h1>{lead}{sections}</body></html>
"""


def write_html(path: str | Path, title: str, sections: list[tuple[str, str]], lead: Lead | None = None) -> Path:
    """Write a page: the lead, then (heading, html body) sections (empty bodies are left out)."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections if content)
    path = Path(path)
    write_text_atomic(path, PAGE.format(title=html.escape(title), lead=lead_html(lead) if lead else "", sections=body))
    return path


def write_training_report(
    run_dir: str | Path,
    summary: dict,
    lead: Lead,
    sections: list[tuple[str, str]] = (),
    x: str = "tokens",
    steps_per_epoch: int | None = None,
    stage: str = "run",
) -> Path:
    """report.html of a training run: the lead, the curves from metrics.jsonl, the stage's own
    `sections` (result tables, per-class tables), then the run facts."""
    run_dir = Path(run_dir)
    rows = MetricsLog(run_dir).rows()
    page = [
        ("Training curves", curves_svg(rows, x, steps_per_epoch) if rows else ""),
        *sections,
        ("Run facts", facts_html(summary)),
    ]
    return write_html(run_dir / "report.html", f"lmforge {stage}: {run_dir.name}", page, lead)
