"""`lmforge generate` and `lmforge fill-mask` on tiny models built here (random weights, real folders)."""

import logging
import re
import warnings

import pytest
import torch
from conftest import tiny_overrides
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

from lmforge import config as config_mod
from lmforge import documents
from lmforge import model as model_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.documents import SplitConfig
from lmforge.errors import LmforgeError
from lmforge.generate import FillMaskConfig, GenerateConfig, fill_mask, generate, run_fill_mask, run_generate
from lmforge.pretrain import PretrainConfig
from lmforge.pretrain import run as pretrain

PROMPT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n"


def trained_tokenizer(text, kind: str, objective: str):
    cfg = tokenizer_mod.TokenizerConfig(kind=kind, vocab_size=300, min_frequency=1)
    return tokenizer_mod.train(
        documents.iter_split(documents.resolve_sources([text]), "train", SplitConfig(valid_fraction=0.1)),
        cfg,
        objective,
    )


def model_folder(folder, tokenizer, family: str, objective: str, context: int = 32):
    """A random-weight model of `family` saved with `tokenizer`: a folder like a run's final/."""
    torch.manual_seed(0)
    model = model_mod.build(model_mod.ModelConfig(family=family, preset="tiny", context=context), tokenizer, objective)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def char_llama(small_text, tmp_path_factory):
    """A char-level Llama trained for 30 steps (random weights would sample special tokens, which decode to nothing)."""
    out = tmp_path_factory.mktemp("char_llama")
    pretrain(config_mod.resolve(PretrainConfig, None, tiny_overrides(small_text, out, **{"train.max_steps": 30})))
    return out / "final"


@pytest.fixture(scope="module")
def unigram_tokenizer(small_text):
    return trained_tokenizer(small_text, "unigram", "clm")


@pytest.fixture(scope="module")
def bert_folder(small_text, tmp_path_factory):
    return model_folder(
        tmp_path_factory.mktemp("bert"), trained_tokenizer(small_text, "wordpiece", "mlm"), "bert", "mlm"
    )


def greedy_by_recomputation(model, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding that re-reads the last `context` tokens at every step: no cache at all."""
    context = model.config.max_position_embeddings
    ids = torch.tensor([ids])
    with torch.no_grad():
        for _ in range(steps):
            next_id = model(input_ids=ids[:, -context:], use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
    return ids[0].tolist()


def test_generate_samples_with_filters(char_llama):
    overrides = {
        "model": str(char_llama),
        "prompt": "ROMEO:",
        "max_new_tokens": 80,
        "samples": 2,
        "top_k": 10,
        "top_p": 0.9,
        "seed": 1,
    }
    texts = run_generate(config_mod.resolve(GenerateConfig, None, overrides))
    assert len(texts) == 2 and all(t.startswith("ROMEO:") and len(t) == 6 + 80 for t in texts)
    assert texts[0] != texts[1]  # two samples, not one repeated
    assert run_generate(config_mod.resolve(GenerateConfig, None, overrides)) == texts  # seeded
    greedy = run_generate(
        config_mod.resolve(GenerateConfig, None, {"model": str(char_llama), "temperature": 0, "max_new_tokens": 5})
    )
    assert len(greedy[0]) == 1 + 5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_cached_generation_equals_recomputing_every_window(char_llama, tmp_path, family):
    """Greedy decoding with the KV cache (within the context) and the sliding window past it gives
    the tokens a full re-read of the last `context` tokens at every step gives."""
    tokenizer = tokenizer_mod.load(char_llama)
    model = model_mod.load(model_folder(tmp_path, tokenizer, family, "clm"), AutoModelForCausalLM).eval()
    steps = 32 + 10  # crosses from the cached part into the sliding part
    text = generate(model, tokenizer, "ROMEO:", steps, temperature=0, top_k=None, top_p=None)[0]
    expected = greedy_by_recomputation(model, tokenizer_mod.encode_text(tokenizer, "ROMEO:"), steps)
    assert text == tokenizer.decode(expected, skip_special_tokens=True)


def test_generate_encodes_the_prompt_line_by_line_as_training_did(unigram_tokenizer, tmp_path):
    """Unigram/Metaspace marks the start of each line with '▁' in training; a multi-line prompt
    must reach the model the same way (whole-text encoding drops the marker after each newline)."""
    model = model_mod.load(model_folder(tmp_path, unigram_tokenizer, "llama", "clm"), AutoModelForCausalLM).eval()
    text = generate(model, unigram_tokenizer, PROMPT, 3, temperature=0, top_k=None, top_p=None)[0]
    expected = greedy_by_recomputation(model, tokenizer_mod.encode_text(unigram_tokenizer, PROMPT), 3)
    assert text == unigram_tokenizer.decode(expected, skip_special_tokens=True)


def test_generate_prints_no_cache_deprecation_warning(char_llama):
    from transformers.utils import logging as hf_logging

    model, tokenizer = model_mod.load(char_llama, AutoModelForCausalLM).eval(), tokenizer_mod.load(char_llama)
    hf_logging.warning_once.cache_clear()  # transformers prints the notice once per process
    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    logging.getLogger("transformers").addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            generate(model, tokenizer, "ROMEO:", 5, temperature=0, top_k=None, top_p=None)
    finally:
        logging.getLogger("transformers").removeHandler(handler)
    messages += [str(w.message) for w in caught]
    assert not [m for m in messages if "past_key_values" in m or "deprecated" in m], messages


def test_empty_prompt_without_eos_token_is_an_error(char_llama):
    model, tokenizer = model_mod.load(char_llama, AutoModelForCausalLM).eval(), tokenizer_mod.load(char_llama)
    assert len(generate(model, tokenizer, "", 3, temperature=0, top_k=None, top_p=None)[0]) == 3  # starts from EOS
    tokenizer.eos_token = None
    with pytest.raises(LmforgeError, match="--prompt is empty and the tokenizer has no EOS token"):
        generate(model, tokenizer, "", 3, temperature=0, top_k=None, top_p=None)


def test_generate_refuses_a_masked_lm(bert_folder, tmp_path):
    with pytest.raises(
        LmforgeError, match=rf"{bert_folder}: this is a masked LM.*lmforge fill-mask --model {bert_folder}"
    ):
        run_generate(config_mod.resolve(GenerateConfig, None, {"model": str(bert_folder), "max_new_tokens": 5}))
    from transformers import AutoModel

    backbone = tmp_path / "backbone"  # a bare encoder (architectures: BertModel), as fine-tuning starts from
    AutoModel.from_pretrained(str(bert_folder)).save_pretrained(str(backbone))
    tokenizer_mod.load(bert_folder).save_pretrained(str(backbone))
    with pytest.raises(LmforgeError, match=rf"{backbone}: this is a masked LM"):
        run_generate(config_mod.resolve(GenerateConfig, None, {"model": str(backbone), "max_new_tokens": 5}))


def test_fill_mask_probabilities_are_the_softmax_of_the_logits(bert_folder, tmp_path):
    """A head whose logits are its bias alone (transform zeroed) has known probabilities."""
    tokenizer = tokenizer_mod.load(bert_folder)
    model = model_mod.load(bert_folder, AutoModelForMaskedLM)
    first, second = [token for token in sorted(tokenizer.get_vocab()) if token.isalpha() and len(token) > 2][:2]
    top, runner_up = tokenizer.convert_tokens_to_ids([first, second])
    bias = torch.zeros(model.config.vocab_size)
    bias[top], bias[runner_up] = 4.0, 3.0
    with torch.no_grad():
        model.cls.predictions.transform.LayerNorm.weight.zero_()
        model.cls.predictions.transform.LayerNorm.bias.zero_()
        model.cls.predictions.decoder.bias.copy_(bias)
    model.save_pretrained(str(tmp_path))
    tokenizer.save_pretrained(str(tmp_path))
    results = run_fill_mask(
        config_mod.resolve(FillMaskConfig, None, {"model": str(tmp_path), "text": "the king [MASK] here", "top_k": 3})
    )
    expected = bias.softmax(-1)
    assert [token for token, _ in results[0][:2]] == [first, second]
    assert [p for _, p in results[0]] == pytest.approx(
        [float(expected[top]), float(expected[runner_up]), float(expected.min())], rel=1e-5
    )
    with pytest.raises(LmforgeError, match=r"must contain the mask token '\[MASK\]'"):
        run_fill_mask(config_mod.resolve(FillMaskConfig, None, {"model": str(tmp_path), "text": "no mask"}))


def test_fill_mask_encodes_the_text_line_by_line_as_training_did(small_text, tmp_path):
    tokenizer = trained_tokenizer(small_text, "unigram", "mlm")
    model = model_mod.load(model_folder(tmp_path, tokenizer, "bert", "mlm"), AutoModelForMaskedLM).eval()
    text = "First Citizen:\nBefore we [MASK] any further"
    ids = [tokenizer.cls_token_id] + tokenizer_mod.encode_text(tokenizer, text) + [tokenizer.sep_token_id]
    position = ids.index(tokenizer.mask_token_id)
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids])).logits[0, position].softmax(-1).topk(3).values
    results = fill_mask(model, tokenizer, text, top_k=3)
    assert [p for _, p in results[0]] == pytest.approx(expected.tolist(), rel=1e-5)


def test_generate_and_evaluate_take_a_run_folder(char_llama, small_text, tmp_path, capsys):
    """`--model runs/NAME` works wherever `runs/NAME/final` does (generate said "train a tokenizer")."""
    from lmforge.evaluate import EvaluateConfig
    from lmforge.evaluate import run as evaluate

    run_dir = char_llama.parent
    run_generate(
        config_mod.resolve(GenerateConfig, None, {"model": str(run_dir), "prompt": "ROMEO:", "max_new_tokens": 4})
    )
    assert "ROMEO:" in capsys.readouterr().out
    evaluate(
        config_mod.resolve(
            EvaluateConfig, None, {"model": str(run_dir), "data": [str(small_text)], "out": str(tmp_path / "eval")}
        )
    )
    assert (tmp_path / "eval" / "report.json").is_file()


@pytest.mark.parametrize(
    "flag, value, wanted",
    [
        ("temperature", -1.0, "0 (greedy) or more"),
        ("top_p", 1.5, "in (0, 1]"),
        ("top_p", 0.0, "in (0, 1]"),
        ("samples", 0, "at least 1"),
        ("max_new_tokens", 0, "at least 1"),
        ("top_k", 0, "at least 1"),
    ],
)
def test_meaningless_sampling_settings_are_one_line_errors(char_llama, flag, value, wanted):
    with pytest.raises(LmforgeError, match=rf"--{flag} {value}: must be {re.escape(wanted)}"):
        run_generate(config_mod.resolve(GenerateConfig, None, {"model": str(char_llama), flag: value}))


def test_evaluate_context_beyond_the_models_positions_is_an_error(char_llama, small_text, tmp_path):
    from lmforge.evaluate import EvaluateConfig
    from lmforge.evaluate import run as evaluate

    out = tmp_path / "eval"
    with pytest.raises(
        LmforgeError, match=r"--context 4096: .* was built for at most 32 positions; give --context 32 or less"
    ):
        evaluate(
            config_mod.resolve(
                EvaluateConfig,
                None,
                {"model": str(char_llama), "data": [str(small_text)], "out": str(out), "context": 4096},
            )
        )
    assert not out.exists()  # checked before the run folder is started
