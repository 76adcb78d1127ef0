import json

import numpy as np

from lmforge import config as config_mod
from lmforge import shards
from lmforge import tokenizer as tokenizer_mod
from lmforge.documents import ReadConfig, SplitConfig


def test_shards_stage_writes_uint16_tokens_with_boundaries(small_text, char_tokenizer, tmp_path):
    out = tmp_path / "shards"
    shards.run(
        config_mod.resolve(
            shards.ShardsConfig, None, {"data": [str(small_text)], "out": str(out), "tokenizer": str(char_tokenizer)}
        )
    )
    data = shards.TokenShards.open(out)
    tok = tokenizer_mod.load(char_tokenizer)
    assert data.train.dtype == np.uint16
    text = small_text.read_text()
    decoded = tok.decode(np.concatenate([data.train, data.valid]).tolist())
    assert decoded.replace("<|endoftext|>", "") == text
    assert data.train[-1] == data.meta["boundary_token_id"] == tok.eos_token_id
    assert data.meta["splits"]["valid"]["tokens"] == len(data.valid)
    assert 0.08 < len(data.valid) / (len(data.train) + len(data.valid)) < 0.12
    assert data.meta["tokens_per_second"] > 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["stage"] == "shards" and manifest["inputs"][0]["sha256"]


def test_shards_are_cached_by_content(small_text, char_tokenizer, tmp_path):
    from lmforge import documents

    sources = documents.resolve_sources([small_text])
    first = shards.cached(sources, char_tokenizer, SplitConfig(), ReadConfig())
    stamp = (first / "train.bin").stat().st_mtime_ns
    assert shards.cached(sources, char_tokenizer, SplitConfig(), ReadConfig()) == first
    assert (first / "train.bin").stat().st_mtime_ns == stamp
    changed = tmp_path / "changed.txt"
    changed.write_text(small_text.read_text() + "one more line\n")
    assert shards.cached(documents.resolve_sources([changed]), char_tokenizer, SplitConfig(), ReadConfig()) != first


def test_large_vocab_uses_uint32(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(70_000)}
    vocab.update({"<|endoftext|>": 70_000, "<unk>": 70_001})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok_dir = tmp_path / "tok"
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", unk_token="<unk>").save_pretrained(
        str(tok_dir)
    )
    text = tmp_path / "t.txt"
    text.write_text("w1 w69999 w5\n" * 20)
    from lmforge import documents

    meta = shards.build(
        documents.resolve_sources([text]), tok_dir, SplitConfig(valid_fraction=0.0), ReadConfig(), tmp_path / "out"
    )
    data = shards.TokenShards.open(tmp_path / "out")
    assert meta["dtype"] == "uint32" and data.train[1] == 69999
