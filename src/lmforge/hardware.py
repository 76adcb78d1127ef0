"""What the machine can do: device and dtype choice, measured matmul peak, peak memory."""

from __future__ import annotations

import functools
import os
import resource
import time
from pathlib import Path

import torch


def resolve_device(device: str) -> torch.device:
    """`auto`: CUDA when available, else the CPU. Under torchrun (LOCAL_RANK set), `auto` and a
    bare `cuda` mean this process's own GPU, cuda:LOCAL_RANK (every rank on cuda:0 would collide)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX), where autocast pays off."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype:
    """`auto` picks bf16 autocast where the hardware runs it natively, else fp32."""
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 0.4) -> float:
    """Best measured FLOP/s of a square matmul in `dtype`: the denominator of MFU.
    Draws from its own generator: the global RNG (dropout) must not move, or resume would drift."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    torch.matmul(a, b)  # warm-up: thread pools, kernels
    best = 0.0
    deadline = time.perf_counter() + seconds
    while True:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 / (time.perf_counter() - start))
        if time.perf_counter() > deadline:
            return best


@functools.cache
def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """`matmul_peak_flops`, measured once per process (each fine-tuning seed, each run of a
    benchmark in one process would otherwise spend 0.4 s re-measuring the same machine)."""
    return matmul_peak_flops(device, dtype)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def describe() -> str:
    """One line naming the CPU (and GPU), for benchmark results."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{name}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name()}"
    return text
