"""Train a tokenizer for the domain and save it as a Hugging Face fast tokenizer folder.

Kinds: byte-level BPE (GPT-2 style, never emits unknown tokens), WordPiece (BERT style),
Unigram (SentencePiece style, Metaspace) and character level (one token per character seen
in training; unseen characters become the unknown token). The special tokens follow the
objective: causal LM gets `<|endoftext|>` (document boundary, also BOS/EOS) and `<pad>`;
masked LM gets BERT's `[PAD] [UNK] [CLS] [SEP] [MASK]` and a `[CLS] A [SEP]` template.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from tokenizers import Encoding, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge import documents
from lmforge.config import option
from lmforge.documents import ReadConfig, SplitConfig, check_split, text_split
from lmforge.errors import LmforgeError
from lmforge.publish import write_json_atomic
from lmforge.runfolder import RunFolder

Objective = Literal["clm", "mlm"]

SPECIALS: dict[str, dict[str, str]] = {
    "clm": {"eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<pad>"},
    "mlm": {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    },
}


@dataclass
class TokenizerConfig:
    kind: Literal["bpe", "wordpiece", "unigram", "char"] = option(
        "bpe", "tokenizer model: byte-level BPE, WordPiece, Unigram or character level"
    )
    vocab_size: int = option(8192, "target vocabulary size including special tokens (char: upper bound)")
    min_frequency: int = option(2, "a merge or piece must occur this often in the training text")
    lowercase: bool = option(False, "lowercase text before tokenizing (WordPiece uncased style)")
    sample_bytes: int = option(200_000_000, "train on at most this many bytes of the training split")
    path: Optional[str] = option(None, "use this existing tokenizer folder instead of training one")


@dataclass
class TokenizerStageConfig:
    data: list[str] = option([], "input text: files, folders or globs (.txt .md .rst .jsonl, or a corpus/ folder)")
    out: str = option("runs/tokenizer", "output folder: an HF tokenizer folder plus report.json")
    objective: Objective = option(
        "clm", "which special tokens to add: clm (<|endoftext|>) or mlm (BERT's [CLS] [SEP] [MASK] ...)"
    )
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    split: SplitConfig = field(default_factory=text_split)
    read: ReadConfig = field(default_factory=ReadConfig)


def _sample(blocks: Iterable[tuple[str, bool]], limit: int) -> Iterator[list[str]]:
    """Lines in batches, stopping after about `limit` characters (the trainers take batches)."""
    seen = 0
    for block, _ in blocks:
        yield block.splitlines(keepends=True)
        seen += len(block)
        if seen >= limit:
            return


def _char_tokenizer(batches: Iterable[list[str]], cfg: TokenizerConfig, specials: list[str], unk: str) -> Tokenizer:
    counts: Counter[str] = Counter()
    for batch in batches:
        for line in batch:
            counts.update(line.lower() if cfg.lowercase else line)
    room = max(cfg.vocab_size - len(specials), 1)
    chars = sorted(ch for ch, n in counts.most_common(room) if n >= 1)
    vocab = {token: i for i, token in enumerate(specials + [c for c in chars if c not in specials])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    return tok


def _subword_tokenizer(batches: Iterable[list[str]], cfg: TokenizerConfig, specials: list[str], unk: str) -> Tokenizer:
    common = {"vocab_size": cfg.vocab_size, "special_tokens": specials, "show_progress": False}
    if cfg.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            min_frequency=cfg.min_frequency, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), **common
        )
    elif cfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=unk))
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(min_frequency=cfg.min_frequency, **common)
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(unk_token=unk, **common)
    norm = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    tok.normalizer = normalizers.Sequence(norm)
    tok.train_from_iterator(batches, trainer=trainer)
    return tok


def check(cfg: TokenizerConfig, objective: Objective) -> None:
    """Settings a trainer would silently round up are errors before any text is read: byte-level
    BPE starts from 256 byte tokens plus the specials, so `vocab_size 0` built 259 tokens."""
    specials = len(dict.fromkeys(SPECIALS[objective].values()))
    least = 256 + specials + 1 if cfg.kind == "bpe" else specials + 2
    if cfg.vocab_size < least:
        why = (
            f"256 byte tokens + {specials} special tokens + merges"
            if cfg.kind == "bpe"
            else f"{specials} special tokens + text tokens"
        )
        raise LmforgeError(
            f"--tokenizer.vocab_size {cfg.vocab_size}: a {cfg.kind} vocabulary needs at least {least} ({why}); give a larger size, e.g. 8192"
        )
    if cfg.min_frequency < 1:
        raise LmforgeError(f"--tokenizer.min_frequency {cfg.min_frequency}: must be at least 1")
    if cfg.sample_bytes < 1:
        raise LmforgeError(f"--tokenizer.sample_bytes {cfg.sample_bytes}: must be at least 1")


def train(blocks: Iterable[tuple[str, bool]], cfg: TokenizerConfig, objective: Objective):
    """Train on (text, ends_document) blocks; returns a transformers fast tokenizer."""
    from transformers import PreTrainedTokenizerFast

    check(cfg, objective)
    special_map = SPECIALS[objective]
    specials = list(dict.fromkeys(special_map.values()))
    unk = special_map["unk_token"]
    batches = _sample(blocks, cfg.sample_bytes)
    if cfg.kind == "char":
        tok = _char_tokenizer(batches, cfg, specials, unk)
    else:
        tok = _subword_tokenizer(batches, cfg, specials, unk)
    if tok.get_vocab_size() <= len(specials):
        raise LmforgeError(
            "the training text is empty after splitting, so no tokenizer could be trained; give more text"
        )
    if objective == "mlm":
        cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
        )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special_map)
    fast.model_max_length = 1_000_000
    return fast


def encode_lines(tokenizer, text: str) -> list[tuple[str, Encoding]]:
    """The lines of `text` (line ends kept) with their encodings, no special tokens added.

    This is how lmforge turns raw text into tokens everywhere (tokenizer statistics, shards,
    evaluation, generation prompts): line by line, as the tokenizer was trained. Whole-block
    encoding differs for Unigram/Metaspace, which marks the start of every encoded sequence
    (a line) with '▁'. Lines are encoded in one batch, so the tokenizers library runs them in parallel.
    `tokenizer` is a transformers fast tokenizer or a `tokenizers.Tokenizer`.
    """
    lines = text.splitlines(keepends=True)
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    return list(zip(lines, backend.encode_batch(lines, add_special_tokens=False)))


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of `text`, encoded line by line (see `encode_lines`)."""
    return [i for _, encoding in encode_lines(tokenizer, text) for i in encoding.ids]


def statistics(tokenizer, blocks: Iterable[tuple[str, bool]], limit_chars: int = 5_000_000) -> dict:
    """Fertility (tokens per whitespace word) and unknown-token rate on held-out text.

    Tokens are counted as the shards will hold them (`encode_text`), newline tokens included.
    """
    words = tokens = unknown = chars = 0
    unk_id = tokenizer.unk_token_id
    for block, _ in blocks:
        ids = encode_text(tokenizer, block)
        tokens += len(ids)
        if unk_id is not None:
            unknown += ids.count(unk_id)
        words += len(block.split())
        chars += len(block)
        if chars >= limit_chars:
            break
    return {
        "vocab_size": len(tokenizer),
        "heldout_chars": chars,
        "heldout_words": words,
        "heldout_tokens": tokens,
        "fertility": tokens / words if words else None,
        "unk_rate": unknown / tokens if tokens else None,
        "chars_per_token": chars / tokens if tokens else None,
    }


def load(path: str | Path):
    """Load a tokenizer folder, with a clear error when it is not one.

    Padding and truncation saved in tokenizer.json are switched off: MiniLM's pads every encoding
    to 128 tokens and cuts it there, which would fill shards with [PAD] and silently drop text.
    (Calls with explicit `padding=` / `truncation=` arguments set their own.)"""
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file() and not (path / "vocab.txt").is_file():
        raise LmforgeError(
            f"{path}: no tokenizer here (tokenizer.json or vocab.txt); train one with `lmforge tokenizer` or point at a model folder that has one"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        backend.no_padding()
        backend.no_truncation()
    return tokenizer


def cache_inputs(
    cfg: TokenizerConfig, split: SplitConfig, read: ReadConfig, objective: str, fingerprint: list[str]
) -> dict:
    """What a cached tokenizer depends on (`cache.key` hashes it into the entry name)."""
    return {
        "tokenizer": cfg.__dict__,
        "split": split.__dict__,
        "read": read.__dict__,
        "objective": objective,
        "inputs": fingerprint,
    }


def build(
    sources: list[documents.Source],
    cfg: TokenizerConfig,
    split: SplitConfig,
    read: ReadConfig,
    objective: Objective,
    out: Path,
) -> dict:
    """Train on the train split, save into `out`, and return the held-out statistics."""
    stats = documents.DecodeStats()
    started = time.time()
    tokenizer = train(
        documents.iter_split(sources, "train", split, read, stats),
        cfg,
        objective,
    )
    seconds = time.time() - started
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    heldout = documents.iter_split(sources, "valid", split, read, stats)
    report = {
        "kind": cfg.kind,
        "objective": objective,
        "train_seconds": round(seconds, 2),
        **statistics(tokenizer, heldout),
    }
    report["replaced_characters"] = stats.total
    write_json_atomic(out / "report.json", report)
    return report


def run(config: TokenizerStageConfig) -> Path:
    """`lmforge tokenizer`: train and save a tokenizer folder with report.json."""
    check(config.tokenizer, config.objective)
    check_split(config.split, "text")
    sources = documents.resolve_sources(config.data)
    out = Path(config.out)
    folder = RunFolder(out, "tokenizer").start(config, [s.path for s in sources])
    report = build(sources, config.tokenizer, config.split, config.read, config.objective, out)
    folder.finish(report=report)
    fert = report["fertility"]
    unk = report["unk_rate"]
    print(f"tokenizer ({config.tokenizer.kind}, vocab {report['vocab_size']}) saved to {out}")
    print(
        f"held-out: fertility {fert:.3f} tokens/word, unknown-token rate {unk:.4%}"
        if fert is not None and unk is not None
        else "held-out split is empty: no statistics"
    )
    return out
