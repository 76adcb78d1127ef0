"""Shared fixtures and helpers: an offline environment, a session-wide cache, small texts, tiny configs and models,
and short calls of the stages on them."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BUILTIN_TEXT = Path(__file__).resolve().parents[1] / "src" / "lmforge" / "data" / "tinyshakespeare.txt"


@pytest.fixture(autouse=True, scope="session")
def lmforge_cache(tmp_path_factory):
    """One cache for the session: tokenizers and shards built by one test are reused by the next."""
    path = tmp_path_factory.mktemp("lmforge-cache")
    os.environ["LMFORGE_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def small_text(tmp_path_factory) -> Path:
    """The first ~60 kB of tinyshakespeare (whole lines)."""
    text = BUILTIN_TEXT.read_text(encoding="utf-8")[:60_000]
    path = tmp_path_factory.mktemp("text") / "shakespeare_small.txt"
    path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")
    return path


def tiny_bert_config(vocab_size: int, **extra):
    """A 2-layer, width-32 BertConfig: seconds to train on 2 cores."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, **extra
    )


def save_tiny_encoder(folder: Path, **extra) -> Path:
    """A random tiny BertModel with MiniLM's WordPiece tokenizer saved in `folder`: a real fine-tuning start."""
    import torch
    from transformers import AutoTokenizer, BertModel

    from lmforge.tasks.backbone import minilm_folder

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    torch.manual_seed(0)
    BertModel(tiny_bert_config(tokenizer.vocab_size, **extra)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, width-32 random BERT with MiniLM's WordPiece tokenizer."""
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), max_position_embeddings=128)


def tiny_overrides(text: Path, out: Path, **extra) -> dict:
    """A 2-layer, width-64 char-level Llama run: a few seconds on 2 cores."""
    overrides = {
        "data": [str(text)],
        "out": str(out),
        "tokenizer.kind": "char",
        "model.preset": "tiny",
        "model.context": 32,
        "train.batch_size": 8,
        "train.max_steps": 12,
        "train.warmup_steps": 2,
        "train.lr": 3e-3,
        "train.eval_every": 6,
        "train.eval_windows": 16,
        "train.log_every": 1,
        "train.save_every": 6,
        "train.precision": "fp32",
    }
    overrides.update(extra)
    return overrides


def argv_of(overrides: dict) -> list[str]:
    """Overrides as command-line flags: `--key value`, a list's items one word each, booleans as true/false."""
    argv = []
    for key, value in overrides.items():
        values = value if isinstance(value, list) else [str(value).lower() if isinstance(value, bool) else value]
        argv += [f"--{key}", *map(str, values)]
    return argv


def tiny_pretrain(text: Path, out: Path, **extra):
    """The pretrain stage, in this process, on tiny_overrides(text, out, **extra); returns its summary."""
    from lmforge import config
    from lmforge.pretrain import PretrainConfig, run

    return run(config.resolve(PretrainConfig, None, tiny_overrides(text, out, **extra)))


@pytest.fixture(scope="module")
def char_tokenizer(small_text, tmp_path_factory) -> Path:
    """A char-level tokenizer trained on small_text by the tokenizer stage."""
    from lmforge import config
    from lmforge import tokenizer as tokenizer_mod

    out = tmp_path_factory.mktemp("tok")
    overrides = {"data": [str(small_text)], "out": str(out), "tokenizer.kind": "char"}
    tokenizer_mod.run(config.resolve(tokenizer_mod.TokenizerStageConfig, None, overrides))
    return out


def finetune_files(model, train, valid, task: str | None = None) -> list[str]:
    """The flags naming a fine-tuning run's model and data, and its --task where one is given."""
    task_flags = ["--task", task] if task else []
    return [*task_flags, "--model", str(model), "--train_file", str(train), "--valid_file", str(valid)]


def evaluate_task(task: str, model, data, out, *flags: str) -> int:
    """`lmforge evaluate --task TASK --model MODEL --data DATA --out OUT FLAGS...`: its exit code."""
    from lmforge import cli

    return cli.main(["evaluate", "--task", task, "--model", str(model), "--data", str(data), "--out", str(out), *flags])


def sentiment_rows(n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    nouns = ["film", "plot", "cast", "story", "ending", "music"]
    rows = []
    for _ in range(n):
        label = rng.randint(0, 1)
        word = rng.choice(["great", "wonderful", "superb"] if label else ["awful", "boring", "terrible"])
        rows.append((f"the {rng.choice(nouns)} was {word} and the {rng.choice(nouns)} too", label))
    return rows


@pytest.fixture(scope="session")
def sentiment(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("sentiment")
    paths = []
    for name, n, seed in (("train.tsv", 256, 0), ("dev.tsv", 40, 1)):
        path = folder / name
        path.write_text(
            "sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in sentiment_rows(n, seed)), encoding="utf-8"
        )
        paths.append(path)
    return paths[0], paths[1]


def tiny_llama(vocab: int = 40, dropout: float = 0.0):
    """A 2-layer, width-64 random Llama with 32 positions (seed 0)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    size = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=32, attention_dropout=dropout, **size)
    return LlamaForCausalLM(config)


CONLL_SENTENCES = [
    ("John lives in Paris", "B-PER O O B-LOC"),
    ("Mary visited London", "B-PER O B-LOC"),
    ("Peter Smith works in Berlin", "B-PER I-PER O O B-LOC"),
    ("Anna moved to Rome", "B-PER O O B-LOC"),
]


@pytest.fixture(scope="session")
def conll(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ner") / "ner.txt"
    lines = ["-DOCSTART- -X- -X- O", ""]
    for words, tags in CONLL_SENTENCES * 4:
        lines += [f"{w} NNP O {t}" for w, t in zip(words.split(), tags.split())] + [""]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="session")
def squad(tmp_path_factory) -> Path:
    contexts = [
        ("Paris is the capital of France.", "What is the capital of France?", "Paris"),
        ("The Nile flows through Egypt.", "Which river flows through Egypt?", "Nile"),
        ("Mozart was born in Salzburg.", "Where was Mozart born?", "Salzburg"),
    ]
    paragraphs = [
        {"context": c, "qas": [{"id": f"q{i}", "question": q, "answers": [{"text": a, "answer_start": c.index(a)}]}]}
        for i, (c, q, a) in enumerate(contexts)
    ]
    path = tmp_path_factory.mktemp("qa") / "squad.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}))
    return path


def tiny_finetune(model, train, valid, out: Path, task: str, *flags: str) -> Path:
    """A few steps of `lmforge finetune` on a tiny model: a run folder with a head to export or serve."""
    from lmforge import cli

    argv = ["finetune", *finetune_files(model, train, valid, task), "--out", str(out), "--train.precision", "fp32"]
    assert cli.main([*argv, "--train.lr", "3e-3", "--train.batch_size", "16", *flags]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_classifier(tiny_bert, sentiment, tmp_path_factory) -> Path:
    train, dev = sentiment
    return tiny_finetune(tiny_bert, train, dev, tmp_path_factory.mktemp("classifier") / "run", "classification", "--epochs", "2")  # fmt: skip


@pytest.fixture(scope="session")
def tiny_tagger(tiny_bert, conll, tmp_path_factory) -> Path:
    return tiny_finetune(tiny_bert, conll, conll, tmp_path_factory.mktemp("tagger") / "run", "ner", "--epochs", "3")


@pytest.fixture(scope="session")
def tiny_reader(tiny_bert, squad, tmp_path_factory) -> Path:
    flags = ["--epochs", "2", "--format.max_length", "64", "--format.doc_stride", "16"]
    return tiny_finetune(tiny_bert, squad, squad, tmp_path_factory.mktemp("reader") / "run", "qa", *flags)


@pytest.fixture(scope="session")
def tiny_masked_lm(tmp_path_factory) -> Path:
    """A random tiny BertForMaskedLM with MiniLM's tokenizer (a fill-mask model)."""
    import torch
    from transformers import AutoTokenizer, BertForMaskedLM

    from lmforge.tasks.backbone import minilm_folder

    folder = tmp_path_factory.mktemp("masked-lm")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    torch.manual_seed(0)
    BertForMaskedLM(tiny_bert_config(tokenizer.vocab_size, max_position_embeddings=128)).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
