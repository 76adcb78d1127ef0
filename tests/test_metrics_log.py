"""metrics.jsonl: rows read back in order (a torn last row skipped), the evaluation row of a step,
and the cut back to a checkpoint's step on resume."""

from lmforge.metrics_log import MetricsLog


def test_metrics_rewrite_on_resume_keeps_earlier_rows_and_skips_a_torn_one(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "loss": 1.4}\n{"step": 4, "lo')
    MetricsLog(tmp_path).truncate_after(2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temp file left


def test_rows_and_the_evaluation_row_of_a_step(tmp_path):
    log = MetricsLog(tmp_path)
    assert log.rows() == [] and log.evaluation_at(2) is None
    for row in (
        {"step": 1, "loss": 2.0},
        {"step": 2, "loss": 1.5},
        {"step": 2, "loss": 1.5, "val_loss": 1.6, "accuracy": 0.7},
    ):
        log.append(row)
    (tmp_path / "metrics.jsonl").write_text((tmp_path / "metrics.jsonl").read_text() + '{"step": 3, "lo')
    assert [r["step"] for r in log.rows()] == [1, 2, 2]
    assert log.evaluation_at(2)["accuracy"] == 0.7 and log.evaluation_at(1) is None
    MetricsLog(tmp_path, enabled=False).clear()  # another rank's log writes nothing
    assert log.path.is_file()
    log.clear()
    assert not log.path.exists()
