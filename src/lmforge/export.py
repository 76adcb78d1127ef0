"""`lmforge export`: a trained model as a folder to ship, with its model card, and optionally ONNX.

    --model RUN_OR_DIR  ->  OUT/  config.json, model.safetensors, tokenizer files   (always)
                              README.md      the model card: task, labels, base model, data and
                                             their hashes, recipe, metrics, intended use, limits
                              model.onnx     (--onnx true) logits with dynamic batch and sequence
                              model.int8.onnx  (--quantize int8) dynamic int8 weights
                              export.json    what was checked: parity, metrics before and after

ONNX is checked against PyTorch on real inputs (the run's valid file, or --valid_file): the
largest absolute difference of the logits and the share of predictions that agree; above
--tolerance the export fails and nothing is published. int8 is scored with the task metric on the
same file before and after, and the card says what the speed costs in quality.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Literal, Optional

import yaml

from lmforge import model as model_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.publish import publish_folder, write_json_atomic, write_text_atomic
from lmforge.runfolder import stage_of
from lmforge.tasks import TASKS, backbone, data, format_for
from lmforge.tasks.features import predict_logits

# what the exported model does: a fine-tuned head's task, or its pretraining objective
Kind = Literal["classification", "ner", "qa", "fill-mask", "generate"]
PIPELINE_TAG = {
    "classification": "text-classification",
    "ner": "token-classification",
    "qa": "question-answering",
    "fill-mask": "fill-mask",
    "generate": "text-generation",
}
SAMPLE_TEXT = Path(__file__).parent / "data" / "tinyshakespeare.txt"  # LM parity inputs when no file is given


@dataclass
class ExportConfig:
    model: str = option("", "a run folder (finetune, adapt, pretrain) or an HF model folder")
    out: str = option("runs/export", "folder to write: the HF model, README.md (model card), ONNX files")
    onnx: bool = option(False, "also write model.onnx (dynamic batch and sequence axes), checked against PyTorch")
    quantize: Optional[Literal["int8"]] = option(None, "int8: also model.int8.onnx (onnxruntime dynamic int8)")
    valid_file: Optional[str] = option(
        None, "file for the parity check and the int8 metric (default: the fine-tuning run's --valid_file)"
    )
    parity_examples: int = option(512, "examples of the valid file checked and scored (0: all)")
    tolerance: float = option(1e-3, "largest allowed |logit difference| between ONNX and PyTorch (fp32)")
    opset: int = option(18, "ONNX opset")
    format: data.FormatConfig = field(default_factory=data.FormatConfig)


@dataclass
class Source:
    """What is exported and where it came from."""

    folder: Path  # the HF model folder
    run: Optional[Path]  # the lmforge run folder that made it (finetune, adapt, pretrain), if any
    kind: str
    config: dict  # the run's config.yaml (empty for a plain HF folder)
    manifest: dict
    report: dict


def source_of(given: str) -> Source:
    """The model folder `given` names, and the run that made it: RUN/final/, or one seed's
    RUN/seed_N/final/ of a multi-seed fine-tuning (its own report, the run's config and data)."""
    folder = backbone.resolve(given)
    head, _ = backbone.saved_head(folder)
    kind = head or ("fill-mask" if model_mod.objective_of(folder) == "mlm" else "generate")
    run = scored = None
    if folder.name == "final" and stage_of(folder.parent):
        run = scored = folder.parent
    elif folder.name == "final" and folder.parent.name.startswith("seed_") and stage_of(folder.parent.parent):
        run, scored = folder.parent.parent, folder.parent

    def read(where: Optional[Path], name: str, loader) -> dict:
        path = where / name if where else None
        return loader(path.read_text(encoding="utf-8")) if path and path.is_file() else {}

    return Source(
        folder,
        run,
        kind,
        read(run, "config.yaml", yaml.safe_load),
        read(run, "manifest.json", json.loads),
        read(scored, "report.json", json.loads),
    )


# --- the model as PyTorch and as ONNX ------------------------------------------------------------


def load(source: Source, fmt: data.FormatConfig):
    """(task or None, model in eval mode, tokenizer)."""
    if source.kind in TASKS:
        from lmforge.tasks import scoring

        task, model, tokenizer, _ = scoring.load_task_model(str(source.folder), source.kind, fmt)
        return task, model.float().eval(), tokenizer
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    auto = AutoModelForMaskedLM if source.kind == "fill-mask" else AutoModelForCausalLM
    return None, model_mod.load(source.folder, auto).float().eval(), tokenizer_mod.load(source.folder)


def input_names(tokenizer) -> list[str]:
    names = ["input_ids", "attention_mask"]
    return names + (["token_type_ids"] if "token_type_ids" in tokenizer.model_input_names else [])


def graph(model, kind: str, names: list[str]):
    """The model as the graph to export: named tensor inputs, logits out (QA: start and end)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            kwargs = dict(zip(names, inputs))
            if kind == "generate":
                kwargs["use_cache"] = False
            out = self.model(**kwargs)
            return (out.start_logits, out.end_logits) if kind == "qa" else out.logits

    return Logits().eval()


def export_onnx(model, tokenizer, kind: str, path: Path, opset: int) -> None:
    import warnings

    import torch

    names = input_names(tokenizer)
    example = tokenizer(["a short example", "and a second, longer example text"], padding=True, return_tensors="pt")
    args = tuple(example[n] for n in names)
    outputs = ["start_logits", "end_logits"] if kind == "qa" else ["logits"]
    axes = {n: {0: "batch", 1: "sequence"} for n in names + outputs}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph(model, kind, names),
            args,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )


class OnnxModel:
    """An onnxruntime session called like the PyTorch model (`model(**batch)`), for the shared
    scoring code (`predict_logits`): tensors in, an object with .logits (or start/end) out."""

    training = False

    def __init__(self, path: Path, kind: str, threads: int = 0):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]
        self.kind = kind

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def to(self, *args, **kwargs):
        return self

    def __call__(self, **batch):
        import numpy as np
        import torch

        shape = batch["input_ids"].shape
        feeds = {
            n: (batch[n].cpu().numpy() if n in batch else np.zeros(shape, dtype=np.int64)).astype(np.int64)
            for n in self.names
        }
        if "attention_mask" in self.names and "attention_mask" not in batch:
            feeds["attention_mask"] = np.ones(shape, dtype=np.int64)
        outs = [torch.from_numpy(o) for o in self.session.run(None, feeds)]
        if self.kind == "qa":
            return SimpleNamespace(start_logits=outs[0], end_logits=outs[1])
        return SimpleNamespace(logits=outs[0])


# --- checks on real inputs ----------------------------------------------------------------------


def valid_path(config: ExportConfig, source: Source) -> Optional[str]:
    given = config.valid_file or source.config.get("valid_file") or None
    if given and not Path(given).is_file():
        where = "--valid_file" if config.valid_file else f"the run's valid_file ({source.run / 'config.yaml'})"
        raise LmforgeError(f"{where}: {given} is not a file; pass --valid_file FILE with labelled examples")
    return given


def task_features(task, tokenizer, path: str, fmt: data.FormatConfig, limit: int):
    fmt = format_for(type(task), fmt)
    examples = task.read(path, fmt, "valid_file")
    examples = examples[:limit] if limit else examples
    return examples, task.encode(examples, tokenizer, fmt, labelled=True)


def lm_batches(tokenizer, path: Optional[str], limit: int, max_length: int) -> list[dict]:
    """Real text for a language model's parity check: lines of --valid_file, else packaged text."""
    source = Path(path) if path else SAMPLE_TEXT
    lines = [line.strip() for line in source.read_text(encoding="utf-8", errors="replace").splitlines()]
    lines = [line for line in lines if len(line) > 20][: (limit or 10**9)][:64]
    if not lines:
        raise LmforgeError(f"{source}: no lines of text to check the export on; pass --valid_file with text")
    out = []
    for start in range(0, len(lines), 8):
        out.append(dict(tokenizer(lines[start : start + 8], padding=True, truncation=True, max_length=max_length, return_tensors="pt")))  # fmt: skip
    return out


def task_scores(task, model, features, kind: str) -> tuple[list, dict]:
    import contextlib

    from lmforge.tasks.backbone import full_forward

    logits, _ = predict_logits(model, features, full_forward(task), task, 32, contextlib.nullcontext)
    return logits, task.metrics(logits, features)


def compare_logits(reference: list, other: list) -> float:
    return max(float((a - b).abs().max()) for a, b in zip(reference, other))


def agreement(task, examples, features, reference: list, other: list) -> float:
    """Share of examples (sentences, questions) whose prediction is the same."""
    a = task.prediction_rows(examples, reference, features)
    b = task.prediction_rows(examples, other, features)
    return sum(x["prediction"] == y["prediction"] for x, y in zip(a, b)) / max(1, len(a))


def check_task(config, task, model, tokenizer, onnx_paths: dict[str, Path], kind: str, path: str) -> dict:
    """Parity and metrics of PyTorch, ONNX and (given) int8 ONNX on the same valid examples."""
    examples, features = task_features(task, tokenizer, path, config.format, config.parity_examples)
    torch_logits, torch_metrics = task_scores(task, model, features, kind)
    out = {"file": path, "examples": len(examples), "metric": task.default_metric, "torch": torch_metrics}
    for name, onnx_path in onnx_paths.items():
        logits, metrics = task_scores(task, OnnxModel(onnx_path, kind), features, kind)
        out[name] = {
            "metrics": metrics,
            "max_abs_diff": compare_logits(torch_logits, logits),
            "agreement": agreement(task, examples, features, torch_logits, logits),
        }
    return out


def check_lm(config, model, tokenizer, onnx_paths: dict[str, Path], kind: str, path: Optional[str]) -> dict:
    import torch

    batches = lm_batches(tokenizer, path, config.parity_examples, min(128, tokenizer.model_max_length))
    with torch.no_grad():
        reference = [model(**b).logits for b in batches]
    out = {"file": str(path or SAMPLE_TEXT), "examples": sum(len(b["input_ids"]) for b in batches), "metric": None}
    for name, onnx_path in onnx_paths.items():
        session = OnnxModel(onnx_path, kind)
        diff, same, total = 0.0, 0, 0
        for batch, ref in zip(batches, reference):
            logits = session(**batch).logits
            mask = batch["attention_mask"].bool()
            diff = max(diff, float((logits - ref).abs()[mask].max()))
            same += int((logits.argmax(-1) == ref.argmax(-1))[mask].sum())
            total += int(mask.sum())
        out[name] = {"max_abs_diff": diff, "agreement": same / max(1, total)}
    return out


def quantize_int8(source: Path, target: Path) -> None:
    """onnxruntime dynamic int8 (weights int8, activations quantised per batch), after its own
    pre-processing (shape inference, graph optimisation) as onnxruntime recommends."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = target.with_name("model.pre.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # dynamic axes defeat it
    except Exception as err:  # an unusual graph: quantise it as it is
        print(f"note: onnxruntime's pre-processing failed ({type(err).__name__}); quantising without it", flush=True)
        prepared = source
    logging.getLogger().setLevel(logging.ERROR)  # its pre-processing advice, given already
    quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8)
    if prepared != source:
        prepared.unlink()


# --- the model card -------------------------------------------------------------------------------


def card(source: Source, task, checks: dict, out_name: str) -> str:
    """README.md with HF model-card front matter."""
    cfg, report, kind = source.config, source.report, source.kind
    base = cfg.get("model") or (cfg.get("train") or {}).get("init_from") or None
    labels = list(getattr(task, "labels", []) or [])
    front = {"library_name": "transformers", "pipeline_tag": PIPELINE_TAG[kind], "tags": ["lmforge", kind]}
    if base and not Path(str(base)).is_absolute():
        front["base_model"] = str(base)
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {out_name}", ""]
    stage = source.manifest.get("stage")
    lines.append(f"Made with lmforge{f' `{stage}`' if stage else ''}. **Task:** {kind} ({PIPELINE_TAG[kind]}).")
    if labels:
        shown = ", ".join(f"`{label}`" for label in labels[:50]) + (" ..." if len(labels) > 50 else "")
        lines += ["", f"**Labels ({len(labels)}):** {shown}"]
    if base:
        lines += ["", f"**Base model:** `{base}`"]
    inputs = [i for i in source.manifest.get("inputs", []) if i.get("sha256")]
    if not source.run:
        lines += ["", "## Training data", "", f"Not recorded: `{source.folder}` is not an lmforge run folder, so its data, recipe and metrics are unknown here."]  # fmt: skip
    if inputs:
        lines += ["", "## Training data", "", "| file | bytes | sha256 |", "| --- | --- | --- |"]
        lines += [f"| `{Path(i['path']).name}` | {i['bytes']:,} | `{i['sha256'][:16]}` |" for i in inputs]
    metrics = report.get("metrics") or {}
    if metrics:
        split = report.get("metrics_split", "")
        note = (
            "the test file, scored once after model selection on valid"
            if split == "test"
            else "the valid file, which also picked the checkpoint (optimistic)"
        )
        lines += ["", "## Results", "", f"On {note}" + (f"; mean over seeds {report['seeds']}" if report.get("seeds") else "") + ":", ""]  # fmt: skip
        lines += ["| metric | value |", "| --- | --- |"]
        lines += [f"| {k} | {v:.4f} |" for k, v in metrics.items() if isinstance(v, (int, float))]
    if checks:
        lines += ["", "## Export checks", "", f"On {checks['examples']:,} examples of `{Path(checks['file']).name}`:", ""]  # fmt: skip
        metric = checks.get("metric")
        head = "| model | max abs logit diff vs PyTorch | predictions agreeing |" + (f" {metric} |" if metric else "")
        lines += [head, "| --- | --- | --- |" + (" --- |" if metric else "")]
        if metric:
            lines.append(f"| PyTorch fp32 | 0 | 100% | {checks['torch'][metric]:.4f} |")
        for name in ("onnx", "onnx_int8"):
            if name in checks:
                c = checks[name]
                value = f" {c['metrics'][metric]:.4f} |" if metric else ""
                lines.append(
                    f"| {name.replace('_', ' ')} | {c['max_abs_diff']:.2e} | {100 * c['agreement']:.1f}% |{value}"
                )
        if metric and "onnx_int8" in checks:
            delta = checks["onnx_int8"]["metrics"][metric] - checks["torch"][metric]
            lines += ["", f"int8 changes {metric} by {delta:+.4f} on this file: the price of its speed and size."]
    recipe = {k: v for k, v in cfg.items() if k not in ("resume",)}
    if recipe:
        lines += ["", "## Recipe", "", "```yaml", yaml.safe_dump(recipe, sort_keys=False).strip(), "```"]
    use = {
        "classification": "AutoModelForSequenceClassification",
        "ner": "AutoModelForTokenClassification",
        "qa": "AutoModelForQuestionAnswering",
        "fill-mask": "AutoModelForMaskedLM",
        "generate": "AutoModelForCausalLM",
    }[kind]
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        f"from transformers import AutoTokenizer, {use}",
        f'model = {use}.from_pretrained("{out_name}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{out_name}")',
        "```",
        "",
        f"or as an HTTP API: `lmforge serve --model {out_name}"
        + (" --backend onnx" if checks.get("onnx") else "")
        + "`",
        "",
        "## Intended use and limits",
        "",
        f"- Trained for {kind} on the data above; on text unlike it (another domain, language or style) expect lower"
        " quality than the figures here, and measure on your own labelled examples before relying on it.",
        "- The figures come from one labelled file each; their uncertainty grows as that file gets smaller"
        " (`lmforge compare` gives intervals).",
        "- It repeats the biases of its training data and is not meant for decisions about people without review.",
    ]
    return "\n".join(lines) + "\n"


# --- the stage ----------------------------------------------------------------------------------


def run(config: ExportConfig) -> Path:
    """`lmforge export`: publish OUT atomically (a failed check leaves no folder)."""
    if config.quantize and not config.onnx:
        raise LmforgeError("--quantize int8 quantises the ONNX model: add --onnx true")
    source = source_of(config.model)
    path = valid_path(config, source) if config.onnx and source.kind in TASKS else config.valid_file
    if config.onnx and source.kind in TASKS and not path:
        raise LmforgeError(
            f"--onnx true checks the export on labelled examples: pass --valid_file FILE ({source.folder} has no run config naming one)"
        )
    out = Path(config.out)
    if out.resolve() == source.folder.resolve():
        raise LmforgeError(f"--out {out} is the model folder itself; choose another folder")
    task, model, tokenizer = load(source, config.format)
    started = time.time()
    checks: dict = {}
    with publish_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        print(f"model: {type(model).__name__} ({source.kind}) from {source.folder}", flush=True)
        if config.onnx:
            paths = {"onnx": tmp / "model.onnx"}
            export_onnx(model, tokenizer, source.kind, paths["onnx"], config.opset)
            if config.quantize:
                paths["onnx_int8"] = tmp / "model.int8.onnx"
                quantize_int8(paths["onnx"], paths["onnx_int8"])
            if task is not None:
                checks = check_task(config, task, model, tokenizer, paths, source.kind, path)
            else:
                checks = check_lm(config, model, tokenizer, paths, source.kind, path)
            diff = checks["onnx"]["max_abs_diff"]
            if diff > config.tolerance:
                raise LmforgeError(
                    f"ONNX export differs from PyTorch by {diff:.2e} in the logits (above --tolerance {config.tolerance:g}) "
                    f"on {checks['file']}; nothing was written. Try another --opset, or raise --tolerance if that is acceptable"
                )
            for name in paths:
                c = checks[name]
                shown = f", {checks['metric']} {c['metrics'][checks['metric']]:.4f}" if checks.get("metric") else ""
                print(f"{name}: max |logit diff| {c['max_abs_diff']:.2e}, {100 * c['agreement']:.1f}% predictions agree{shown}", flush=True)  # fmt: skip
        write_text_atomic(tmp / "README.md", card(source, task, checks, out.name))
        summary = {
            "model": str(source.folder),
            "run": str(source.run) if source.run else None,
            "kind": source.kind,
            "files": sorted(p.name for p in tmp.iterdir()) + ["export.json"],
            "checks": checks,
            "metrics": source.report.get("metrics") or {},  # the run's, shown by `serve` at /v1/model
            "metrics_split": source.report.get("metrics_split"),
            "seconds": round(time.time() - started, 1),
        }
        write_json_atomic(tmp / "export.json", summary)
    print(f"exported to {out} (model card: {out / 'README.md'})", flush=True)
    return out
