"""AdamW with the usual weight-decay groups, and a learning-rate schedule laid over the budget.

Cramming's point: when a run is limited by minutes, tokens or FLOPs, decay the learning rate
against the fraction of that budget spent, so the run that the budget stops ends annealed.
`progress` is the largest spent fraction among the limits that are set.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block|blocks)\.(\d+)\.")


def layer_depth(name: str, layers: int) -> int:
    """0 for embeddings, i + 1 for transformer block i, layers + 1 for everything above (heads, poolers)."""
    if "embed" in name or ".wte." in name or ".wpe." in name:
        return 0
    match = LAYER_INDEX.search(f".{name}")
    return int(match.group(1)) + 1 if match else layers + 1


def param_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """Decay matrices (dim >= 2); leave biases and norm gains (dim < 2) undecayed.

    With `layer_decay` < 1 (layer-wise LR decay, as in ELECTRA and BEiT fine-tuning), a
    parameter `k` blocks below the top gets `lr_scale = layer_decay ** k`: the embeddings move
    least, the new task head at full rate. The loop multiplies each group's lr by `lr_scale`.
    """
    layers = getattr(getattr(model, "config", None), "num_hidden_layers", 0) or 0
    groups: dict[tuple[bool, int], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decays = param.dim() >= 2
        depth = layer_depth(name, layers) if layer_decay != 1.0 else layers + 1
        group = groups.setdefault(
            (decays, depth),
            {
                "params": [],
                "weight_decay": weight_decay if decays else 0.0,
                "lr_scale": layer_decay ** (layers + 1 - depth),
            },
        )
        group["params"].append(param)
    return list(groups.values())


def adamw(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    eps: float = 1e-8,
    layer_decay: float = 1.0,
) -> torch.optim.AdamW:
    groups = param_groups(model, weight_decay, layer_decay)
    try:  # the fused kernel is fastest on CPU and GPU alike (torch >= 2.4)
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True)


@dataclass
class Budget:
    """Limits of a run; any that are set may stop it. Progress is the largest spent fraction."""

    max_steps: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    max_flops: float | None = None

    def is_set(self) -> bool:
        return any(v for v in (self.max_steps, self.max_tokens, self.max_seconds, self.max_flops))

    def progress(self, step: int, tokens: int, seconds: float, flops: float) -> float:
        fractions = [0.0]
        if self.max_steps:
            fractions.append(step / self.max_steps)
        if self.max_tokens:
            fractions.append(tokens / self.max_tokens)
        if self.max_seconds:
            fractions.append(seconds / self.max_seconds)
        if self.max_flops:
            fractions.append(flops / self.max_flops)
        return max(fractions)

    def limiting(self, step: int, tokens: int, seconds: float, flops: float) -> str:
        """Name of the limit that is furthest spent (the one that stops the run)."""
        spent = {
            "max_steps": step / self.max_steps if self.max_steps else -1,
            "max_tokens": tokens / self.max_tokens if self.max_tokens else -1,
            "max_minutes": seconds / self.max_seconds if self.max_seconds else -1,
            "max_flops": flops / self.max_flops if self.max_flops else -1,
        }
        return max(spent, key=spent.get)


def warmup_done(step: int, progress: float, warmup_steps: int, warmup_fraction: float) -> bool:
    """Warm-up ends after `warmup_steps` steps or at `warmup_fraction` of the budget, whichever
    comes first: a 3-minute budget that fits 90 steps must not spend them all warming up."""
    return step >= warmup_steps or (warmup_fraction < 1.0 and progress >= warmup_fraction)


def learning_rate(
    step: int,
    progress: float,
    warmup_end_progress: float | None,
    lr: float,
    min_lr: float,
    warmup_steps: int,
    schedule: str,
    warmup_fraction: float = 1.0,
) -> float:
    """Linear warm-up, then decay from `lr` to `min_lr` as progress goes to 1.

    Warm-up rises with whichever is further along, steps over `warmup_steps` or progress over
    `warmup_fraction` (see `warmup_done`). The decay runs over the part of the budget left after
    warm-up: `warmup_end_progress` is the progress at which warm-up ended (known only once
    reached under a time budget).
    """
    if warmup_end_progress is None and not warmup_done(step, progress, warmup_steps, warmup_fraction):
        by_steps = (step + 1) / warmup_steps
        by_budget = progress / warmup_fraction if warmup_fraction < 1.0 else 0.0
        return lr * min(1.0, max(by_steps, by_budget))
    if schedule == "constant":
        return lr
    start = warmup_end_progress or 0.0
    ratio = min(max((progress - start) / max(1.0 - start, 1e-9), 0.0), 1.0)
    if schedule == "linear":
        return min_lr + (lr - min_lr) * (1.0 - ratio)
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * ratio))
