"""`lmforge STAGE [--config recipe.yaml] [--section.key VALUE ...]`: parse, then dispatch.

Each stage is a module exposing a config dataclass and a `run(config)` function; the CLI
only turns flags into that config. Only the chosen stage's module is imported, so
`lmforge --help` answers without loading torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import errno
import importlib
import sys
from pathlib import Path

from lmforge import __version__
from lmforge import config as config_mod
from lmforge.errors import LmforgeError, RunInterrupted

# stage -> (module, config class, run function, one-line summary)
STAGES: dict[str, tuple[str, str, str, str]] = {
    "corpus": (
        "lmforge.corpus",
        "CorpusConfig",
        "run",
        "documents (txt, md, html, pdf, jsonl, csv, docx) -> cleaned, deduplicated, split corpus/",
    ),
    "tokenizer": (
        "lmforge.tokenizer",
        "TokenizerStageConfig",
        "run",
        "train a BPE / WordPiece / Unigram / char tokenizer on text",
    ),
    "shards": ("lmforge.shards", "ShardsConfig", "run", "tokenize text into packed train/valid token shards (cached)"),
    "pretrain": (
        "lmforge.pretrain",
        "PretrainConfig",
        "run",
        "pretrain a model from scratch (clm or mlm) under a budget; text in, model out",
    ),
    "adapt": (
        "lmforge.adapt",
        "AdaptConfig",
        "run",
        "continue pretraining a pretrained model on domain text; scores before and after",
    ),
    "evaluate": (
        "lmforge.evaluate",
        "EvaluateConfig",
        "run",
        "perplexity, bits-per-byte and masked-token accuracy of a checkpoint",
    ),
    "generate": ("lmforge.generate", "GenerateConfig", "run_generate", "sample text from a causal LM checkpoint"),
    "fill-mask": (
        "lmforge.generate",
        "FillMaskConfig",
        "run_fill_mask",
        "top-k predictions for [MASK] from a masked LM checkpoint",
    ),
    "finetune": (
        "lmforge.finetune",
        "FinetuneConfig",
        "run",
        "fine-tune a pretrained model for classification, NER or extractive QA (full, LoRA or head only)",
    ),
    "compare": (
        "lmforge.compare",
        "CompareConfig",
        "run",
        "rank candidate models on one labelled task: fine-tune each x mode x seed, intervals, verdicts, cost",
    ),
    "predict": (
        "lmforge.predict",
        "PredictConfig",
        "run",
        "run a fine-tuned model over a file (CSV, TSV, JSONL, plain lines) or --text and write its predictions",
    ),
    "export": (
        "lmforge.export",
        "ExportConfig",
        "run",
        "a trained model as a folder to ship: safetensors, model card, ONNX (parity-checked), int8",
    ),
    "serve": (
        "lmforge.serve",
        "ServeConfig",
        "run",
        "an HTTP API for a model (FastAPI, dynamic batching, /metrics); --ui: a page to try and correct it",
    ),
    "feedback export": (
        "lmforge.feedback",
        "FeedbackExportConfig",
        "run",
        "the right/wrong verdicts `serve --feedback` stored, as a file finetune reads (CSV, CoNLL, SQuAD)",
    ),
    "quickstart": (
        "lmforge.quickstart",
        "QuickstartConfig",
        "run",
        "the embedded demo: a char-level model on tinyshakespeare in ~3 minutes",
    ),
}


FILE_OUT = {"feedback export"}  # stages whose --out names a file to replace, not a run folder


def _top_parser() -> argparse.ArgumentParser:
    width = max(12, *map(len, STAGES))
    lines = "\n".join(f"  {name:<{width}} {summary}" for name, (_, _, _, summary) in STAGES.items())
    parser = argparse.ArgumentParser(
        prog="lmforge",
        description="Train your own language models, end to end, on your own data.",
        epilog=f"stages:\n{lines}\n\n`lmforge STAGE --help` documents every option of a stage.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lmforge {__version__}")
    parser.add_argument("stage", nargs="?", choices=list(STAGES), metavar="STAGE", help="one of: " + ", ".join(STAGES))
    return parser


class StageParser(argparse.ArgumentParser):
    """A stage's flags: whole names only (`--train.max_minute` is not taken for `--train.max_minutes`),
    and a mistake is one line with the nearest valid flag, not the usage of 60 options."""

    def error(self, message: str):
        raise LmforgeError(f"{message}; see `{self.prog} --help`")

    def flags(self) -> list[str]:
        return [flag for action in self._actions for flag in action.option_strings if flag.startswith("--")]

    def parse_stage_args(self, args: list[str]) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args)
        if unknown:
            self.error(unknown_flag_message(unknown, self.flags()))
        return parsed


def unknown_flag_message(unknown: list[str], flags: list[str]) -> str:
    """`unknown option --train.max_minute (did you mean --train.max_minutes?)` for the first stray word."""
    word = next((w for w in unknown if w.startswith("-")), unknown[0])
    if not word.startswith("-"):
        return f"unexpected value {word!r} (every value follows its --section.key flag)"
    name = word.split("=", 1)[0]
    near = difflib.get_close_matches(name, flags, n=1, cutoff=0.75)
    if not near:  # `--model.l` for `--model.layers`: the flags of that section that start with it
        section, _, leaf = name.rpartition(".")
        near = [f for f in flags if f.startswith(f"{section}.{leaf}")] if section and leaf else []
    if not near:
        return f"unknown option {name}"
    return f"unknown option {name} (did you mean {' or '.join(near)}?)"


def stage_parser(stage: str) -> tuple[StageParser, type, object]:
    module_name, config_name, run_name, summary = STAGES[stage]
    module = importlib.import_module(module_name)
    config_cls = getattr(module, config_name)
    parser = StageParser(
        prog=f"lmforge {stage}",
        allow_abbrev=False,
        description=f"{summary}. Options are the fields of the stage's config; a YAML recipe given with --config "
        "sets them too, and flags override the recipe.",
    )
    parser.add_argument("--config", metavar="RECIPE.yaml", help="YAML recipe whose keys mirror the options below")
    config_mod.add_arguments(parser, config_cls)
    return parser, config_cls, getattr(module, run_name)


def out_folder(cfg) -> str | None:
    """The stage's `out` (from a flag, a recipe or the default), or None for stages that write none."""
    return cfg.out if "out" in {f.name for f in dataclasses.fields(cfg)} and cfg.out else None


def check_out(out: str | None) -> None:
    """`--out` names a folder to create or continue: an existing file there is a mistake caught
    before any work (it ended in a FileExistsError traceback after tokenizing)."""
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise LmforgeError(
            f"--out {out} is a file, not a folder; give the path of a folder (new, or a run folder to continue)"
        )


def resumed_recipe(overrides: dict) -> str | None:
    """`--resume` without `--config` reuses the run folder's resolved config.yaml."""
    resume = str(overrides.get("resume", "false")).lower() in ("true", "1", "yes", "on")
    saved = Path(str(overrides.get("out", ""))) / "config.yaml"
    return str(saved) if resume and "out" in overrides and saved.is_file() else None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = _top_parser()
    if not argv:
        top.print_help()
        return 0
    stage = " ".join(argv[:2]) if " ".join(argv[:2]) in STAGES else argv[0]  # two-word stages: `feedback export`
    if stage not in STAGES:
        actions = [name.split()[1] for name in STAGES if name.startswith(f"{argv[0]} ")]
        if actions:
            print(
                f"lmforge {argv[0]}: error: give an action: {', '.join(actions)} (`lmforge {argv[0]} {actions[0]} --help`)",
                file=sys.stderr,
            )
            return 2
        top.parse_args(argv)  # --help / --version exit here; an unknown stage is an argparse error (exit 2)
        return 0
    rest = argv[len(stage.split()) :]
    out = None
    try:
        parser, config_cls, run = stage_parser(stage)
        args = parser.parse_stage_args(rest)
        overrides = config_mod.overrides_from_args(args)
        cfg = config_mod.resolve(config_cls, args.config or resumed_recipe(overrides), overrides)
        out = None if stage in FILE_OUT else out_folder(cfg)
        check_out(out)
        run(cfg)
    except LmforgeError as err:
        print(f"lmforge {stage}: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as stop:
        print(
            f"lmforge {stage}: interrupted after step {stop.step}; checkpoint {stop.folder}; "
            f"continue with `lmforge {stage} --resume true --out {out}`",
            file=sys.stderr,
        )
        return 130
    except KeyboardInterrupt:
        print(f"lmforge {stage}: interrupted; {_what_is_kept(out)}", file=sys.stderr)
        return 130
    except OSError as err:
        if err.errno not in DISK_ERRORS:
            raise
        print(f"lmforge {stage}: error: {disk_error_message(err, out)}", file=sys.stderr)
        return 2
    return 0


# a full disk, a read-only mount or a folder without write permission: the user's to fix, not a bug
DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
DISK_FIXES = {
    errno.ENOSPC: "free space on that disk (or give another --out)",
    errno.EDQUOT: "free space within your disk quota (or give another --out)",
    errno.EROFS: "that file system is mounted read-only: give an --out on a writable disk",
    errno.EACCES: "make that folder writable for you, or give another --out",
    errno.EPERM: "make that folder writable for you, or give another --out",
}


def disk_error_message(err: OSError, out: str | None) -> str:
    """One line: what could not be written where, what to change, and what was kept."""
    where = Path(err.filename).parent if err.filename else Path(out or ".")
    kept = _what_is_kept(out) if out else "nothing already written was changed"
    return f"cannot write in {where}: {err.strerror.lower()}; {DISK_FIXES[err.errno]}; {kept}"


def _what_is_kept(out: str | None) -> str:
    """What an interrupted stage leaves behind, said truthfully: its newest checkpoint, or none."""
    from lmforge import checkpoint

    last = checkpoint.latest(Path(out)) if out and Path(out).is_dir() else None
    if last is None:
        return "no checkpoint was written"
    return f"the newest checkpoint is {last}; continue with --resume true --out {out}"
