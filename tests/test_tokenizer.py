import json

import pytest
from transformers import AutoTokenizer

from lmforge import config as config_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.errors import LmforgeError


@pytest.mark.parametrize("kind,objective", [("bpe", "clm"), ("wordpiece", "mlm"), ("unigram", "clm"), ("char", "clm"), ("char", "mlm")])
def test_tokenizer_trains_saves_and_round_trips(small_text, tmp_path, kind, objective):
    out = tmp_path / kind
    cfg = config_mod.resolve(tokenizer_mod.TokenizerStageConfig, None, {
        "data": [str(small_text)], "out": str(out), "objective": objective,
        "tokenizer.kind": kind, "tokenizer.vocab_size": 500, "tokenizer.min_frequency": 1})
    tokenizer_mod.run(cfg)
    tok = AutoTokenizer.from_pretrained(str(out))
    text = "First Citizen:\nBefore we proceed"
    ids = tok(text, add_special_tokens=False).input_ids
    assert len(ids) > 0
    decoded = tok.decode(ids)
    if kind == "wordpiece":  # BERT-style decoding normalises whitespace
        assert "".join(decoded.split()) == "".join(text.split())
    else:
        assert decoded == text
    if objective == "mlm":
        assert tok.mask_token == "[MASK]" and tok.cls_token == "[CLS]"
        assert tok("to be").input_ids[0] == tok.cls_token_id and tok("to be").input_ids[-1] == tok.sep_token_id
    else:
        assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<pad>"
    report = json.loads((out / "report.json").read_text())
    assert report["vocab_size"] == len(tok) <= 500
    assert report["fertility"] > (2.0 if kind == "char" else 1.0)  # words are several characters
    assert 0.0 <= report["unk_rate"] < 0.01


def test_char_tokenizer_counts_unknown_characters(small_text, tmp_path):
    cfg = tokenizer_mod.TokenizerConfig(kind="char")
    from lmforge import documents

    sources = documents.resolve_sources([small_text])
    tok = tokenizer_mod.train(documents.iter_split(sources, "train", 0.1), cfg, "clm")
    stats = tokenizer_mod.statistics(tok, [("abc ☃☃ def", True)])
    assert stats["unk_rate"] == pytest.approx(2 / 10)
    assert stats["fertility"] == pytest.approx(10 / 3)


def test_load_rejects_a_folder_without_tokenizer(tmp_path):
    with pytest.raises(LmforgeError, match="no tokenizer here"):
        tokenizer_mod.load(tmp_path)
