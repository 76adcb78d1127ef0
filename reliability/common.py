"""What both reliability scripts share: where the repository is, the text they train on, and how
they start lmforge (this checkout's package, offline)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = ROOT / "src" / "lmforge" / "data" / "tinyshakespeare.txt"
# a 2-layer char-level Llama on 32-token windows: seconds per run
TINY_PRETRAIN = (
    "--tokenizer.kind char --model.preset tiny --model.context 32 --train.batch_size 8 --train.precision fp32".split()
)


def lmforge(*args: str) -> list[str]:
    """The command line of `lmforge ARGS` run from this checkout."""
    return [sys.executable, "-m", "lmforge", *args]


def environment(**extra: str) -> dict:
    """The subprocess environment: this checkout's src first, no hub access, 2 threads."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT / "src"), **extra}
    env.setdefault("OMP_NUM_THREADS", "2")
    return env
