"""The command line: whole flag names only, one-line errors with the nearest flag, run folders as models."""

from __future__ import annotations

import pytest

from lmforge import cli


def _one_line_error(capsys, argv: list[str]) -> str:
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_a_shortened_flag_is_not_taken_for_another(tmp_path, capsys):
    # argparse's abbreviations took --train.max_minute for --train.max_minutes and started a full run
    err = _one_line_error(capsys, ["pretrain", "--data", str(tmp_path), "--train.max_minute", "3"])
    assert "unknown option --train.max_minute (did you mean --train.max_minutes?)" in err
    assert "lmforge pretrain --help" in err


def test_a_prefix_of_a_flag_lists_what_it_could_mean(tmp_path, capsys):
    err = _one_line_error(capsys, ["pretrain", "--data", str(tmp_path), "--model.l", "2"])
    assert "--model.layers" in err and "unknown option --model.l" in err


def test_an_unknown_flag_without_a_near_one_says_so(tmp_path, capsys):
    err = _one_line_error(capsys, ["finetune", "--bogus", "1"])
    assert "unknown option --bogus" in err and "did you mean" not in err


def test_a_flag_without_its_value_is_one_line(capsys):
    err = _one_line_error(capsys, ["pretrain", "--train.lr"])
    assert "--train.lr" in err and "expected one argument" in err
    assert "usage:" not in err


@pytest.mark.parametrize("stage", ["generate", "fill-mask", "evaluate"])
def test_a_missing_model_folder_names_it(stage, tmp_path, capsys):
    argv = [stage, "--model", str(tmp_path / "nope")]
    argv += ["--data", str(tmp_path)] if stage == "evaluate" else []
    err = _one_line_error(capsys, argv)
    assert "nope" in err and "model folder" in err


@pytest.mark.parametrize("stage", ["corpus", "pretrain", "finetune", "evaluate", "predict", "shards", "tokenizer"])
def test_out_that_is_a_file_is_one_line_and_leaves_it_alone(stage, tmp_path, capsys):
    existing = tmp_path / "notes.txt"
    existing.write_text("keep me\n")
    err = _one_line_error(capsys, [stage, "--out", str(existing)])
    assert f"--out {existing} is a file, not a folder" in err
    assert existing.read_text() == "keep me\n"


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
@pytest.mark.parametrize(
    "flag, value, wanted",
    [
        ("--train.lr", "-0.001", "must be a positive number"),
        ("--train.batch_size", "0", "must be at least 1"),
        ("--train.beta2", "1.5", "must be in [0, 1)"),
        ("--train.max_steps", "0", "must be at least 1, or null"),
    ],
)
def test_meaningless_training_values_fail_before_any_data_is_read(
    stage, flag, value, wanted, small_text, tmp_path, capsys
):
    out = tmp_path / "run"
    data = (
        ["--data", str(small_text)]
        if stage == "pretrain"
        else ["--model", "minilm", "--train_file", str(small_text), "--valid_file", str(small_text)]
    )
    err = _one_line_error(
        capsys,
        [
            stage,
            *data,
            flag,
            value,
            "--out",
            str(out),
            *(["--train.max_steps", "5"] if flag != "--train.max_steps" else []),
        ],
    )
    assert f"{flag} {value}: {wanted}" in err
    assert not out.exists()


def test_pretrain_checks_the_tokenizer_settings_before_reading(small_text, tmp_path, capsys):
    err = _one_line_error(
        capsys,
        [
            "pretrain",
            "--data",
            str(small_text),
            "--tokenizer.kind",
            "bpe",
            "--tokenizer.vocab_size",
            "100",
            "--train.max_steps",
            "5",
            "--out",
            str(tmp_path / "run"),
        ],
    )
    assert "--tokenizer.vocab_size 100: a bpe vocabulary needs at least 260" in err
    assert not (tmp_path / "run").exists()
