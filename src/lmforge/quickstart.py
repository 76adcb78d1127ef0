"""`lmforge quickstart`: the embedded demo. The packaged recipe `shakespeare_char` (a character-level
Llama-style model on the packaged tinyshakespeare) for about three minutes, then its validation
loss, a sample and the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lmforge import config as config_mod
from lmforge.config import option
from lmforge.generate import generate
from lmforge.pretrain import PretrainConfig
from lmforge.pretrain import run as pretrain


@dataclass
class QuickstartConfig:
    out: str = option("runs/quickstart", "run folder")
    minutes: float = option(3.0, "training budget in wall-clock minutes")
    max_steps: Optional[int] = option(None, "also stop after this many steps (for a shorter smoke run)")
    sample_tokens: int = option(300, "characters to generate at the end")


def run(config: QuickstartConfig) -> Path:
    """Pretrain the demo model, then print its validation loss, a sample and where the report is."""
    # the packaged recipe (nanoGPT's CPU shape), budgeted by time instead of its 2,000 steps
    overrides = {
        "out": config.out,
        "train.max_minutes": config.minutes,
        "train.max_steps": config.max_steps,
        "train.eval_every": 500,
        "train.log_every": 100,
        "train.save_every": 1000,
    }
    pretrain_config = config_mod.resolve(PretrainConfig, "shakespeare_char", overrides)
    print(
        f"lmforge quickstart: a character-level Llama-style model on tinyshakespeare, budget {config.minutes:g} minutes\n",
        flush=True,
    )
    out = pretrain(pretrain_config)
    summary = json.loads((out / "report.json").read_text())
    from transformers import AutoModelForCausalLM

    from lmforge import model as model_mod
    from lmforge import tokenizer as tokenizer_mod

    model = model_mod.load(out / "final", AutoModelForCausalLM).eval()
    tokenizer = tokenizer_mod.load(out / "final")
    sample = generate(model, tokenizer, "ROMEO:\n", config.sample_tokens, temperature=0.8, top_k=None, top_p=None)[0]
    print(
        f"\nvalidation loss: {summary['val_loss']:.4f} nats/char after {summary['steps']} steps "
        f"({summary['training_seconds']:.0f} s, {summary['tokens_per_second']:,.0f} tokens/s)"
    )
    print(f"\n--- sample ---\n{sample}\n--------------")
    print(
        f"\nreport: {out / 'report.html'}\nmodel:  {out / 'final'} (AutoModelForCausalLM.from_pretrained works on it)"
    )
    return out
