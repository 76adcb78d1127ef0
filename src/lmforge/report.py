"""`report.html`: a self-contained page with the loss curves (inline SVG) and the summary table."""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

from lmforge.metrics_log import MetricsLog


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


def loss_curve_svg(rows: list[dict]) -> str:
    """Train loss against tokens, with validation loss where it was measured."""
    plt = pyplot()
    train = [(r["tokens"], r["loss"]) for r in rows if "loss" in r]
    valid = [(r["tokens"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7.5, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", color="#1f77b4", linewidth=1)
    if valid:
        ax.plot(*zip(*valid), "o-", label="validation loss", color="#d62728", markersize=4)
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    svg = svg_figure(fig)
    plt.close(fig)
    return svg


def table_html(summary: dict) -> str:
    cells = []
    for key, value in summary.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        elif isinstance(value, (dict, list)):
            value = json.dumps(value)
        cells.append(f"<tr><th>{html.escape(str(key))}</th><td>{html.escape(str(value))}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;color:#222}}
table{{border-collapse:collapse}}th,td{{border:1px solid #ccc;padding:.25em .6em;text-align:left}}
th{{background:#f4f4f4}}</style></head>
<body><h1>{title}</h1>{sections}</body></html>
"""


def write_html(path: str | Path, title: str, sections: list[tuple[str, str]]) -> None:
    """Write a page of (heading, html body) sections."""
    body = "".join(f"<h2>{html.escape(h)}</h2>{content}" for h, content in sections)
    Path(path).write_text(PAGE.format(title=html.escape(title), sections=body), encoding="utf-8")


def write_training_report(run_dir: str | Path, summary: dict, first: list[tuple[str, str]] = ()) -> Path:
    """report.html of a training run: `first` sections (e.g. the result), the loss curve from
    metrics.jsonl, then the summary table."""
    run_dir = Path(run_dir)
    rows = MetricsLog(run_dir).rows()
    sections = [*first, ("Loss", loss_curve_svg(rows)), ("Summary", table_html(summary))]
    path = run_dir / "report.html"
    write_html(path, f"lmforge run: {run_dir.name}", sections)
    return path
