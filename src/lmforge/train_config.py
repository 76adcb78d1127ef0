"""The `train` section of every stage that trains: budgets, optimizer, schedule, cadences, precision.

Pretraining adds its objective (`pretrain.PretrainTrainConfig`), fine-tuning its batching
(`finetune.FinetuneTrainConfig`); the loop (`loop.fit`) reads this one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

from lmforge import attention as attention_mod
from lmforge import optim
from lmforge.config import option
from lmforge.errors import LmforgeError

LOWER_IS_BETTER = ("loss", "mse", "mae", "error", "perplexity")


@dataclass
class TrainConfig:
    """The loop's settings: the `train` section of every stage that trains (`--train.lr` means the
    same in pretraining and fine-tuning). The defaults are pretraining's; fine-tuning starts from
    its own (`finetune.train_defaults`), where a null lr, warmup_steps or eval_every is filled in
    from the mode and the epoch length. A stage's own settings live in a subclass
    (`pretrain.PretrainTrainConfig`: the objective; `finetune.FinetuneTrainConfig`: batching)."""

    batch_size: int = option(32, "global batch in sequences per optimizer step (all processes, all accumulation steps)")
    micro_batch_size: Optional[int] = option(
        None, "sequences per forward pass in one process; default: batch_size / processes (no accumulation)"
    )
    lr: Optional[float] = option(1e-3, "peak learning rate (fine-tuning's null: 5e-5 full, 2e-3 lora, 1e-3 head)")
    min_lr: float = option(1e-4, "learning rate at the end of the budget")
    warmup_steps: Optional[int] = option(
        100, "linear warm-up steps (ended earlier by warmup_fraction; fine-tuning's null: 6% of the training steps)"
    )
    warmup_fraction: float = option(
        0.1,
        "warm-up ends by this fraction of the budget at the latest, so a short time, token or FLOP budget still ends annealed (1: no cap)",
    )
    schedule: Literal["cosine", "linear", "constant"] = option("cosine", "decay from lr to min_lr over the budget")
    weight_decay: float = option(0.1, "AdamW weight decay on matrices (not on biases or norms)")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.99, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the global gradient norm to this (0 disables)")
    layer_decay: float = option(
        1.0, "layer-wise LR decay: the block k below the top trains at lr x layer_decay^k, e.g. 0.8 (1: off)"
    )
    max_steps: Optional[int] = option(None, "budget: optimizer steps (fine-tuning: default from --epochs)")
    max_tokens: Optional[int] = option(None, "budget: training tokens")
    max_minutes: Optional[float] = option(
        None, "budget: minutes of training (evaluation and checkpoint writes not counted)"
    )
    max_flops: Optional[float] = option(None, "budget: training FLOPs (6N + attention per token; pretraining only)")
    stop_at_step: Optional[int] = option(
        None,
        "stop after this step as if interrupted, keeping the full budget's schedule (resume later; not saved in config.yaml)",
    )
    eval_every: Optional[int] = option(
        250,
        "evaluate on the validation split every N steps and at the end (0: only at the end; fine-tuning's null: once per epoch)",
    )
    best_metric: Optional[str] = option(
        None,
        "keep a best/ model folder chosen by this evaluation metric (e.g. val_loss, accuracy; fine-tuning's null: accuracy, pearson, f1_micro, or entity/SQuAD f1)",
    )
    best_mode: Literal["auto", "max", "min"] = option(
        "auto",
        "whether a larger (max) or smaller (min) best_metric is better; auto: min for losses and errors (val_loss, mse, ...), else max",
    )
    early_stopping_patience: int = option(0, "stop after this many evaluations without a better best_metric (0: never)")
    save_every: int = option(0, "write a resumable checkpoint every N steps (0: only by time and at the end)")
    save_every_minutes: float = option(
        10.0, "write a resumable checkpoint every N minutes of wall time (0: off); Ctrl-C and SIGTERM always write one"
    )
    keep_last: int = option(2, "keep this many newest checkpoints")
    log_every: int = option(
        10, "append a metrics.jsonl row and print progress every N steps (0: first and last step only)"
    )
    seed: int = option(1337, "seed for initialisation, data order, masking and dropout")
    device: str = option("auto", "cpu, cuda, cuda:N or auto (under torchrun, cuda means cuda:LOCAL_RANK)")
    precision: Literal["auto", "fp32", "bf16"] = option(
        "auto", "bf16 autocast where the hardware supports it (auto), or force fp32 / bf16"
    )
    compile: Literal[True, False, "auto"] = option(
        False,
        "torch.compile the model: true, false, or auto (compile, time steps both ways on the run's own batch, keep the faster)",
    )
    attention: attention_mod.Kernel = option(
        "auto",
        "attention kernel; auto: under bf16 on CPU, time sdpa, sdpa in fp32 and eager on the first micro-batch and keep the fastest (else the model's default)",
    )

    def budget(self) -> optim.Budget:
        return optim.Budget(
            self.max_steps, self.max_tokens, self.max_minutes * 60 if self.max_minutes else None, self.max_flops
        )

    def larger_is_better(self) -> bool:
        """Direction of `best_metric`: `auto` treats losses and errors (val_loss, mse, ...) as lower-is-better."""
        if self.best_mode != "auto":
            return self.best_mode == "max"
        return not any(word in (self.best_metric or "") for word in LOWER_IS_BETTER)

    def check_values(self) -> None:
        """Values outside their meaning are one-line errors before any data is read (a negative lr
        trained backwards; batch_size 0 ended in "need at least one array to stack" or a ZeroDivisionError)."""
        rules = [
            ("batch_size", self.batch_size >= 1, "at least 1"),
            (
                "micro_batch_size",
                self.micro_batch_size is None or 1 <= self.micro_batch_size <= self.batch_size,
                "between 1 and train.batch_size, or null",
            ),
            ("lr", self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "a positive number"),
            ("min_lr", math.isfinite(self.min_lr) and self.min_lr >= 0, "0 or more"),
            ("warmup_steps", self.warmup_steps is None or self.warmup_steps >= 0, "0 or more"),
            ("warmup_fraction", 0 < self.warmup_fraction <= 1, "in (0, 1]"),
            ("weight_decay", self.weight_decay >= 0, "0 or more"),
            ("beta1", 0 <= self.beta1 < 1, "in [0, 1)"),
            ("beta2", 0 <= self.beta2 < 1, "in [0, 1)"),
            ("grad_clip", self.grad_clip >= 0, "0 (off) or more"),
            ("layer_decay", 0 < self.layer_decay <= 1, "in (0, 1]"),
            ("max_steps", self.max_steps is None or self.max_steps >= 1, "at least 1, or null"),
            ("max_tokens", self.max_tokens is None or self.max_tokens >= 1, "at least 1, or null"),
            ("max_minutes", self.max_minutes is None or self.max_minutes > 0, "more than 0, or null"),
            ("max_flops", self.max_flops is None or self.max_flops > 0, "more than 0, or null"),
            ("eval_every", self.eval_every is None or self.eval_every >= 0, "0 (only at the end) or more"),
            ("early_stopping_patience", self.early_stopping_patience >= 0, "0 (never) or more"),
            ("save_every", self.save_every >= 0, "0 (off) or more"),
            ("save_every_minutes", self.save_every_minutes >= 0, "0 (off) or more"),
            ("keep_last", self.keep_last >= 1, "at least 1"),
            ("log_every", self.log_every >= 0, "0 or more"),
        ]
        for name, ok, wanted in rules:
            if not ok:
                raise LmforgeError(f"--train.{name} {getattr(self, name)}: must be {wanted}")

    def check_ready(self) -> None:
        """Raise unless the values make sense, a budget is set and no field is left null for a stage to fill in."""
        self.check_values()
        if not self.budget().is_set():
            raise LmforgeError(
                "no budget set: give one of --train.max_steps, --train.max_tokens, --train.max_minutes, --train.max_flops"
            )
        for name, value in (("lr", self.lr), ("warmup_steps", self.warmup_steps), ("eval_every", self.eval_every)):
            if value is None:  # only fine-tuning fills these in
                default = TrainConfig.__dataclass_fields__[name].default
                raise LmforgeError(
                    f"train.{name} is null here, and only fine-tuning picks a value for null; give one, e.g. --train.{name} {default}"
                )
