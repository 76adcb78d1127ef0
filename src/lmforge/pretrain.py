"""`lmforge pretrain`: text in, model out.

    --data text  ->  tokenizer (trained, cached)  ->  shards (cached)  ->  loop.fit  ->  final/
                                                                      ->  report.json, report.html

Run folder: config.yaml, manifest.json, metrics.jsonl, checkpoints/step_N/, final/,
report.json, report.html.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch

from lmforge import cache, checkpoint, documents, hardware, objectives, report, shards
from lmforge import model as model_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.config import option
from lmforge.documents import ReadConfig, SplitConfig, check_split, text_split
from lmforge.errors import LmforgeError
from lmforge.loop import LoopState, fit, validation_loss
from lmforge.process import Process
from lmforge.runfolder import RunFolder, check_unchanged_on_resume, has_ended, write_json_atomic
from lmforge.tokenizer import TokenizerConfig
from lmforge.train_config import TrainConfig


@dataclass
class PretrainTrainConfig(TrainConfig):
    """The loop's settings plus the pretraining objective's, all in the `train` section
    (`--train.objective mlm`), as in the recipes."""

    objective: Literal["clm", "mlm"] = option(
        "clm", "clm: next-token prediction (decoders); mlm: masked tokens (encoders)"
    )
    mlm_probability: float = option(0.15, "mlm: fraction of tokens masked")
    sparse_prediction: bool = option(True, "mlm: send only masked rows through the vocabulary projection (Cramming)")
    trainable: Literal["all", "head"] = option(
        "all", "head: train only the pretraining head, the body frozen (adapt fits a new head this way first)"
    )
    whole_word_mask: bool = option(
        False, "mlm: mask whole words (all pieces of a chosen word) instead of single tokens (BERT's WWM)"
    )
    eval_windows: Optional[int] = option(
        512, "validation windows per evaluation, evenly spread over the split (null: the whole split)"
    )


@dataclass
class PretrainConfig:
    data: list[str] = option([], "training text: files, folders, globs, a corpus/ folder, or builtin:tinyshakespeare")
    out: str = option("runs/pretrain", "run folder (metrics, checkpoints, final/, reports)")
    resume: bool = option(
        False, "continue from the newest checkpoint in --out (its config.yaml is reused unless --config is given)"
    )
    shards: Optional[str] = option(None, "use this shards folder (from `lmforge shards`) instead of tokenizing --data")
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    split: SplitConfig = field(default_factory=text_split)
    read: ReadConfig = field(default_factory=ReadConfig)
    model: model_mod.ModelConfig = field(default_factory=model_mod.ModelConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    report: report.ReportConfig = field(default_factory=report.ReportConfig)


def init_tokenizer(config: PretrainConfig) -> Path:
    """Continued pretraining (`model.init_from`) keeps the model's own tokenizer: a new one would put
    other ids in front of the trained embeddings. Another tokenizer is accepted only with the
    very same vocabulary."""
    folder = model_mod.folder_of(config.model.init_from)
    own = tokenizer_mod.load(folder)
    if config.tokenizer.path and Path(config.tokenizer.path).resolve() != folder.resolve():
        other = tokenizer_mod.load(config.tokenizer.path)
        if other.get_vocab() != own.get_vocab():
            raise LmforgeError(
                f"--tokenizer.path {config.tokenizer.path}: its vocabulary differs from that of --model.init_from {config.model.init_from} "
                f"({len(other)} vs {len(own)} tokens, or other ids); continued pretraining must use the model's own tokenizer: drop --tokenizer.path"
            )
    return folder


def prepare_tokenizer(config: PretrainConfig, sources: list[documents.Source]) -> Path:
    """The tokenizer folder: the init model's own, the one given, or one trained on the train split and cached by hash."""
    if config.model.init_from:
        return init_tokenizer(config)
    if config.tokenizer.path:
        tokenizer_mod.load(config.tokenizer.path)  # fails early with a clear message
        return Path(config.tokenizer.path)
    inputs = tokenizer_mod.cache_inputs(
        config.tokenizer, config.split, config.read, config.train.objective, documents.input_fingerprint(sources)
    )
    folder = cache.folder("tokenizers", inputs)
    if not cache.is_complete("tokenizers", folder):
        with cache.entry("tokenizers", inputs) as tmp:
            stats = tokenizer_mod.build(
                sources, config.tokenizer, config.split, config.read, config.train.objective, tmp
            )
        print(
            f"trained {config.tokenizer.kind} tokenizer: vocab {stats['vocab_size']}, fertility {stats['fertility'] or 0:.3f} tokens/word",
            flush=True,
        )
    return folder


def prepare_data(config: PretrainConfig, proc: Process, sources: list[documents.Source]) -> tuple[Path, Path]:
    """(tokenizer folder, shards folder); the main process builds caches, the others wait."""
    if config.shards:
        token_shards = shards.TokenShards.open(config.shards)
        tok_dir = Path(config.tokenizer.path or token_shards.meta["tokenizer"])
        if shards.tokenizer_hash(tok_dir) != token_shards.meta["tokenizer_hash"]:
            raise LmforgeError(
                f"{config.shards}: these shards were made with another tokenizer than {tok_dir}; rebuild them with `lmforge shards --tokenizer {tok_dir}`"
            )
        return tok_dir, token_shards.folder
    if proc.main:
        tok_dir = prepare_tokenizer(config, sources)
        shard_dir = shards.cached(sources, tok_dir, config.split, config.read)
    proc.barrier()
    if not proc.main:
        tok_dir = prepare_tokenizer(config, sources)
        shard_dir = shards.cached(sources, tok_dir, config.split, config.read)
    return tok_dir, shard_dir


def make_objective(config: PretrainConfig, tokens, tokenizer, model):
    train = config.train
    if train.objective == "clm":
        return objectives.CausalLM(tokens, config.model.context, train.batch_size, train.seed)
    if tokenizer.mask_token_id is None:
        raise LmforgeError(
            "objective mlm needs a tokenizer with a [MASK] token; train one with --train.objective mlm (BERT specials) or pass such a tokenizer"
        )
    return objectives.MaskedLM(
        tokens,
        config.model.context,
        train.batch_size,
        train.seed,
        tokenizer.mask_token_id,
        tokenizer.cls_token_id,
        tokenizer.sep_token_id,
        model.config.vocab_size,
        tuple(tokenizer.all_special_ids),
        train.mlm_probability,
        train.sparse_prediction,
        word_starts_of(tokenizer) if train.whole_word_mask else None,
    )


def word_starts_of(tokenizer) -> torch.Tensor:
    try:
        return objectives.word_starts(tokenizer)
    except ValueError:
        raise LmforgeError(
            "--train.whole_word_mask true needs a tokenizer that marks word pieces (WordPiece's ##, or Ġ/▁ word starts); "
            "this one does not (character level?): drop the flag or use --tokenizer.kind wordpiece"
        ) from None


def check_lengths(token_shards: shards.TokenShards, window: int, where: str) -> None:
    for name, array in (("train", token_shards.train), ("valid", token_shards.valid)):
        if len(array) < window + (name == "train"):
            raise LmforgeError(
                f"{where}: the {name} split has {len(array):,} tokens, fewer than one context window ({window}); "
                "give more text, lower --model.context, or change --split.valid_fraction"
            )


def run_inputs(config: PretrainConfig, sources, tok_dir: Path, shard_dir: Path) -> list[Path]:
    """What the manifest lists as read: the text files, and the folders of earlier stages the user
    handed over (shards, a tokenizer, the model continued from); cached ones are derived, not inputs."""
    given = [Path(config.shards)] if config.shards else []
    given += [tok_dir] if config.tokenizer.path or config.shards else []
    given += [model_mod.folder_of(config.model.init_from)] if config.model.init_from else []
    return [s.path for s in sources] + given


def check_before_data(config: PretrainConfig) -> None:
    """What can be checked without reading any text, checked first: a mistake in the budget, the
    model family, the tokenizer settings or a given tokenizer's [MASK] must not wait for
    tokenizing (minutes on a large corpus) to be reported."""
    train = config.train
    train.check_ready()
    config.report.check()
    check_split(config.split, "text")
    if train.eval_windows is not None and train.eval_windows < 1:
        raise LmforgeError(
            f"--train.eval_windows {train.eval_windows}: must be at least 1, or null for the whole valid split"
        )
    if not 0 < train.mlm_probability < 1:
        raise LmforgeError(f"--train.mlm_probability {train.mlm_probability}: must be in (0, 1), e.g. 0.15")
    if config.model.init_from:
        model_mod.check_init_objective(
            model_mod.folder_of(config.model.init_from), train.objective, config.model.init_from
        )
        return
    model_mod.check_family(config.model, train.objective)
    if config.tokenizer.path is None and config.shards is None:
        tokenizer_mod.check(config.tokenizer, train.objective)
    elif train.objective == "mlm":
        given = config.tokenizer.path or shards.TokenShards.open(config.shards).meta["tokenizer"]
        if tokenizer_mod.load(given).mask_token_id is None:
            raise LmforgeError(
                f"{given}: this tokenizer has no [MASK] token, which --train.objective mlm needs; train one with "
                "`lmforge tokenizer --objective mlm` (BERT specials), or drop --tokenizer.path to train one here"
            )


# what a resumed run must keep: its data, model, tokenizer, split, objective, batch and seed
RESUME_FROZEN = (
    "data",
    "shards",
    "model.",
    "tokenizer.",
    "split.",
    "train.objective",
    "train.batch_size",
    "train.seed",
    "train.mlm_probability",
    "train.sparse_prediction",
    "train.whole_word_mask",
    "train.trainable",
)


def check_resume(config: PretrainConfig) -> None:
    """`--resume true` needs a checkpoint to continue from and a budget left to spend (or a run whose
    final/ and reports a kill kept from being written); a fresh run needs a folder without checkpoints."""
    out = Path(config.out)
    last = checkpoint.latest(out)
    if not config.resume:
        if last is not None:
            raise LmforgeError(
                f"{out} already holds checkpoints; pass --resume true to continue that run, or choose a new --out"
            )
        return
    check_unchanged_on_resume(out, config, RESUME_FROZEN)
    if last is None:
        if (out / "config.yaml").is_file():
            raise LmforgeError(
                f"--resume true: {out} holds no checkpoint to continue from (the run stopped before its first one); "
                f"start it anew without --resume, e.g. --config {out / 'config.yaml'} --out NEW_DIR"
            )
        raise LmforgeError(
            f"--resume true: there is no run to resume in {out}; check --out, or start a new run without --resume"
        )
    state = LoopState.read(last)
    spent = state.progress(config.train.budget()) >= 1.0
    if (
        spent and (out / "final" / "config.json").is_file() and has_ended(out)
    ):  # else resume writes what a kill cut short
        raise LmforgeError(
            f"{out}: this run already finished at step {state.step} ({state.tokens:,} tokens); nothing to resume. "
            "Raise the budget (e.g. --train.max_steps) to train further, or choose a new --out"
        )


def run(config: PretrainConfig) -> Path:
    """Pretrain a model as `config` says; returns the run folder."""
    out = Path(config.out)
    wall_started = time.time()
    check_resume(config)
    check_before_data(config)
    device = hardware.resolve_device(config.train.device)
    proc = Process.from_env(device)
    sources = [] if config.shards else documents.resolve_sources(config.data)
    tok_dir, shard_dir = prepare_data(config, proc, sources)
    tokenizer = tokenizer_mod.load(tok_dir)
    token_shards = shards.TokenShards.open(shard_dir)
    torch.manual_seed(config.train.seed)
    model = model_mod.build(config.model, tokenizer, config.train.objective)
    if config.train.trainable == "head":  # the head's own weights train; a tied decoder stays the embeddings
        model.base_model.requires_grad_(False)
        if not any(p.requires_grad for p in model.parameters()):
            raise LmforgeError(
                "--train.trainable head: this model's head is only its output projection, tied to the frozen "
                "embeddings, so nothing would train; use --train.trainable all"
            )
    if token_shards.meta["vocab_size"] > model.config.vocab_size:
        raise LmforgeError(
            f"shards {shard_dir} use a vocabulary of {token_shards.meta['vocab_size']} but the model has {model.config.vocab_size}; use matching tokenizer and model"
        )
    objective = make_objective(config, token_shards.train, tokenizer, model)
    check_lengths(token_shards, objective.window, ", ".join(config.data) or str(shard_dir))
    windows = objectives.gather(
        token_shards.valid,
        objectives.eval_offsets(len(token_shards.valid), objective.window, config.train.eval_windows),
        objective.window,
    )
    valid = objective.eval_batch(windows)  # built once: MLM masks fixed per window, whatever the micro-batching
    folder = RunFolder(out, "pretrain")
    if proc.main:  # stop_at_step controls one invocation; saved, it would stop every resume at the same step
        folder.start(
            dataclasses.replace(config, train=dataclasses.replace(config.train, stop_at_step=None)),
            run_inputs(config, sources, tok_dir, shard_dir),
        )
    fraction = (
        config.train.mlm_probability if (config.train.objective == "mlm" and config.train.sparse_prediction) else 1.0
    )
    flops_per_token = model_mod.flops_per_token(model, config.model.context, fraction)
    if config.train.trainable == "head":
        flops_per_token /= 3  # the frozen body runs forward only: a third of 6N (the head's backward left out)
    params = model_mod.count_parameters(model)
    if proc.main:
        print(
            f"model: {type(model).__name__}, {params / 1e6:.2f}M parameters; train {len(token_shards.train):,} tokens, "
            f"valid {len(token_shards.valid):,} tokens ({len(windows)} windows per evaluation)",
            flush=True,
        )
    summary = fit(
        model,
        objective,
        config.train,
        out,
        tokenizer,
        evaluator=lambda module, runtime: {"val_loss": validation_loss(module, objective, valid, runtime)},
        flops_per_token=flops_per_token,
        resume=config.resume,
        tensorboard=config.report.tensorboard,
    )
    if proc.main and summary.finished:
        checkpoint.save(out / "final", model, tokenizer)
    if proc.main:
        report_data = summary.as_dict() | dict(
            params=params,
            peak_rss_mb=round(hardware.peak_rss_mb(), 1),
            wall_seconds=round(time.time() - wall_started, 2),
            flops_per_token=flops_per_token,
            tokenizer=str(tok_dir),
            shards=str(shard_dir),
            valid_windows=len(windows),
            valid_tokens=int(windows.numel()),
            tokenize_tokens_per_second=token_shards.meta.get("tokens_per_second"),
        )
        html = report.write_training_report(out, report_data, report_lead(config, report_data), stage="pretrain")
        write_json_atomic(out / "report.json", report_data)
        folder.finish(report=str(out / "report.json"))
        where = out / "final" if summary.finished else checkpoint.latest(out)
        if summary.finished:
            print(
                f"done: val loss {summary.val_loss:.4f}, {summary.tokens_per_second:,.0f} tokens/s, MFU {summary.mfu:.1%}; "
                f"model in {where}; report {html}",
                flush=True,
            )
        else:
            print(
                f"stopped at step {summary.steps} ({summary.tokens_per_second:,.0f} tokens/s); checkpoint {where}; "
                f"continue with --resume true --out {out}",
                flush=True,
            )
    return out


def report_lead(config: PretrainConfig, summary: dict) -> report.Lead:
    """report.html's lead: what was trained on what, and the validation loss it reached."""
    objective = {"clm": "causal LM", "mlm": "masked LM"}[config.train.objective]
    if config.model.init_from:
        purpose = f"Continued pretraining of {config.model.init_from} ({objective})"
    else:
        purpose = f"Pretraining from scratch: {model_mod.family_for(config.model, config.train.objective)} {objective}"
    headline, split = "", ""
    if summary.get("val_loss") is not None:
        headline = (
            f"validation loss {summary['val_loss']:.4f} (perplexity {math.exp(min(summary['val_loss'], 50)):.2f})"
        )
        split = f"the valid split, {summary.get('valid_windows', '?')} windows of {config.model.context} tokens"
    state = "finished" if summary.get("finished") else f"stopped at step {summary.get('steps')} (resumable)"
    return report.Lead(
        purpose,
        headline,
        split,
        {
            "data": ", ".join(config.data) or config.shards,
            "run": state,
            "budget": ", ".join(
                f"{k} {v}"
                for k, v in (
                    ("max_steps", config.train.max_steps),
                    ("max_tokens", config.train.max_tokens),
                    ("max_minutes", config.train.max_minutes),
                    ("max_flops", config.train.max_flops),
                )
                if v
            ),
        },
    )
