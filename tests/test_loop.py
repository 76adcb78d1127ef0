"""The loop's clocks, schedule, signals and seeds: what a budget counts, how warm-up fits a budget,
what Ctrl-C leaves behind, and which random draws a step makes."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import tiny_llama, tiny_pretrain

from lmforge import checkpoint, cli, hardware, objectives, optim
from lmforge import config as config_mod
from lmforge.errors import LmforgeError
from lmforge.loop import LossModule, Runtime, fit, step_seed, validation_loss
from lmforge.pretrain import PretrainConfig
from lmforge.process import Process
from lmforge.train_config import TrainConfig


def rows_of(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def clm_objective(seed=0):
    tokens = np.random.default_rng(0).integers(0, 40, size=4000).astype(np.uint16)
    return objectives.CausalLM(tokens, context=16, global_batch=4, seed=seed)


def test_budget_counts_training_time_not_evaluation(tmp_path):
    def slow_evaluator(module, runtime):
        time.sleep(0.3)
        return {"val_loss": 1.0}

    cfg = TrainConfig(max_steps=4, eval_every=1, log_every=1, precision="fp32", warmup_steps=1, save_every=0)
    summary = fit(tiny_llama(), clm_objective(), cfg, tmp_path, evaluator=slow_evaluator, flops_per_token=1.0)
    assert summary.evaluation_seconds >= 4 * 0.3
    assert summary.training_seconds < 0.3  # four steps of a tiny model; the 1.2 s of evaluation are not in it
    assert rows_of(tmp_path)[-1]["elapsed_seconds"] == pytest.approx(summary.training_seconds, abs=0.01)


def test_time_budget_is_not_spent_on_evaluation(tmp_path):
    def slow_evaluator(module, runtime):
        time.sleep(0.5)
        return {"val_loss": 1.0}

    cfg = TrainConfig(
        max_minutes=0.5 / 60, eval_every=20, log_every=1000, precision="fp32", warmup_steps=1, save_every=0
    )
    summary = fit(tiny_llama(), clm_objective(), cfg, tmp_path, evaluator=slow_evaluator, flops_per_token=1.0)
    assert summary.stopped_by == "max_minutes" and summary.training_seconds >= 0.5
    assert summary.steps > 20  # with evaluation counted, the first evaluation alone would have spent the budget


def test_warmup_is_capped_by_the_budget(small_text, tmp_path):
    out = tmp_path / "run"
    budget = {"train.max_steps": None, "train.max_tokens": 10 * 8 * 32, "train.warmup_steps": 100, "train.min_lr": 1e-5}
    tiny_pretrain(small_text, out, **budget)
    lrs = [r["lr"] for r in rows_of(out)]
    assert max(lrs) == pytest.approx(3e-3, rel=0.05)  # warm-up ended (10% of the budget: the first step)
    assert lrs[-1] < 0.05 * 3e-3  # and the run still ends annealed
    assert json.loads((out / "report.json").read_text())["stopped_in_warmup"] is False


def test_a_run_stopped_inside_warmup_says_so(small_text, tmp_path, capsys):
    out = tmp_path / "run"
    budget = {"train.max_steps": 400, "train.warmup_steps": 100, "train.warmup_fraction": 1.0, "train.stop_at_step": 3}
    tiny_pretrain(small_text, out, **budget)
    assert "inside warm-up" in capsys.readouterr().out


def test_learning_rate_warmup_by_fraction():
    # 1,000-step budget, 100 warm-up steps capped at 5%: the peak comes at step 50
    lrs = [optim.learning_rate(s, s / 1000, None, 1.0, 0.0, 100, "constant", 0.05) for s in range(60)]
    assert lrs[24] == pytest.approx(0.48) and lrs[10] == pytest.approx(0.2) and lrs[50] == 1.0
    assert optim.warmup_done(50, 0.05, 100, 0.05) and not optim.warmup_done(49, 0.049, 100, 0.05)


def test_checkpoint_by_wall_time(tmp_path):
    cfg = TrainConfig(
        max_steps=6,
        eval_every=1000,
        precision="fp32",
        warmup_steps=1,
        save_every=0,
        save_every_minutes=1e-9,
        keep_last=3,
    )
    fit(tiny_llama(), clm_objective(), cfg, tmp_path, flops_per_token=1.0)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == ["step_4", "step_5", "step_6"]


def test_each_step_and_rank_seeds_its_own_dropout():
    seeds = {step_seed(1337, step, rank) for step in range(1000) for rank in range(8)}
    assert len(seeds) == 8000  # one shared seed would give every rank the same dropout masks


def test_dropout_run_resumes_exactly_without_rng_state(tmp_path):
    cfg = dict(log_every=1, eval_every=1000, precision="fp32", warmup_steps=1, save_every=0, max_steps=6)
    fit(tiny_llama(dropout=0.5), clm_objective(), TrainConfig(**cfg), tmp_path / "whole", flops_per_token=1.0)
    fit(
        tiny_llama(dropout=0.5),
        clm_objective(),
        TrainConfig(**cfg, stop_at_step=3),
        tmp_path / "parts",
        flops_per_token=1.0,
    )
    torch.manual_seed(999)  # whatever the global RNG holds now, step 4 draws its own masks
    (checkpoint.latest(tmp_path / "parts") / checkpoint.STATE_DIR / "rng.pt").unlink()
    state_dir = checkpoint.latest(tmp_path / "parts") / checkpoint.STATE_DIR
    torch.save({"torch": torch.get_rng_state()}, state_dir / "rng.pt")
    fit(
        tiny_llama(dropout=0.5),
        clm_objective(),
        TrainConfig(**cfg),
        tmp_path / "parts",
        flops_per_token=1.0,
        resume=True,
    )
    assert [r["loss"] for r in rows_of(tmp_path / "parts")] == [r["loss"] for r in rows_of(tmp_path / "whole")]


def test_mlm_validation_masks_do_not_depend_on_micro_batches():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(
        BertConfig(
            vocab_size=60,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=34,
        )
    )
    tokens = np.random.default_rng(1).integers(5, 60, size=2000).astype(np.uint16)
    objective = objectives.MaskedLM(
        tokens, 32, 8, 0, mask_token_id=4, cls_token_id=2, sep_token_id=3, vocab_size=60, special_ids=(0, 1, 2, 3, 4)
    )
    windows = objectives.gather(tokens, objectives.eval_offsets(len(tokens), objective.window, 24), objective.window)
    batch = objective.eval_batch(windows)
    module = LossModule(model, objective)
    values = [
        validation_loss(module, objective, batch, Runtime(torch.device("cpu"), torch.float32, Process(), micro))
        for micro in (2, 8)
    ]
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_device_follows_local_rank(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert hardware.resolve_device("cuda") == torch.device("cuda", 1)
    assert hardware.resolve_device("cuda:0") == torch.device("cuda", 0)  # an explicit index wins
    assert hardware.resolve_device("cpu") == torch.device("cpu")


def test_rng_state_holds_cuda_only_when_training_there():
    assert set(checkpoint.rng_state(torch.device("cpu"))) == {"torch"}


def test_best_mode_auto_follows_the_metric_name():
    assert TrainConfig(best_metric="val_loss").larger_is_better() is False
    assert TrainConfig(best_metric="accuracy").larger_is_better() is True
    assert TrainConfig(best_metric="val_loss", best_mode="max").larger_is_better() is True


def test_best_checkpoint_by_a_loss_keeps_the_lowest(tmp_path):
    values = iter([3.0, 1.0, 2.0])
    cfg = TrainConfig(max_steps=3, eval_every=1, precision="fp32", warmup_steps=1, best_metric="val_loss")
    summary = fit(
        tiny_llama(),
        clm_objective(),
        cfg,
        tmp_path,
        evaluator=lambda m, r: {"val_loss": next(values)},
        flops_per_token=1.0,
    )
    assert summary.best["value"] == 1.0 and summary.best["step"] == 2


def test_compile_auto_times_both_and_records_the_choice(tmp_path):
    cfg = TrainConfig(max_steps=2, eval_every=1000, precision="fp32", warmup_steps=1, compile="auto", save_every=0)
    summary = fit(tiny_llama(), clm_objective(), cfg, tmp_path, flops_per_token=1.0)
    assert summary.compile["setting"] == "auto" and summary.compile["choice"] in ("compiled", "eager")
    assert set(summary.compile["ms"]) == {"eager", "compiled"}
    faster = min(summary.compile["ms"], key=summary.compile["ms"].get)
    assert summary.compile["choice"] == faster
    assert checkpoint.read_state(checkpoint.latest(tmp_path))["compile"] == faster  # a resumed run keeps it


def test_compile_times_eager_attention_beside_the_uncompiled_choice(tmp_path, monkeypatch):
    """Uncompiled, an SDPA kernel can win; compiled, inductor fuses eager attention: both are compiled
    and timed, and the kernel of the fastest step is the one the run trains with and records."""
    from lmforge import attention as attention_mod

    def pretend_sdpa_won(model, step, dtype, device, repeats=3, announce=False):
        attention_mod.use(model, "sdpa")
        return "sdpa", {"sdpa": 1.0, "sdpa_fp32": 2.0, "eager": 3.0}

    monkeypatch.setattr(attention_mod, "choose", pretend_sdpa_won)
    cfg = TrainConfig(max_steps=2, eval_every=1000, precision="bf16", warmup_steps=1, compile="auto", save_every=0)
    model = tiny_llama()
    summary = fit(model, clm_objective(), cfg, tmp_path, flops_per_token=1.0)
    info = summary.compile
    assert set(info["ms"]["compiled_by_attention"]) == {"eager", "sdpa"}
    assert info["ms"]["compiled"] == min(info["ms"]["compiled_by_attention"].values())
    if info["choice"] == "compiled":
        assert info["ms"]["compiled"] < info["ms"]["eager"]
        expected = min(info["ms"]["compiled_by_attention"], key=info["ms"]["compiled_by_attention"].get)
    else:
        assert info["ms"]["eager"] <= info["ms"]["compiled"]
        expected = "sdpa"
    assert summary.attention == expected == model.config._attn_implementation
    assert checkpoint.read_state(checkpoint.latest(tmp_path))["attention"] == expected  # a resume keeps it


def test_compile_flag_parses_from_yaml_and_cli():
    assert config_mod.resolve(PretrainConfig, None, {"train.compile": "true"}).train.compile is True
    cfg = config_mod.resolve(PretrainConfig, None, {"train.compile": "auto"})
    assert cfg.train.compile == "auto"
    assert config_mod.from_dict(PretrainConfig, {"train": {"compile": False}}).train.compile is False
    with pytest.raises(LmforgeError, match="train.compile"):
        config_mod.resolve(PretrainConfig, None, {"train.compile": "maybe"})


def test_a_null_learning_rate_outside_fine_tuning_is_an_error(tmp_path):
    with pytest.raises(
        LmforgeError,
        match=r"train\.lr is null here, and only fine-tuning picks a value for null; give one, e\.g\. --train\.lr 0\.001",
    ):
        fit(tiny_llama(), clm_objective(), TrainConfig(max_steps=1, lr=None), tmp_path)


def test_resume_with_nothing_to_resume_is_an_error(small_text, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["pretrain", "--out", str(empty), "--resume", "true", "--data", str(small_text)]) == 2
    assert "there is no run to resume in" in capsys.readouterr().err


INTERRUPTED = """
import sys
from conftest import tiny_overrides
from lmforge import cli
flags = []
for key, value in tiny_overrides(sys.argv[1], sys.argv[2], **{"train.max_steps": 3000, "train.save_every": 0, "train.eval_every": 0,
                                                              "train.log_every": 1, "train.eval_windows": 4}).items():
    flags += [f"--{key}"] + (value if isinstance(value, list) else [str(value)])
sys.exit(cli.main(["pretrain", *flags]))
"""


def test_ctrl_c_checkpoints_the_step_and_resume_matches(small_text, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED, str(small_text), str(out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline and child.poll() is None:
        if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) >= 20:
            break
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == 130, stderr[-2000:]
    step = checkpoint.read_state(checkpoint.latest(out))["step"]
    assert f"interrupted after step {step}; checkpoint" in stderr and "--resume true --out" in stderr
    assert rows_of(out)[-1]["step"] == step  # the checkpoint holds the last logged step
    # the same budget (and so the same schedule) stopped a few steps later on both sides
    common = {
        "train.max_steps": 3000,
        "train.stop_at_step": step + 5,
        "train.save_every": 0,
        "train.eval_every": 0,
        "train.log_every": 1,
        "train.eval_windows": 4,
    }
    whole = tmp_path / "whole"
    tiny_pretrain(small_text, whole, **common)
    tiny_pretrain(small_text, out, resume=True, **common)
    assert [r["loss"] for r in rows_of(out)] == [r["loss"] for r in rows_of(whole)]
    assert rows_of(out)[-1]["step"] == step + 5


def test_ctrl_c_before_any_checkpoint_says_nothing_was_kept(tmp_path, monkeypatch, capsys):
    from lmforge import pretrain

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "run", interrupted)
    assert cli.main(["pretrain", "--out", str(tmp_path / "run"), "--data", "builtin:tinyshakespeare"]) == 130
    assert "interrupted; no checkpoint was written" in capsys.readouterr().err
