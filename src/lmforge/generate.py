"""`lmforge generate` (sampling from a causal LM) and `lmforge fill-mask` (top-k for [MASK])."""

from __future__ import annotations

import collections
import inspect
from dataclasses import dataclass
from typing import Optional

import torch

from lmforge import hardware
from lmforge import model as model_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.config import option
from lmforge.errors import LmforgeError


@dataclass
class GenerateConfig:
    model: str = option("", "causal LM folder (a run's final/ or checkpoints/step_N/)")
    prompt: str = option("\n", "text to continue")
    max_new_tokens: int = option(200, "tokens to generate")
    temperature: float = option(0.8, "sampling temperature (0: greedy)")
    top_k: Optional[int] = option(50, "sample among the k most likely tokens (null: all)")
    top_p: Optional[float] = option(None, "nucleus sampling: smallest set with this probability mass")
    samples: int = option(1, "how many continuations")
    seed: int = option(0, "sampling seed")
    device: str = option("auto", "cpu, cuda or auto")


@dataclass
class FillMaskConfig:
    model: str = option("", "masked LM folder (a run's final/)")
    text: str = option("", "text with the tokenizer's mask token, e.g. 'To be or not to [MASK]'")
    top_k: int = option(5, "predictions per mask")
    device: str = option("auto", "cpu, cuda or auto")


def _load(model: str, auto):
    path = str(model_mod.folder_of(model))
    tokenizer = tokenizer_mod.load(path)
    model = model_mod.load(path, auto)
    model_mod.check_vocab(model, tokenizer, path)
    return model.eval(), tokenizer


def _cache_argument(model) -> str:
    """The forward argument that takes the KV cache: `cache` since transformers renamed it (5.x),
    `past_key_values` before; the old name prints a deprecation warning on every call."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def generate(model, tokenizer, prompt: str, *args, **kwargs) -> list[str]:
    """Continuations of `prompt` (prompt included). Each step sees the last `context` tokens,
    so generation can run past the trained context length.

    Within the context, keys and values are cached (one new token per forward pass); past it,
    the window slides, which a cache cannot follow, so each step re-reads the last `context` tokens.
    The other arguments are those of `steps`.
    """
    (out,) = collections.deque(steps(model, tokenizer, prompt, *args, **kwargs), maxlen=1)
    return [tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in out]


@torch.no_grad()
def steps(
    model,
    tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    samples: int = 1,
    seed: int = 0,
):
    """The token ids (S, prompt + n) after each new token, for n = 0 .. max_new_tokens: `sample`
    keeps the last, `lmforge serve` streams each new piece of text as it comes."""
    from transformers import (
        DynamicCache,
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    generator = torch.Generator(device=model.device).manual_seed(seed)
    ids = tokenizer_mod.encode_text(tokenizer, prompt) or [tokenizer.eos_token_id]
    if ids[0] is None:
        raise LmforgeError("--prompt is empty and the tokenizer has no EOS token to start from; give a prompt")
    out = torch.tensor([ids], device=model.device).repeat(samples, 1)  # (S, T)
    context = model_mod.max_positions(model.config)
    warpers = LogitsProcessorList()
    if temperature > 0:
        warpers.append(TemperatureLogitsWarper(temperature))
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if top_p is not None and top_p < 1.0:
            warpers.append(TopPLogitsWarper(top_p))
    cache = DynamicCache(config=model.config)  # filled in place by each forward pass
    cache_kwarg = _cache_argument(model)
    yield out
    for _ in range(max_new_tokens):
        if out.shape[1] <= context:
            cached = cache.get_seq_length()
            result = model(input_ids=out[:, cached:], use_cache=True, **{cache_kwarg: cache})
        else:
            result = model(input_ids=out[:, -context:], use_cache=False)
        logits = result.logits[:, -1, :].float()  # (S, V)
        if temperature > 0:
            probs = warpers(out, logits).softmax(-1)
            next_ids = torch.multinomial(probs, 1, generator=generator)
        else:
            next_ids = logits.argmax(-1, keepdim=True)
        out = torch.cat([out, next_ids], dim=1)
        yield out


def check_sampling(config: GenerateConfig) -> None:
    """Sampling settings that have no meaning are errors before the model loads (a negative
    temperature flips the distribution; top_p above 1 silently means no filtering)."""
    checks = [
        ("max_new_tokens", config.max_new_tokens >= 1, "at least 1"),
        ("samples", config.samples >= 1, "at least 1"),
        ("temperature", config.temperature >= 0, "0 (greedy) or more"),
        ("top_k", config.top_k is None or config.top_k >= 1, "at least 1, or null for all tokens"),
        ("top_p", config.top_p is None or 0 < config.top_p <= 1, "in (0, 1], or null for no nucleus filter"),
    ]
    for name, ok, wanted in checks:
        if not ok:
            raise LmforgeError(f"--{name} {getattr(config, name)}: must be {wanted}")


def run_generate(config: GenerateConfig) -> list[str]:
    from transformers import AutoModelForCausalLM

    if model_mod.objective_of(model_mod.folder_of(config.model)) == "mlm":
        raise LmforgeError(
            f"--model {config.model}: this is a masked LM, which predicts masked tokens and cannot write text left to right; "
            f"use `lmforge fill-mask --model {config.model} --text '... [MASK] ...'`, or give a causal LM folder"
        )
    check_sampling(config)
    model, tokenizer = _load(config.model, AutoModelForCausalLM)
    model.to(hardware.resolve_device(config.device))
    texts = generate(
        model,
        tokenizer,
        config.prompt,
        config.max_new_tokens,
        config.temperature,
        config.top_k,
        config.top_p,
        config.samples,
        config.seed,
    )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}")
        print(text)
    return texts


def fill_mask(model, tokenizer, text: str, top_k: int) -> list[list[tuple[str, float]]]:
    """For each mask token in `text`: the top-k (token, probability) predictions."""
    if tokenizer.mask_token is None or tokenizer.mask_token not in text:
        raise LmforgeError(
            f"--text must contain the mask token {tokenizer.mask_token!r}, e.g. 'To be or not to {tokenizer.mask_token}'"
        )
    # [CLS] text [SEP], the text encoded line by line: the rows the model was trained on
    cls, sep = [[i] if i is not None else [] for i in (tokenizer.cls_token_id, tokenizer.sep_token_id)]
    input_ids = torch.tensor([cls + tokenizer_mod.encode_text(tokenizer, text) + sep], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[0]  # (T, V)
    positions = (input_ids[0] == tokenizer.mask_token_id).nonzero().flatten()
    results = []
    for position in positions:
        probs = logits[position].float().softmax(-1)
        top = probs.topk(top_k)
        results.append([(tokenizer.decode([int(i)]).strip(), float(p)) for p, i in zip(top.values, top.indices)])
    return results


def run_fill_mask(config: FillMaskConfig) -> list:
    from transformers import AutoModelForMaskedLM

    if config.top_k < 1:
        raise LmforgeError(f"--top_k {config.top_k}: must be at least 1")
    model, tokenizer = _load(config.model, AutoModelForMaskedLM)
    model.to(hardware.resolve_device(config.device))
    results = fill_mask(model, tokenizer, config.text, config.top_k)
    for i, predictions in enumerate(results, start=1):
        print(f"mask {i}: " + ", ".join(f"{token!r} {p:.3f}" for token, p in predictions))
    return results
