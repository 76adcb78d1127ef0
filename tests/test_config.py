import pytest

from lmforge import cli
from lmforge import config as config_mod
from lmforge.errors import LmforgeError
from lmforge.pretrain import PretrainConfig

RECIPES = sorted(config_mod.RECIPES.glob("*.yaml"))


def test_recipes_exist():
    names = {p.name for p in RECIPES}
    assert {"shakespeare_char.yaml", "cram_bert_tiny.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(recipe):
    cfg = config_mod.resolve(PretrainConfig, recipe)
    assert cfg.train.batch_size > 0
    assert cfg.train.budget().is_set()


def test_shakespeare_recipe_has_nanogpt_shape():
    cfg = config_mod.resolve(PretrainConfig, [p for p in RECIPES if p.name == "shakespeare_char.yaml"][0])
    assert (cfg.model.layers, cfg.model.heads, cfg.model.width, cfg.model.context) == (4, 4, 128, 64)
    assert (cfg.train.batch_size, cfg.train.max_steps, cfg.train.lr, cfg.train.min_lr) == (12, 2000, 1e-3, 1e-4)
    assert cfg.tokenizer.kind == "char" and cfg.model.dropout == 0.0 and cfg.split.valid_fraction == 0.1


def test_dotted_overrides_are_typed():
    cfg = config_mod.resolve(
        PretrainConfig,
        None,
        {"train.lr": "3e-4", "train.max_steps": "1_000", "train.compile": "true", "data": ["a", "b"]},
    )
    assert cfg.train.lr == 3e-4 and cfg.train.max_steps == 1000 and cfg.train.compile is True and cfg.data == ["a", "b"]


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(LmforgeError, match=r"r\.yaml: unknown config key 'train\.lrr'; did you mean 'train\.lr'"):
        config_mod.resolve(PretrainConfig, recipe)


def test_wrong_type_names_field_and_expected_type():
    with pytest.raises(LmforgeError, match=r"'train\.max_steps': got 'many', expected int"):
        config_mod.resolve(PretrainConfig, None, {"train.max_steps": "many"})
    with pytest.raises(
        LmforgeError, match=r"'tokenizer\.kind': got 'bytes', expected bpe \| wordpiece \| unigram \| char"
    ):
        config_mod.resolve(PretrainConfig, None, {"tokenizer.kind": "bytes"})


def test_bad_yaml_names_file_and_line(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  lr: [1,\n")
    with pytest.raises(LmforgeError, match=r"bad\.yaml:\d+: not valid YAML"):
        config_mod.resolve(PretrainConfig, recipe)


def test_cli_help_lists_stages_and_options(capsys):
    assert cli.main([]) == 0
    text = capsys.readouterr().out
    for stage in ("tokenizer", "shards", "pretrain", "evaluate", "generate", "fill-mask", "quickstart"):
        assert stage in text
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--train.lr",
        "--train.max_minutes",
        "--model.family",
        "--tokenizer.kind",
        "--data",
        "--out",
        "--resume",
        "--config",
    ):
        assert flag in text


def test_cli_user_error_is_one_line_exit_2(tmp_path, capsys):
    code = cli.main(
        ["pretrain", "--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "run"), "--train.max_steps", "1"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "missing.txt" in err and "no such file" in err


def test_unknown_stage_is_an_error():
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["bogus"])
    assert exit_info.value.code == 2


def test_a_section_built_by_a_default_factory_keeps_its_defaults_under_overrides(capsys):
    from lmforge.finetune import FinetuneConfig

    cfg = config_mod.resolve(FinetuneConfig, None, {"train.lr": "1e-3", "seeds": ["1,2"]})
    assert cfg.train.lr == 1e-3 and cfg.seeds == [1, 2]
    assert (cfg.train.min_lr, cfg.train.schedule, cfg.train.seed, cfg.train.warmup_steps) == (
        0.0,
        "linear",
        42,
        None,
    )  # fine-tuning's, not pretraining's
    with pytest.raises(SystemExit):
        cli.main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--train_file" in text and "--train.lr" in text and "default: 42]" in text


def test_a_packaged_recipe_is_found_by_name(tmp_path):
    cfg = config_mod.resolve(PretrainConfig, "shakespeare_char")
    assert cfg.model.width == 128 and cfg.data == ["builtin:tinyshakespeare"]
    assert config_mod.resolve(PretrainConfig, "shakespeare_char.yaml").model.width == 128
    with pytest.raises(
        LmforgeError,
        match="not found; pass a recipe file to --config, or a packaged recipe: cram_bert_tiny, shakespeare_char",
    ):
        config_mod.resolve(PretrainConfig, "shakespeare_chr")
