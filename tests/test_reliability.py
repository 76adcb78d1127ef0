"""The reliability suite in its short version (`make reliability` runs the full one): kill -9
trials of pretraining and fine-tuning, and the bad-input table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_suite(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(ROOT / "reliability" / script), *args], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    return done.stdout


def test_kill_trials_short():
    summary = run_suite("kill_trials.py", "--pretrain", "3", "--finetune", "3", "--seed", "1").strip().splitlines()[-1]
    assert "0 corrupt, 0 failed, 0 inexact resumes" in summary and "6 runs" in summary


def test_bad_input_table():
    summary = run_suite("bad_inputs.py").strip().splitlines()[-1]
    assert summary.endswith("0 failed")
