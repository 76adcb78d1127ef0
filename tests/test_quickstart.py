import json

from lmforge import cli


def test_quickstart_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "qs"
    assert (
        cli.main(["quickstart", "--out", str(out), "--minutes", "30", "--max_steps", "40", "--sample_tokens", "50"])
        == 0
    )
    text = capsys.readouterr().out
    assert "validation loss:" in text and "--- sample ---" in text and str(out / "report.html") in text
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 40 and report["val_loss"] < 3.5
    assert (out / "final" / "model.safetensors").is_file()
