"""Which attention kernel a training run uses, chosen by timing the run's own step.

PyTorch's CPU flash-attention backward is 3-4x slower in bf16 than in fp32 at short
sequences (B=12, H=4, T=64, D=32: 3.3 ms vs 0.8 ms forward+backward on a 2-core Zen 4), while
at T >= 512 bf16 is the fastest kernel. Under bf16 autocast the whole step can therefore run
1.4x faster with attention done in fp32, or as plain matmuls + softmax (transformers' `eager`),
but only at the shapes where that holds. `choose` times one forward+backward of the real
micro-batch with each kernel and keeps the fastest. The choice lives on the model object only:
transformers does not write `_attn_implementation` into config.json, so saved folders load
anywhere with their default kernel.

`choose_attention` and `choose_compile` make the choices of a training run (`--train.attention`,
`--train.compile`) on its first micro-batch: rank 0 times, every rank follows, and a resumed run
keeps what it chose, so its numbers match an uninterrupted run. Compiling is decided here too
because it changes which kernel is fastest (inductor fuses eager attention's matmuls and softmax).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from lmforge.loop import Runtime
    from lmforge.train_config import TrainConfig

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
        out, weights = sdpa_attention_forward(
            module, query.float(), key.float(), value.float(), attention_mask, **kwargs
        )
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


def use(model: torch.nn.Module, kernel: str) -> None:
    """Switch every attention layer of `model` to `kernel` (a config name or a transformers name)."""
    register()
    hf = hf_model(model)
    if hf is not None:
        hf.set_attn_implementation(KERNELS.get(kernel, kernel))


def _best_step_ms(step: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return round(best * 1e3, 2)


def choose(
    model: torch.nn.Module,
    step: Callable[[], None],
    dtype: torch.dtype,
    device: torch.device,
    repeats: int = 3,
    announce: bool = False,
) -> tuple[str | None, dict[str, float]]:
    """Time `step()` (one forward+backward of a real micro-batch) with each kernel; leave the fastest
    set on `model` and return its config name and every kernel's best time in milliseconds.

    Only bf16 on CPU has kernels worth choosing between; otherwise nothing is timed or changed.
    `step` must leave no state behind (the caller forks the RNG and clears gradients).
    """
    if dtype != torch.bfloat16 or device.type != "cpu" or hf_model(model) is None:
        return None, {}
    if announce:  # a few seconds of silence otherwise
        print("attention: timing the kernels on one micro-batch...", flush=True)
    times: dict[str, float] = {}
    for name in KERNELS:
        try:
            use(model, name)
        except (ValueError, ImportError):  # a model class without this kernel
            continue
        step()  # warm-up: first-call allocations
        times[name] = _best_step_ms(step, repeats)
    fastest = min(times, key=times.get)
    use(model, fastest)
    return fastest, times


def trial_step(module: torch.nn.Module, sample: dict[str, torch.Tensor], runtime: Runtime) -> None:
    """One forward+backward of `sample` under the run's autocast that leaves no gradients and no
    RNG draws behind."""
    try:
        with torch.random.fork_rng(devices=[]):
            with runtime.autocast():
                loss = module(**runtime.to_device(sample))
            loss.backward()
    finally:
        for param in module.parameters():
            param.grad = None


def choose_attention(
    module: torch.nn.Module,
    sample: dict[str, torch.Tensor],
    cfg: TrainConfig,
    runtime: Runtime,
    resumed: str | None = None,
) -> dict:
    """Set the attention kernel `cfg.attention` names, or with `auto` the fastest on `sample`
    (rank 0 times, every rank follows); a resumed run keeps the kernel it chose (`resumed`), so its
    numbers match an uninterrupted run. Returns {"kernel": name or None, "ms": {kernel: ms}}."""
    fixed = cfg.attention if cfg.attention != "auto" else resumed
    if fixed is not None:
        use(module, fixed)
        return {"kernel": fixed, "ms": {}}
    kernel, times = choose(
        module, lambda: trial_step(module, sample, runtime), runtime.dtype, runtime.device, announce=runtime.proc.main
    )
    if kernel is None:
        return {"kernel": None, "ms": {}}
    names = list(KERNELS)
    kernel = names[runtime.proc.from_main(names.index(kernel))]
    use(module, kernel)
    if runtime.proc.main:
        print(
            f"attention: {kernel} (forward+backward of one micro-batch: "
            + ", ".join(f"{k} {v:.1f} ms" for k, v in times.items())
            + ")",
            flush=True,
        )
    return {"kernel": kernel, "ms": times}


def choose_compile(
    module: torch.nn.Module,
    sample: dict[str, torch.Tensor],
    cfg: TrainConfig,
    runtime: Runtime,
    attention: dict,
    resumed: str | None = None,
    repeats: int = 5,
    rounds: int = 3,
) -> tuple[torch.nn.Module, dict]:
    """The module to train with, compiled or not, and {"setting", "choice", "kernel", "ms"}.

    `true` compiles (eager, with a warning, if compiling fails: no C++ compiler, an unsupported op);
    `auto` compiles, then times forward+backward of `sample` both ways and keeps the faster (on some
    hosts of one machine kind compiling made the step 7-20% slower). A resumed run keeps its choice.
    The attention kernel is chosen with it: `attention` is the uncompiled choice, and when that was
    timed (`--train.attention auto`) and is not `eager`, the compiled step is timed with `eager`
    attention too, because inductor fuses eager attention's matmuls and softmax into few kernels (at
    T=64 the compiled eager step measured 27.9 ms and the compiled SDPA one 41.3 ms; uncompiled, an
    SDPA kernel can be the fastest). The winner's kernel is left set on the model.
    Trials leave no gradients and no RNG draws behind.
    """
    setting = cfg.compile
    info = {"setting": setting, "choice": "eager", "ms": {}}
    if setting is False or (setting == "auto" and resumed == "eager"):
        return module, info
    step = lambda m: lambda: trial_step(m, sample, runtime)  # noqa: E731
    uncompiled_kernel = attention["kernel"]
    kernels = [uncompiled_kernel]
    if attention["ms"] and uncompiled_kernel != "eager" and "eager" in attention["ms"]:
        kernels = ["eager", uncompiled_kernel]
    race_eager = setting == "auto" and resumed is None
    timed = race_eager or len(kernels) > 1
    if runtime.proc.main:
        print("compile: compiling the model (the first call takes 3-60 s on CPU)...", flush=True)
    compiled = torch.compile(module)
    started = time.perf_counter()
    failed = False
    for kernel in kernels:  # compile every candidate (one first call each)
        if kernel is not None:
            use(module, kernel)
        try:
            step(compiled)()
        except Exception as err:  # noqa: BLE001 - any compiler failure means: train eagerly
            print(
                f"torch.compile failed ({type(err).__name__}: {str(err).splitlines()[0][:120]}); training without it",
                flush=True,
            )
            failed = True
        if runtime.proc.any(failed)[0]:  # one rank's failure makes every rank train eagerly
            if uncompiled_kernel is not None:
                use(module, uncompiled_kernel)
            return module, info
    compile_seconds = time.perf_counter() - started
    # candidates: (compiled?, kernel); timed in interleaved rounds, best of each, so a stall of the
    # machine during one candidate's turn does not decide the race (one sequential pass picked the
    # slower side in 1 of 6 runs on a busy 2-core host)
    candidates = [(True, k) for k in kernels] + ([(False, uncompiled_kernel)] if race_eager else [])
    ms = {c: float("inf") for c in candidates}
    if timed:
        if race_eager:
            if uncompiled_kernel is not None:
                use(module, uncompiled_kernel)
            step(module)()  # eager warm-up
        for _ in range(rounds):
            for is_compiled, kernel in candidates:
                if kernel is not None:
                    use(module, kernel)
                ms[(is_compiled, kernel)] = min(
                    ms[(is_compiled, kernel)], _best_step_ms(step(compiled if is_compiled else module), repeats)
                )
    # rank 0's timings decide for every rank (untimed: every ms is inf, the first candidate wins)
    winner = candidates[runtime.proc.from_main(min(range(len(candidates)), key=lambda i: ms[candidates[i]]))]
    best = min(kernels, key=lambda k: ms[(True, k)])  # the fastest compiled step, for the record
    info["kernel"] = winner[1]
    if winner[1] is not None:
        use(module, winner[1])
    if timed:
        info["ms"] = {"compiled": ms[(True, best)]}
        if len(kernels) > 1:
            info["ms"]["compiled_by_attention"] = {str(k): ms[(True, k)] for k in kernels}
        if race_eager:
            info["ms"]["eager"] = ms[(False, uncompiled_kernel)]
    if not winner[0]:
        if runtime.proc.main:
            print(
                f"compile: eager is faster ({info['ms']['eager']:.1f} ms vs {info['ms']['compiled']:.1f} ms compiled per micro-batch); training without it",
                flush=True,
            )
        return module, info
    info["choice"] = "compiled"
    if runtime.proc.main:
        timing = (
            f"; {info['ms']['compiled']:.1f} ms vs {info['ms']['eager']:.1f} ms eager per micro-batch"
            if "eager" in info["ms"]
            else ""
        )
        kernel_text = f", {winner[1]} attention" if winner[1] is not None else ""
        if len(kernels) > 1:
            kernel_text += (
                " (compiled: "
                + ", ".join(f"{k} {v:.1f} ms" for k, v in info["ms"]["compiled_by_attention"].items())
                + ")"
            )
        print(f"compiled the model in {compile_seconds:.0f} s{kernel_text}{timing}", flush=True)
    return compiled, info
