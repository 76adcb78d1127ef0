"""Attention kernel choice: numerics of the fp32 kernel, the timed choice, what it leaves behind."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import tiny_overrides
from transformers import AutoModelForCausalLM

from lmforge import attention, objectives
from lmforge import config as config_mod
from lmforge.loop import LossModule, Runtime, fit
from lmforge.pretrain import PretrainConfig, run
from lmforge.process import Process
from lmforge.train_config import TrainConfig


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=40,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=32,
        )
    )


def tiny_bert():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    return BertForMaskedLM(
        BertConfig(vocab_size=40, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    )


@pytest.mark.parametrize("build", [tiny_llama, tiny_bert])
@pytest.mark.parametrize("kernel", ["sdpa_fp32", "eager"])
def test_kernels_match_sdpa_with_padding(build, kernel):
    model = build().eval()
    ids = torch.randint(0, 40, (3, 20))
    mask = torch.ones_like(ids)
    mask[0, 15:] = 0  # padding: each kernel must get and honour the mask
    keep = mask.bool()
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        attention.use(model, kernel)
        assert model.config._attn_implementation == attention.KERNELS[kernel]
        logits = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(logits[keep], reference[keep], rtol=1e-4, atol=1e-4)


def test_fp32_kernel_returns_the_callers_dtype_under_autocast():
    model = tiny_llama().eval()
    ids = torch.randint(0, 40, (3, 20))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        attention.use(model, "sdpa_fp32")
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model(input_ids=ids, attention_mask=mask).logits
    assert bf16.dtype == torch.bfloat16
    assert (bf16.float() - reference).abs().max() < 0.1


def test_choose_times_every_kernel_and_leaves_no_state():
    model = tiny_llama().train()
    module = LossModule(model, objectives.CausalLM(np.arange(200, dtype=np.uint16) % 40, 16, 4, 0))
    sample = module.objective.batch(0)
    rng = torch.get_rng_state()
    runtime = Runtime(torch.device("cpu"), torch.bfloat16, Process(), 4)
    kernel, times = attention.choose(
        module, lambda: attention.trial_step(module, sample, runtime), torch.bfloat16, torch.device("cpu")
    )
    assert set(times) == {"sdpa", "sdpa_fp32", "eager"} and all(t > 0 for t in times.values())
    assert kernel == min(times, key=times.get)
    assert model.config._attn_implementation == attention.KERNELS[kernel]
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_choose_changes_nothing_in_fp32():
    model = tiny_llama()
    before = model.config._attn_implementation
    assert attention.choose(model, lambda: pytest.fail("fp32 needs no timing"), torch.float32, torch.device("cpu")) == (
        None,
        {},
    )
    assert model.config._attn_implementation == before


def test_saved_folder_loads_with_the_default_kernel(tmp_path):
    model = tiny_llama()
    attention.use(model, "sdpa_fp32")
    model.save_pretrained(tmp_path)
    assert attention.SDPA_FP32 not in (tmp_path / "config.json").read_text()
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config._attn_implementation != attention.SDPA_FP32


def test_bf16_run_records_its_kernel_and_resume_keeps_it(small_text, tmp_path):
    def pretrain(out, **extra):
        overrides = tiny_overrides(small_text, out, **{"train.precision": "bf16", "train.save_every": 0, **extra})
        return run(config_mod.resolve(PretrainConfig, None, overrides))

    out = tmp_path / "run"
    pretrain(out, **{"train.stop_at_step": 5})
    state = json.loads((out / "checkpoints" / "step_5" / "training_state" / "state.json").read_text())
    assert state["attention"] in attention.KERNELS
    pretrain(out, resume=True)
    report = json.loads((out / "report.json").read_text())
    assert report["attention"] == state["attention"] and report["attention_ms"] == {}  # kept, not timed again


def test_an_explicit_kernel_is_used_without_timing(tmp_path):
    objective = objectives.CausalLM(np.arange(400, dtype=np.uint16) % 40, 16, 4, 0)
    summary = fit(
        tiny_llama(), objective, TrainConfig(max_steps=2, precision="bf16", attention="eager", eval_every=0), tmp_path
    )
    assert summary.attention == "eager" and summary.attention_ms == {}
