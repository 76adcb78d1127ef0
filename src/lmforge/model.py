"""Build stock transformers models from config: Llama-style and GPT-2 decoders, BERT and ModernBERT encoders.

Only stock config classes are used, so every checkpoint loads with `AutoModel.from_pretrained`
and no `trust_remote_code`. A size preset fills the dimensions; explicit fields override it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from lmforge.config import option
from lmforge.errors import LmforgeError

Family = Literal["llama", "gpt2", "bert", "modernbert"]
DECODERS = ("llama", "gpt2")
ENCODERS = ("bert", "modernbert")

# preset -> (layers, width, heads)
PRESETS: dict[str, tuple[int, int, int]] = {
    "tiny": (2, 64, 2),
    "mini": (4, 128, 4),
    "small": (4, 256, 4),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
}


@dataclass
class ModelConfig:
    family: Optional[Family] = option(
        None,
        "architecture: llama or gpt2 (causal LM), bert or modernbert (masked LM); default llama for clm, bert for mlm",
    )
    preset: Literal["tiny", "mini", "small", "medium", "base"] = option(
        "mini",
        "size preset (layers/width/heads): tiny 2/64/2, mini 4/128/4, small 4/256/4, medium 8/512/8, base 12/768/12",
    )
    layers: Optional[int] = option(None, "number of transformer blocks (overrides the preset)")
    width: Optional[int] = option(None, "hidden size (overrides the preset)")
    heads: Optional[int] = option(None, "attention heads (overrides the preset)")
    kv_heads: Optional[int] = option(None, "key/value heads for grouped-query attention (llama; default = heads)")
    intermediate: Optional[int] = option(None, "MLP hidden size (default: 4 x width; llama's SwiGLU uses 8/3 x width)")
    context: int = option(128, "context length in tokens (the training window)")
    dropout: float = option(0.0, "dropout on residuals and attention (0 is usual for short pretraining)")
    tie_embeddings: bool = option(True, "share input embedding and output projection weights")
    init_from: Optional[str] = option(
        None, "start from this HF model folder instead of random weights (continued pretraining)"
    )


def dimensions(cfg: ModelConfig) -> tuple[int, int, int, int]:
    layers, width, heads = PRESETS[cfg.preset]
    layers = cfg.layers or layers
    width = cfg.width or width
    heads = cfg.heads or heads
    if width % heads:
        raise LmforgeError(
            f"model.width {width} is not divisible by model.heads {heads}; pick dimensions where width % heads == 0"
        )
    if cfg.intermediate:
        intermediate = cfg.intermediate
    elif cfg.family in ("llama", None):
        intermediate = 32 * round(8 * width / 3 / 32)  # SwiGLU: 3 matrices of 8/3 x width match 2 of 4 x width
    else:
        intermediate = 4 * width
    return layers, width, heads, intermediate


def hf_config(cfg: ModelConfig, tokenizer):
    """The stock transformers config for `cfg`, with special-token ids from `tokenizer`."""
    from transformers import BertConfig, GPT2Config, LlamaConfig, ModernBertConfig

    layers, width, heads, intermediate = dimensions(cfg)
    dropout = cfg.dropout
    # names every family's config takes (GPT-2's attribute_map sends them to n_embd, n_layer, n_head, n_positions)
    shared = dict(
        vocab_size=len(tokenizer),
        hidden_size=width,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=cfg.context,
        tie_word_embeddings=cfg.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
    )
    if cfg.family in DECODERS:
        shared.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    if cfg.family == "llama":
        kv_heads = cfg.kv_heads or heads
        return LlamaConfig(
            **shared,
            intermediate_size=intermediate,
            num_key_value_heads=kv_heads,
            attention_dropout=dropout,
            rms_norm_eps=1e-5,
        )
    if cfg.family == "gpt2":
        return GPT2Config(**shared, n_inner=intermediate, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    if cfg.family == "bert":
        return BertConfig(
            **shared, intermediate_size=intermediate, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout
        )
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    specials = dict(bos_token_id=cls, eos_token_id=sep, cls_token_id=cls, sep_token_id=sep)
    dropouts = dict.fromkeys(("embedding_dropout", "attention_dropout", "mlp_dropout"), dropout)
    window = min(128, cfg.context)
    return ModernBertConfig(
        **shared,
        **specials,
        **dropouts,
        intermediate_size=intermediate,
        global_attn_every_n_layers=3,
        local_attention=window,
    )


def family_for(cfg: ModelConfig, objective: str) -> str:
    return cfg.family or ("llama" if objective == "clm" else "bert")


def max_positions(config) -> int | None:
    """The longest sequence a saved model's position table covers (GPT-2 calls it n_positions)."""
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def check_family(cfg: ModelConfig, objective: str) -> None:
    allowed = DECODERS if objective == "clm" else ENCODERS
    if family_for(cfg, objective) not in allowed:
        raise LmforgeError(
            f"model.family {cfg.family} cannot train objective {objective}; use one of {', '.join(allowed)} (or change train.objective)"
        )


# model_type values of encoder-only architectures, which continue pretraining with masked LM
ENCODER_TYPES = (
    "bert",
    "roberta",
    "xlm-roberta",
    "modernbert",
    "distilbert",
    "electra",
    "deberta",
    "deberta-v2",
    "camembert",
)


def folder_of(model: str) -> Path:
    """The model folder a `--model` or `model.init_from` value names: an HF folder, a run folder
    holding final/, or `minilm`; every stage that takes a model accepts the same three."""
    from lmforge.tasks.backbone import resolve

    return resolve(model)


def objective_of(folder: str | Path) -> Literal["clm", "mlm"]:
    """The pretraining objective a saved model belongs to: mlm for a masked-LM head or an
    encoder-only architecture (a bare BertModel too), else clm."""
    import json

    config = json.loads((Path(folder) / "config.json").read_text())
    architecture = (config.get("architectures") or [""])[0]
    return "mlm" if architecture.endswith("ForMaskedLM") or config.get("model_type") in ENCODER_TYPES else "clm"


def check_init_objective(folder: Path, objective: str, init_from: str) -> None:
    """An encoder continues with masked LM, a decoder with causal LM; the other objective is an error."""
    import json

    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "")
    wanted = objective_of(folder)
    if objective != wanted:
        kind = "an encoder (masked LM)" if wanted == "mlm" else "a decoder (causal LM)"
        raise LmforgeError(
            f"model.init_from {init_from} is {kind} ({model_type}); continue its pretraining with --train.objective {wanted}"
        )


def build(cfg: ModelConfig, tokenizer, objective: str):
    """A fresh (or `init_from`) model for the objective, checked against the tokenizer's vocabulary."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForCausalLM if objective == "clm" else AutoModelForMaskedLM
    if cfg.init_from:
        folder = folder_of(cfg.init_from)
        check_init_objective(folder, objective, cfg.init_from)
        model = load(folder, auto)
    else:
        check_family(cfg, objective)
        cfg = dataclasses.replace(cfg, family=family_for(cfg, objective))
        model = auto.from_config(hf_config(cfg, tokenizer))
    check_vocab(model, tokenizer, cfg.init_from or "the new model")
    return model


def load(path: str | Path, auto=None):
    """Load an HF model folder (safetensors only) with a clear error when it is not one."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    path = Path(path)
    if not (path / "config.json").is_file():
        raise LmforgeError(
            f"{path}: not a model folder (no config.json); point at a `final/` or `checkpoints/step_N/` folder"
        )
    try:
        return (auto or AutoModel).from_pretrained(str(path), use_safetensors=True)
    except ValueError as err:
        raise LmforgeError(f"{path}: cannot load this model for the task ({str(err).splitlines()[0]})") from None


def check_vocab(model, tokenizer, where: str) -> None:
    if len(tokenizer) > model.config.vocab_size:
        raise LmforgeError(
            f"tokenizer has {len(tokenizer)} tokens but {where} has a vocabulary of {model.config.vocab_size}; "
            "use the tokenizer saved with the model (its folder) or retrain the model with this tokenizer"
        )


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model, context: int, prediction_fraction: float = 1.0) -> float:
    """Training FLOPs per token, forward plus backward: 6 x matmul params + attention (PaLM, appendix B).

    Embedding lookups cost nothing; the output projection counts only for the fraction of
    positions that reach it (MLM sparse prediction sends ~15% of rows through it).
    """
    config = model.config
    width = config.hidden_size
    layers = config.num_hidden_layers
    vocab = config.vocab_size
    embedding_params = sum(m.weight.numel() for m in model.modules() if m.__class__.__name__ == "Embedding")
    body = count_parameters(model) - embedding_params
    if not getattr(config, "tie_word_embeddings", True):
        body -= vocab * width  # an untied head is counted below
    attention = 12 * layers * context * width
    return 6 * body + attention + 6 * vocab * width * prediction_fraction
