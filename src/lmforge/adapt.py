"""`lmforge adapt`: continued pretraining of a pretrained model on domain text ("Don't Stop
Pretraining", Gururangan et al. 2020), scored before and after on held-out domain text and,
optionally, on general text, so that both the gain and any forgetting show.

The run folder:

    OUT/base/       the starting model with its pretraining head (added when it was saved without
                    one) and its tokenizer (extended with `--tokenizer.extend N`): an HF folder
    OUT/task_text/  the text of fine-tuning files given as --data (task-adaptive pretraining)
    OUT/head/       for a model saved without its head: the run that trains the new head alone
    OUT/train/      the pretraining run that adapts base/ (or head/final/) in the shared loop
    OUT/final/      the adapted model: loads with AutoModelForMaskedLM (or CausalLM) and task classes
    OUT/before.json scores of the starting model, written once: a resumed run compares with the same numbers
    OUT/report.json, report.html
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import html
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from lmforge import checkpoint, documents, hardware, publish, report
from lmforge import evaluate as evaluate_mod
from lmforge import model as model_mod
from lmforge import pretrain as pretrain_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.config import option
from lmforge.documents import ReadConfig, SplitConfig, check_split, text_split
from lmforge.errors import LmforgeError
from lmforge.metrics_log import MetricsLog
from lmforge.runfolder import RunFolder, has_ended
from lmforge.tasks import data as task_data

HEADLESS_NOTE = (
    "the saved model has no pretraining head, so the 'before' scores are those of a newly initialised head "
    "(chance level): they say nothing about how well the model fits the domain (--head_steps N fits the head first)"
)
FITTED_NOTE = (
    "the saved model has no pretraining head: a new one was trained alone (body frozen) for {steps} steps on the "
    "domain train split, and 'before' scores the pretrained body with that head"
)


def head_note(base: dict, head_steps: int) -> str | None:
    """What the 'before' scores of a model saved without its head measure (None: it had one)."""
    if not base.get("head_initialised"):
        return None
    return FITTED_NOTE.format(steps=head_steps) if head_steps else HEADLESS_NOTE


# Fine-tuning files whose text becomes adaptation text (task-adaptive pretraining).
TABLE_SUFFIXES = (".csv", ".tsv")
SQUAD_SUFFIXES = (".json",)


@dataclass
class VocabularyConfig:
    extend: int = option(
        0,
        "add the N most frequent domain words that the tokenizer cuts into >= min_pieces pieces as new tokens; "
        "each new embedding starts as the mean of its old pieces, old ids and vectors stay as they were",
    )
    min_pieces: int = option(3, "a word is a candidate for --tokenizer.extend when it takes this many pieces or more")
    min_count: int = option(5, "a candidate word must occur this often in the train split")


def adapt_train() -> pretrain_mod.PretrainTrainConfig:
    """Adaptation defaults, not those of pretraining from scratch: a 10x lower peak LR, a short
    warm-up, decay over the budget, BERT's weight decay (0.01) and beta2 (0.98)."""
    return pretrain_mod.PretrainTrainConfig(
        lr=1e-4,
        min_lr=1e-5,
        warmup_steps=1_000,  # capped at 6% of the budget
        warmup_fraction=0.06,
        weight_decay=0.01,
        beta2=0.98,
        max_minutes=20.0,
        batch_size=32,
        eval_every=200,
        eval_windows=256,
    )


@dataclass
class AdaptConfig:
    model: str = option("minilm", "pretrained model: minilm (the packaged MiniLM-L6), an HF folder, or a run folder")
    data: list[str] = option(
        [],
        "domain text: files, folders, globs, a corpus/ folder; fine-tuning files (.csv/.tsv tables, CoNLL, SQuAD "
        ".json, JSONL with a text field) give their text columns (task-adaptive pretraining)",
    )
    out: str = option("runs/adapt", "run folder (base/, train/, final/, report.json, report.html)")
    resume: bool = option(False, "continue the adaptation in --out from its newest checkpoint")
    eval_general: Optional[str] = option(
        None, "general text (e.g. WikiText-2) scored before and after, so that forgetting shows"
    )
    eval_tokens: int = option(50_000, "tokens of held-out domain text (and of --eval_general) scored before and after")
    pseudo_perplexity_tokens: int = option(
        2_000, "masked LMs: tokens whose pseudo-perplexity is scored before and after (each one forward row; 0: skip)"
    )
    context: int = option(128, "training window in tokens (at most the model's position table)")
    head_steps: int = option(
        200,
        "a model saved without its pretraining head first trains the new head alone (body frozen) for this many steps "
        "on the domain train split, so 'before' scores the pretrained body with a fitted head (0: score the new head)",
    )
    tokenizer: VocabularyConfig = field(default_factory=VocabularyConfig)
    format: task_data.FormatConfig = field(default_factory=task_data.FormatConfig)
    split: SplitConfig = field(default_factory=text_split)
    read: ReadConfig = field(default_factory=ReadConfig)
    train: pretrain_mod.PretrainTrainConfig = field(default_factory=adapt_train)
    report: report.ReportConfig = field(default_factory=report.ReportConfig)


# --- task-adaptive text ------------------------------------------------------------------------


def task_file_kind(path: Path) -> str | None:
    """'table', 'squad' or 'conll' for a fine-tuning file given as --data, None for plain text."""
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        return "table"
    if suffix in SQUAD_SUFFIXES:
        return "squad"
    if suffix in (".conll", ".iob", ".bio") or (suffix == ".txt" and task_data.looks_like_conll(path)):
        return "conll"
    return None


def task_texts(path: Path, kind: str, cfg: task_data.FormatConfig) -> list[str]:
    """The texts of a fine-tuning file: a table's text columns, a CoNLL file's sentences, SQuAD's
    contexts (once each) and questions. Labels are not read."""
    if kind == "table":
        return [t for r in task_data.read_table(path, cfg, "data", labelled=False) for t in (r.text, r.text_pair) if t]
    if kind == "conll":
        return [" ".join(s.words) for s in task_data.read_conll(path, cfg, "data", labelled=False)]
    questions = task_data.read_squad(path, "data", labelled=False)
    return list(dict.fromkeys(q.context for q in questions)) + [q.question for q in questions]


def split_task_files(config: AdaptConfig, out: Path) -> list[str]:
    """--data with every fine-tuning file replaced by a JSONL file of its texts under OUT/task_text/
    (one document each, so the split hashes each text: a train sentence never lands in valid twice)."""
    given = []
    for entry in config.data:
        path = Path(entry)
        kind = task_file_kind(path) if path.is_file() else None
        if kind is None:
            given.append(entry)
            continue
        texts = task_texts(path, kind, config.format)
        if not texts:
            raise LmforgeError(f"{path}: no text in this {kind} file; give a file with examples in it")
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
        target = out / "task_text" / f"{path.stem}-{digest}.jsonl"
        body = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
        if not target.is_file() or target.read_text(encoding="utf-8") != body:
            publish.write_text_atomic(target, body)
        print(f"task-adaptive text: {len(texts):,} texts of {path} ({kind}) -> {target}", flush=True)
        given.append(str(target))
    return given


# --- the starting model: pretraining head and vocabulary ---------------------------------------


def words_of(tokenizer, text: str) -> list[str]:
    """The words the tokenizer's own normaliser and pre-tokenizer see in `text`."""
    backend = tokenizer.backend_tokenizer
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is None:
        return text.split()
    return [word for word, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


def fertility(tokenizer, blocks, max_words: int = 200_000) -> float | None:
    """Pieces per word of the tokenizer on `blocks` (at most `max_words` words)."""
    words = pieces = 0
    for block, _ in blocks:
        for line in block.splitlines():
            line_words = words_of(tokenizer, line)
            if not line_words:
                continue
            words += len(line_words)
            pieces += len(tokenizer_mod.encode_text(tokenizer, line))
            if words >= max_words:
                return pieces / words
    return pieces / words if words else None


def extension_words(tokenizer, blocks, cfg: VocabularyConfig, max_chars: int = 50_000_000) -> list[str]:
    """The `cfg.extend` most frequent words of `blocks` that the tokenizer cuts into at least
    `cfg.min_pieces` pieces (words with a letter only; ties by first appearance)."""
    counts: collections.Counter[str] = collections.Counter()
    seen = 0
    for block, _ in blocks:
        counts.update(w for w in words_of(tokenizer, block) if any(c.isalpha() for c in w))
        seen += len(block)
        if seen >= max_chars:
            break
    vocab = tokenizer.get_vocab()
    frequent = [w for w, n in counts.most_common() if n >= cfg.min_count and w not in vocab]
    backend = tokenizer.backend_tokenizer
    chosen = []
    for start in range(0, len(frequent), 1000):
        batch = frequent[start : start + 1000]
        for word, encoding in zip(batch, backend.encode_batch(batch, add_special_tokens=False)):
            if len(encoding.ids) >= cfg.min_pieces:
                chosen.append(word)
                if len(chosen) == cfg.extend:
                    return chosen
    return chosen


def extend_vocabulary(model, tokenizer, words: list[str]) -> None:
    """Add `words` as tokens; each new input row (and output bias) is the mean of its old pieces'.
    Old ids and rows are unchanged."""
    from tokenizers import AddedToken

    pieces = [tokenizer.backend_tokenizer.encode(w, add_special_tokens=False).ids for w in words]
    old = len(tokenizer)
    tokenizer.add_tokens([AddedToken(w, single_word=True, normalized=True) for w in words])
    model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    embeddings = model.get_input_embeddings().weight
    bias = getattr(getattr(model.get_output_embeddings(), "bias", None), "data", None)
    with torch.no_grad():
        for offset, ids in enumerate(pieces):
            embeddings[old + offset] = embeddings[ids].mean(0)
            if bias is not None and bias.numel() > old + offset:
                bias[old + offset] = bias[ids].mean()


def head_report(model, missing: list[str]) -> list[str]:
    """What was initialised rather than loaded, in words for the log and the report."""
    lines = []
    if missing:
        lines.append(f"initialised (not in the saved model): {', '.join(sorted(missing))}")
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight.data_ptr() == inputs.weight.data_ptr():
        lines.append("the output projection is tied to the input embeddings")
    return lines


def prepare_base(config: AdaptConfig, source: Path, objective: str, sources, out: Path) -> dict:
    """Write OUT/base/ once: the model with its pretraining head and its (extended) tokenizer.
    Returns what it did, for the report (read back from base/adapt_base.json on resume)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    base = out / "base"
    record = base / "adapt_base.json"
    if record.is_file():
        return json.loads(record.read_text())
    hf_logging.set_verbosity_error()  # the missing head is reported below, in our words
    hf_logging.disable_progress_bar()
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    torch.manual_seed(config.train.seed)
    model, info = auto.from_pretrained(str(source), use_safetensors=True, output_loading_info=True)
    tokenizer = tokenizer_mod.load(source)
    head_missing = [k for k in info["missing_keys"] if not k.startswith(model.base_model_prefix)]
    facts = {
        "source": str(source),
        "objective": objective,
        "initialised": head_report(model, info["missing_keys"]),
        "head_initialised": bool(head_missing),
    }
    if config.tokenizer.extend:
        train_blocks = lambda: documents.iter_split(sources, "train", config.split, config.read)  # noqa: E731
        held_out = lambda: documents.iter_split(sources, "valid", config.split, config.read)  # noqa: E731
        before = fertility(tokenizer, held_out())
        words = extension_words(tokenizer, train_blocks(), config.tokenizer)
        extend_vocabulary(model, tokenizer, words)
        facts["vocabulary"] = {
            "added": len(words),
            "examples": words[:20],
            "vocab_size": len(tokenizer),
            "fertility_before": before,
            "fertility_after": fertility(tokenizer, held_out()),
        }
    with publish.publish_folder(base) as tmp:
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        publish.write_json_atomic(tmp / "adapt_base.json", facts)
    return facts


# --- scores before and after -------------------------------------------------------------------


def scores(model_dir: Path, objective: str, texts: dict[str, evaluate_mod.ScoredText], config: AdaptConfig) -> dict:
    """The evaluate stage's metrics of `model_dir` on each named text (same masks every time)."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    model = model_mod.load(model_dir, auto).eval()
    tokenizer = tokenizer_mod.load(model_dir)
    settings = evaluate_mod.EvaluateConfig(pseudo_perplexity_tokens=config.pseudo_perplexity_tokens)
    device = hardware.resolve_device(config.train.device)
    model.to(device)
    return {
        name: evaluate_mod.score(model, tokenizer, text, objective, config.context, settings, device)
        for name, text in texts.items()
    }


def scored_texts(config: AdaptConfig, tokenizer, sources) -> dict[str, evaluate_mod.ScoredText]:
    texts = {
        "domain (valid)": evaluate_mod.read_tokens(
            documents.iter_split(sources, "valid", config.split, config.read), tokenizer, config.eval_tokens
        )
    }
    if config.eval_general:
        general = documents.resolve_sources([config.eval_general])
        texts["general"] = evaluate_mod.read_tokens(
            evaluate_mod.whole_documents(general, config.read), tokenizer, config.eval_tokens
        )
    for name, text in texts.items():
        if len(text.tokens) < config.context:
            raise LmforgeError(
                f"the {name} text has {len(text.tokens)} tokens, fewer than one window of {config.context}; "
                "give more text, raise --split.valid_fraction, or lower --context"
            )
    return texts


# --- the stage ---------------------------------------------------------------------------------


def check(config: AdaptConfig) -> tuple[Path, str]:
    """Cheap checks before any text is read; returns (model folder, objective)."""
    if not config.data:
        raise LmforgeError("--data is required: domain text (files, folders, a corpus/) or fine-tuning files")
    source = model_mod.folder_of(config.model)
    objective = model_mod.objective_of(source)
    config.train.check_ready()
    config.report.check()
    check_split(config.split, "text")
    if config.tokenizer.extend < 0 or config.tokenizer.min_pieces < 2:
        raise LmforgeError("--tokenizer.extend must be >= 0 and --tokenizer.min_pieces >= 2")
    if config.tokenizer.extend and objective == "clm":
        raise LmforgeError("--tokenizer.extend is for masked LMs (WordPiece); drop it for this causal LM")
    positions = model_mod.max_positions(_config(source))
    if positions and config.context > positions:
        raise LmforgeError(f"--context {config.context}: {source} has {positions} positions; give at most that")
    if config.eval_general and not Path(config.eval_general).exists():
        raise LmforgeError(f"--eval_general {config.eval_general}: no such file or folder")
    return source, objective


def _config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(folder))


def training_config(
    config: AdaptConfig, data: list[str], start: Path, run: Path, train: pretrain_mod.PretrainTrainConfig
) -> pretrain_mod.PretrainConfig:
    """The pretraining run in `run` that continues from the model folder `start`."""
    return pretrain_mod.PretrainConfig(
        data=data,
        out=str(run),
        resume=config.resume and checkpoint.latest(run) is not None,  # killed before its first one: start it again
        tokenizer=tokenizer_mod.TokenizerConfig(path=str(start)),
        split=config.split,
        read=config.read,
        model=model_mod.ModelConfig(init_from=str(start), context=config.context),
        train=train,
        report=config.report,
    )


def head_fit(config: AdaptConfig, objective: str) -> pretrain_mod.PretrainTrainConfig:
    """Fitting a new head alone: head-mode fine-tuning's LR, `head_steps` steps, nothing else of the budget."""
    return dataclasses.replace(
        config.train,
        objective=objective,
        trainable="head",
        lr=1e-3,
        min_lr=1e-4,
        max_steps=config.head_steps,
        max_minutes=None,
        max_tokens=None,
        max_flops=None,
        stop_at_step=None,
    )


def run(config: AdaptConfig) -> Path:
    """`lmforge adapt`: continue pretraining `config.model` on `config.data`; returns the run folder."""
    started = time.time()
    out = Path(config.out)
    source, objective = check(config)
    if config.resume and has_ended(out):
        raise LmforgeError(
            f"{out}: this adaptation already finished; nothing to resume. Raise the budget with a new --out, "
            f"or adapt further from it: --model {out}"
        )
    if not config.resume and (out / "train").exists():
        raise LmforgeError(
            f"{out} already holds an adaptation; pass --resume true to continue it, or choose a new --out"
        )
    plain = [e for e in config.data if not (Path(e).is_file() and task_file_kind(Path(e)))]
    if plain:
        documents.resolve_sources(plain)  # a missing or unreadable input fails before the run folder is made
    folder = RunFolder(out, "adapt").start(config, [source])
    data = split_task_files(config, out)
    sources = documents.resolve_sources(data)
    kind = "masked LM" if objective == "mlm" else "causal LM"
    print(f"adapting {source} ({kind}) on {', '.join(config.data)}", flush=True)
    base = prepare_base(config, source, objective, sources, out)
    for line in base["initialised"]:
        print(line, flush=True)
    if note := head_note(base, config.head_steps):
        print(f"note: {note}", flush=True)
    if "vocabulary" in base:
        vocab = base["vocabulary"]
        print(
            f"vocabulary: +{vocab['added']} words (e.g. {', '.join(vocab['examples'][:5])}); fertility on valid "
            f"{vocab['fertility_before']:.3f} -> {vocab['fertility_after']:.3f} pieces/word",
            flush=True,
        )
    tokenizer = tokenizer_mod.load(out / "base")
    texts = scored_texts(config, tokenizer, sources)
    start = out / "base"
    if base.get("head_initialised") and config.head_steps:
        fitted = out / "head"
        if not has_ended(fitted):
            print(f"fitting the new head alone (body frozen) for {config.head_steps} steps ...", flush=True)
            pretrain_mod.run(training_config(config, data, start, fitted, head_fit(config, objective)))
        if not (fitted / "final" / "config.json").is_file():
            return out  # stopped: resumable
        start = fitted / "final"
    before_path = out / "before.json"
    if before_path.is_file():
        before = json.loads(before_path.read_text())
    else:
        print("scoring the starting model on held-out text ...", flush=True)
        before = scores(start, objective, texts, config)
        publish.write_json_atomic(before_path, before)
    trained = out / "train"
    if not has_ended(trained):
        train = dataclasses.replace(config.train, objective=objective)
        pretrain_mod.run(training_config(config, data, start, trained, train))
    if not (trained / "final" / "config.json").is_file():
        return out  # stopped by Ctrl-C or stop_at_step: resumable, reports come at the end
    publish.copy_folder(trained / "final", out / "final")
    print("scoring the adapted model ...", flush=True)
    after = scores(out / "final", objective, texts, config)
    training = json.loads((trained / "report.json").read_text())
    head_seconds = (
        json.loads((out / "head" / "report.json").read_text())["training_seconds"] if start != out / "base" else 0
    )
    summary = {
        "model": str(source),
        "objective": objective,
        "data": config.data,
        "base": base,
        "head_note": head_note(base, config.head_steps),
        "before": before,
        "after": after,
        "scored_tokens": {name: len(text.tokens) for name, text in texts.items()},
        "training": {
            k: training.get(k)
            for k in ("steps", "tokens", "training_seconds", "tokens_per_second", "val_loss", "stopped_by")
        },
        "head_fit": {"steps": config.head_steps, "minutes": round(head_seconds / 60, 2)} if head_seconds else None,
        "train_minutes": round((training["training_seconds"] + head_seconds) / 60, 2),  # head fit included
        "wall_seconds": round(time.time() - started, 2),
        "peak_rss_mb": round(hardware.peak_rss_mb(), 1),
    }
    html = write_report(out, summary)
    publish.write_json_atomic(out / "report.json", summary)
    folder.finish(report=str(out / "report.json"))
    print(result_line(summary, objective) + f"; model in {out / 'final'}; report {html}", flush=True)
    return out


def headline(metrics: dict, objective: str) -> tuple[str, float, bool]:
    """(name, value, higher is better) of the one number that says how well a text is modelled."""
    if objective == "clm":
        return "perplexity", metrics["perplexity"], False
    if "pseudo_perplexity" in metrics:
        return "pseudo-perplexity", metrics["pseudo_perplexity"], False
    return "masked-token accuracy", metrics["masked_accuracy"], True


def result_line(summary: dict, objective: str) -> str:
    parts = []
    for name in summary["after"]:
        label, before, _ = headline(summary["before"][name], objective)
        _, after, _ = headline(summary["after"][name], objective)
        parts.append(f"{name} {label} {before:.3f} -> {after:.3f}")
    return "done: " + "; ".join(parts)


def starting_model_html(summary: dict) -> str:
    base = summary["base"]
    lines = [html.escape(line) for line in base["initialised"]] or ["every weight loaded from the saved model"]
    if summary.get("head_note"):
        lines.append(f"<b>Note:</b> {html.escape(summary['head_note'])}")
    return "<br>".join(lines)


def write_report(out: Path, summary: dict) -> Path:
    objective = summary["objective"]
    keys = ("perplexity", "loss") if objective == "clm" else ("masked_accuracy", "masked_loss", "pseudo_perplexity")
    table = {
        f"{name}: {when}": {k: summary[when][name].get(k) for k in keys if k in summary[when][name]}
        for name in summary["after"]
        for when in ("before", "after")
    }
    label, before, higher = headline(summary["before"]["domain (valid)"], objective)
    _, after, _ = headline(summary["after"]["domain (valid)"], objective)
    better = (after > before) == higher
    chance = summary["base"].get("head_initialised") and not summary.get("head_fit")
    verdict = "before: a new head" if chance else ("better" if better else "not better")
    lead = report.Lead(
        f"Domain adaptation of {report.shown_path(summary['model'])} ({'masked' if objective == 'mlm' else 'causal'} LM)",
        f"domain {label} {before:.3f} -> {after:.3f} ({verdict})",
        f"held-out domain text (the valid split, {summary['scored_tokens']['domain (valid)']:,} tokens), "
        "not used for training or for picking the checkpoint",
        {"data": ", ".join(summary["data"]), "training": f"{summary['train_minutes']} min"},
    )
    vocabulary = summary["base"].get("vocabulary")
    sections = [
        ("Before and after", report.grid_html(table)),
        ("Training curves", report.curves_svg(MetricsLog(out / "train").rows())),
        ("Starting model", starting_model_html(summary)),
    ]
    if vocabulary:
        sections.append(("Vocabulary extension", report.table_html(vocabulary)))
    sections.append(("Run facts", report.facts_html(summary["training"] | {"wall_seconds": summary["wall_seconds"]})))
    return report.write_html(out / "report.html", f"lmforge adapt: {out.name}", sections, lead)
