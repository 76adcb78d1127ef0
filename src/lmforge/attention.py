"""Which attention kernel a training run uses, chosen by timing the run's own step.

PyTorch's CPU flash-attention backward is 3-4x slower in bf16 than in fp32 at short
sequences (B=12, H=4, T=64, D=32: 3.3 ms vs 0.8 ms forward+backward on a 2-core Zen 4), while
at T >= 512 bf16 is the fastest kernel. Under bf16 autocast the whole step can therefore run
1.4x faster with attention done in fp32, or as plain matmuls + softmax (transformers' `eager`),
but only at the shapes where that holds. `choose` times one forward+backward of the real
micro-batch with each kernel and keeps the fastest. The choice lives on the model object only:
transformers does not write `_attn_implementation` into config.json, so saved folders load
anywhere with their default kernel.
"""

from __future__ import annotations

import time
from typing import Callable, Literal

import torch

SDPA_FP32 = "lmforge_sdpa_fp32"
Kernel = Literal["auto", "sdpa", "sdpa_fp32", "eager"]
KERNELS = {"sdpa": "sdpa", "sdpa_fp32": SDPA_FP32, "eager": "eager"}  # config name -> transformers name
_registered = False


def sdpa_fp32(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with q, k, v (and a float mask) in fp32, outside autocast;
    the output goes back to the caller's dtype. Same signature as the functions in AttentionInterface."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)
    return out.to(query.dtype), weights


def register() -> None:
    """Make `lmforge_sdpa_fp32` a valid `attn_implementation` in this process, with SDPA's masks
    (a kernel without a registered mask function gets no mask at all: padding would leak)."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(SDPA_FP32, sdpa_fp32)
        AttentionMaskInterface.register(SDPA_FP32, sdpa_mask)
        _registered = True


def hf_model(model: torch.nn.Module):
    """The outermost transformers model inside `model` (a peft wrapper, a task model), or None."""
    from transformers import PreTrainedModel

    return next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)


def current(model: torch.nn.Module) -> str | None:
    hf = hf_model(model)
    return None if hf is None else hf.config._attn_implementation


def use(model: torch.nn.Module, kernel: str) -> None:
    """Switch every attention layer of `model` to `kernel` (a config name or a transformers name)."""
    register()
    hf = hf_model(model)
    if hf is not None:
        hf.set_attn_implementation(KERNELS.get(kernel, kernel))


def choose(model: torch.nn.Module, step: Callable[[], None], dtype: torch.dtype, device: torch.device,
           repeats: int = 3) -> tuple[str | None, dict[str, float]]:
    """Time `step()` (one forward+backward of a real micro-batch) with each kernel; leave the fastest
    set on `model` and return its config name and every kernel's best time in milliseconds.

    Only bf16 on CPU has kernels worth choosing between; otherwise nothing is timed or changed.
    `step` must leave no state behind (the caller forks the RNG and clears gradients).
    """
    if dtype != torch.bfloat16 or device.type != "cpu" or hf_model(model) is None:
        return None, {}
    times: dict[str, float] = {}
    for name in KERNELS:
        try:
            use(model, name)
        except (ValueError, ImportError):  # a model class without this kernel
            continue
        step()  # warm-up: first-call allocations
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            step()
            best = min(best, time.perf_counter() - started)
        times[name] = round(best * 1e3, 2)
    fastest = min(times, key=times.get)
    use(model, fastest)
    return fastest, times
