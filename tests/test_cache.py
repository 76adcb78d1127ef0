"""The cache: entries named by the hash of their inputs (the same names as before manifest.json, so
existing caches stay valid), a manifest.json in each, reuse for the same inputs, nothing half-made."""

import hashlib
import json
import os
import time

import pytest

from lmforge import __version__, cache, documents, shards
from lmforge import tokenizer as tokenizer_mod
from lmforge.documents import ReadConfig, SplitConfig
from lmforge.tokenizer import TokenizerConfig


def test_root_is_lmforge_cache_or_the_home_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    assert cache.root() == tmp_path
    monkeypatch.delenv("LMFORGE_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.root() == tmp_path / "home" / ".cache" / "lmforge"


def test_keys_are_the_sha256_of_the_inputs_sorted_json(small_text, char_tokenizer):
    """The key formulas, written out: a key that changed by accident would orphan every existing entry."""
    fingerprint = documents.input_fingerprint(documents.resolve_sources([small_text]))
    split, tok_cfg = SplitConfig(), TokenizerConfig(kind="char")
    old_shards = json.dumps(
        {
            "tokenizer": shards.tokenizer_hash(char_tokenizer),
            "split": split.__dict__,
            "read": ReadConfig().__dict__,
            "inputs": fingerprint,
            "encoding": shards.ENCODING_RULES,
        },
        sort_keys=True,
    )
    assert (
        cache.key(shards.cache_inputs(char_tokenizer, split, ReadConfig(), fingerprint))
        == hashlib.sha256(old_shards.encode()).hexdigest()[:16]
    )
    old_tokenizer = json.dumps(
        {
            "tokenizer": tok_cfg.__dict__,
            "split": split.__dict__,
            "read": ReadConfig().__dict__,
            "objective": "clm",
            "inputs": fingerprint,
        },
        sort_keys=True,
    )
    assert (
        cache.key(tokenizer_mod.cache_inputs(tok_cfg, split, ReadConfig(), "clm", fingerprint))
        == hashlib.sha256(old_tokenizer.encode()).hexdigest()[:16]
    )


def test_cached_shards_get_a_manifest_and_the_same_key_reuses_the_folder(
    small_text, char_tokenizer, monkeypatch, tmp_path
):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path / "cache"))
    sources = documents.resolve_sources([small_text])
    folder = shards.cached(sources, char_tokenizer, SplitConfig(), ReadConfig())
    assert folder.parent == tmp_path / "cache" / "shards" and cache.is_complete("shards", folder)
    manifest = json.loads((folder / cache.MANIFEST).read_text())
    assert (
        manifest["kind"] == "shards"
        and manifest["key"] == folder.name
        and manifest["lmforge"] == __version__
        and manifest["created"]
    )
    assert manifest["inputs"] == shards.cache_inputs(
        char_tokenizer, SplitConfig(), ReadConfig(), documents.input_fingerprint(sources)
    )
    stamp = (folder / "manifest.json").stat().st_mtime_ns
    assert shards.cached(sources, char_tokenizer, SplitConfig(), ReadConfig()) == folder
    assert (folder / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temp folder left


def test_a_failed_build_leaves_nothing_a_killed_ones_temp_folder_is_removed_and_a_half_entry_replaced(
    monkeypatch, tmp_path
):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    inputs = {"settings": 1}
    with pytest.raises(RuntimeError), cache.entry("shards", inputs) as tmp:
        (tmp / "train.bin").write_bytes(b"\0")
        raise RuntimeError("tokenizer crashed")
    assert list((tmp_path / "shards").iterdir()) == []
    killed = tmp_path / "shards" / ".tmp-0123456789abcdef-x"  # a build killed an hour ago
    killed.mkdir()
    os.utime(killed, (time.time() - 3600,) * 2)
    cache.folder("shards", inputs).mkdir()  # no meta.json: not a finished entry
    with cache.entry("shards", inputs) as tmp:
        (tmp / "meta.json").write_text("{}")
    assert cache.is_complete("shards", cache.folder("shards", inputs))
    assert (cache.folder("shards", inputs) / "manifest.json").is_file()
    assert [p.name for p in (tmp_path / "shards").iterdir()] == [cache.key(inputs)]


def test_when_two_processes_fill_one_entry_the_first_ones_is_kept(monkeypatch, tmp_path):
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    inputs = {"settings": 2}
    target = cache.folder("tokenizers", inputs)
    with cache.entry("tokenizers", inputs) as tmp:
        (tmp / "tokenizer.json").write_text("ours")
        target.mkdir(parents=True)  # the other process publishes while this one still writes
        (target / "tokenizer.json").write_text("theirs")
    assert (target / "tokenizer.json").read_text() == "theirs"
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
