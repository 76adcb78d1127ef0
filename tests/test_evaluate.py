import json
import math

import pytest
import torch

from conftest import tiny_overrides
from lmforge import cli, config as config_mod
from lmforge.errors import LmforgeError
from lmforge.evaluate import EvaluateConfig, causal_scores, run as evaluate
from lmforge.generate import FillMaskConfig, GenerateConfig, run_fill_mask, run_generate
from lmforge.pretrain import PretrainConfig, run as pretrain


@pytest.fixture(scope="module")
def clm_model(small_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("clm")
    pretrain(config_mod.resolve(PretrainConfig, None, tiny_overrides(small_text, out, **{"train.max_steps": 30})))
    return out / "final"


@pytest.fixture(scope="module")
def mlm_model(small_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm")
    pretrain(config_mod.resolve(PretrainConfig, None, tiny_overrides(small_text, out, **{
        "train.objective": "mlm", "tokenizer.kind": "wordpiece", "tokenizer.vocab_size": 300, "train.max_steps": 20})))
    return out / "final"


def test_sliding_window_scores_every_token_once():
    from transformers import LlamaConfig, LlamaForCausalLM
    import numpy as np

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=30, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2, max_position_embeddings=64)).eval()
    tokens = np.random.default_rng(0).integers(0, 30, size=101)
    with torch.no_grad():
        nll, count = causal_scores(model, tokens, context=200, stride=100, batch_size=4, device="cpu")
        ids = torch.from_numpy(tokens).unsqueeze(0)
        reference = torch.nn.functional.cross_entropy(model(ids[:, :-1]).logits[0], ids[0, 1:], reduction="sum")
        assert count == 100 and nll == pytest.approx(float(reference), rel=1e-5)
        nll, count = causal_scores(model, tokens, context=16, stride=8, batch_size=4, device="cpu")
        assert count == 100  # each of the 100 targets predicted exactly once


def test_evaluate_clm_reports_perplexity_and_bits_per_byte(clm_model, small_text, tmp_path):
    evaluate(config_mod.resolve(EvaluateConfig, None, {"model": str(clm_model), "data": [str(small_text)], "out": str(tmp_path)}))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["loss"] < math.log(60)
    # char-level ASCII text: one token per byte, so bits/byte = loss / ln 2 (up to the boundary token)
    assert report["bits_per_byte"] == pytest.approx(report["loss"] / math.log(2), rel=0.01)
    assert (tmp_path / "report.html").is_file()


def test_evaluate_mlm_reports_masked_accuracy(mlm_model, small_text, tmp_path):
    evaluate(config_mod.resolve(EvaluateConfig, None, {"model": str(mlm_model), "data": [str(small_text)], "out": str(tmp_path)}))
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["objective"] == "mlm" and 0.0 <= report["masked_accuracy"] <= 1.0 and report["masked_tokens"] > 100


def test_evaluate_rejects_a_foreign_tokenizer(clm_model, small_text, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(clm_model, model_dir)
    cli.main(["tokenizer", "--data", str(small_text), "--out", str(tmp_path / "bpe"), "--tokenizer.vocab_size", "400", "--tokenizer.min_frequency", "1"])
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "bpe" / name, model_dir / name)
    with pytest.raises(LmforgeError, match=r"tokenizer has \d+ tokens but .*model has a vocabulary of \d+"):
        evaluate(config_mod.resolve(EvaluateConfig, None, {"model": str(model_dir), "data": [str(small_text)], "out": str(tmp_path / "e")}))


def test_generate_samples_with_filters(clm_model, capsys):
    texts = run_generate(config_mod.resolve(GenerateConfig, None, {"model": str(clm_model), "prompt": "ROMEO:", "max_new_tokens": 80,
                                                                    "samples": 2, "top_k": 10, "top_p": 0.9, "seed": 1}))
    assert len(texts) == 2 and all(t.startswith("ROMEO:") and len(t) == 6 + 80 for t in texts)
    again = run_generate(config_mod.resolve(GenerateConfig, None, {"model": str(clm_model), "prompt": "ROMEO:", "max_new_tokens": 80,
                                                                    "samples": 2, "top_k": 10, "top_p": 0.9, "seed": 1}))
    assert again == texts  # seeded
    greedy = run_generate(config_mod.resolve(GenerateConfig, None, {"model": str(clm_model), "temperature": 0, "max_new_tokens": 5}))
    assert len(greedy[0]) == 1 + 5


def test_fill_mask_top_k(mlm_model):
    results = run_fill_mask(config_mod.resolve(FillMaskConfig, None, {"model": str(mlm_model), "text": "the king [MASK] here", "top_k": 3}))
    assert len(results) == 1 and len(results[0]) == 3
    assert sum(p for _, p in results[0]) <= 1.0 and results[0][0][1] >= results[0][1][1]
    with pytest.raises(LmforgeError, match=r"must contain the mask token '\[MASK\]'"):
        run_fill_mask(config_mod.resolve(FillMaskConfig, None, {"model": str(mlm_model), "text": "no mask"}))


def test_cached_generation_equals_recomputing_every_window(clm_model):
    """Greedy decoding with the KV cache (within the context) and the sliding window past it gives
    the tokens a full re-read of the last `context` tokens at every step gives."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lmforge.generate import generate

    model = AutoModelForCausalLM.from_pretrained(str(clm_model)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(clm_model))
    context = model.config.max_position_embeddings
    steps = context + 10  # crosses from the cached part into the sliding part
    text = generate(model, tokenizer, "ROMEO:", steps, temperature=0, top_k=None, top_p=None)[0]
    ids = torch.tensor([tokenizer.backend_tokenizer.encode("ROMEO:", add_special_tokens=False).ids])
    with torch.no_grad():
        for _ in range(steps):
            next_id = model(input_ids=ids[:, -context:], use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    assert text == tokenizer.decode(ids[0].tolist(), skip_special_tokens=True)
