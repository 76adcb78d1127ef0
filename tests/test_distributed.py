"""Users who outgrow one process go to torchrun: the same global batch gives the same loss curve."""

import json
import os
import subprocess
import sys

import numpy as np

from conftest import tiny_overrides
from lmforge import config as config_mod
from lmforge.pretrain import PretrainConfig, run


def _flags(overrides: dict) -> list[str]:
    flags = []
    for key, value in overrides.items():
        flags.append(f"--{key}")
        flags.extend(value if isinstance(value, list) else [str(value)])
    return flags


def test_torchrun_two_processes_match_one_process(small_text, tmp_path):
    extra = {"train.max_steps": 6, "train.eval_every": 3, "train.save_every": 0}
    single, double = tmp_path / "single", tmp_path / "ddp"
    run(config_mod.resolve(PretrainConfig, None, tiny_overrides(small_text, single, **extra)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "lmforge", "pretrain",
               *_flags(tiny_overrides(small_text, double, **extra))]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {name: [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines()] for name, folder in (("one", single), ("two", double))}
    assert [r["step"] for r in rows["one"]] == [r["step"] for r in rows["two"]]
    np.testing.assert_allclose([r["loss"] for r in rows["two"]], [r["loss"] for r in rows["one"]], rtol=2e-4)
    val = lambda name: [r["val_loss"] for r in rows[name] if "val_loss" in r]
    np.testing.assert_allclose(val("two"), val("one"), rtol=2e-4)
    report = json.loads((double / "report.json").read_text())
    assert report["processes"] == 2 and (double / "final" / "model.safetensors").is_file()
