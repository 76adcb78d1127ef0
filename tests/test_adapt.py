"""`lmforge adapt`: continued pretraining of a (tiny, headless) BERT, its head, vocabulary extension,
task-adaptive text, whole-word masking and the bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import BUILTIN_TEXT, argv_of, sentiment_rows

from lmforge import cli, objectives
from lmforge import config as config_mod
from lmforge.adapt import AdaptConfig, extend_vocabulary, task_file_kind, task_texts
from lmforge.errors import LmforgeError
from lmforge.tasks.data import FormatConfig


def domain_text(folder: Path) -> Path:
    path = folder / "domain.txt"
    path.write_text(BUILTIN_TEXT.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    return path


def adapt_flags(model: Path, data: list[Path], out: Path, **extra) -> list[str]:
    overrides = {
        "model": str(model),
        "data": [str(d) for d in data],
        "out": str(out),
        "context": 64,
        "eval_tokens": 2_000,
        "pseudo_perplexity_tokens": 200,
        "train.max_steps": 6,
        "head_steps": 3,
        "train.max_minutes": "null",
        "train.batch_size": 8,
        "train.precision": "fp32",
        "train.log_every": 2,
        **extra,
    }
    return ["adapt", *argv_of(overrides)]


@pytest.fixture(scope="module")
def adapted(tiny_bert, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("adapt")
    out = folder / "run"
    assert cli.main(adapt_flags(tiny_bert, [domain_text(folder)], out, **{"tokenizer.extend": 8})) == 0
    return out


def test_headless_model_gets_a_tied_mlm_head_and_the_run_reports_before_and_after(adapted):
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    base = json.loads((adapted / "base" / "adapt_base.json").read_text())
    assert any("cls.predictions" in line for line in base["initialised"])
    assert "the output projection is tied to the input embeddings" in base["initialised"] and base["head_initialised"]
    model = AutoModelForMaskedLM.from_pretrained(str(adapted / "final"))
    assert model.cls.predictions.decoder.weight.data_ptr() == model.bert.embeddings.word_embeddings.weight.data_ptr()
    AutoModelForSequenceClassification.from_pretrained(str(adapted / "final"), num_labels=2)
    summary = json.loads((adapted / "report.json").read_text())
    for when in ("before", "after"):
        metrics = summary[when]["domain (valid)"]
        assert {"masked_accuracy", "masked_loss", "pseudo_perplexity"} <= set(metrics)
    assert (
        summary["before"] != summary["after"]
        and summary["training"]["steps"] == 6
        and summary["training"]["training_seconds"] > 0
    )
    html = (adapted / "report.html").read_text()
    assert "Before and after" in html and "<svg" in html and "Vocabulary extension" in html
    assert "no pretraining head: a new one was trained alone (body frozen) for 3 steps" in html
    head = json.loads((adapted / "head" / "report.json").read_text())
    assert head["steps"] == 3 and summary["head_fit"]["steps"] == 3


def test_the_head_fit_trains_only_the_head(tiny_bert, adapted):
    from safetensors.torch import load_file

    base, fitted = load_file(str(adapted / "base" / "model.safetensors")), load_file(str(adapted / "head" / "final" / "model.safetensors"))  # fmt: skip
    body = [k for k in base if k.startswith("bert.")]
    head = [k for k in base if k.startswith("cls.") and k in fitted]
    assert body and all(torch.equal(base[k], fitted[k]) for k in body)
    assert any(not torch.equal(base[k], fitted[k]) for k in head)


def test_without_a_head_fit_the_before_scores_are_called_chance():
    from lmforge.adapt import head_note

    assert "chance level" in head_note({"head_initialised": True}, 0)
    assert "for 200 steps" in head_note({"head_initialised": True}, 200)
    assert head_note({"head_initialised": False}, 200) is None


def test_vocabulary_extension_keeps_old_ids_and_vectors(tiny_bert, adapted):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    old_tok, new_tok = (
        AutoTokenizer.from_pretrained(str(tiny_bert)),
        AutoTokenizer.from_pretrained(str(adapted / "base")),
    )
    vocab = json.loads((adapted / "base" / "adapt_base.json").read_text())["vocabulary"]
    assert vocab["added"] == 8 and len(new_tok) == len(old_tok) + 8
    assert vocab["fertility_after"] < vocab["fertility_before"]
    old_vocab, new_vocab = old_tok.get_vocab(), new_tok.get_vocab()
    assert all(new_vocab[t] == i for t, i in old_vocab.items())
    word = vocab["examples"][0]
    assert len(old_tok(word, add_special_tokens=False).input_ids) >= 3
    assert new_tok(word, add_special_tokens=False).input_ids == [new_tok.convert_tokens_to_ids(word)]
    before = AutoModelForMaskedLM.from_pretrained(str(tiny_bert)).get_input_embeddings().weight
    base = AutoModelForMaskedLM.from_pretrained(str(adapted / "base")).get_input_embeddings().weight
    assert torch.equal(base[: len(old_tok)], before)


def test_new_rows_are_the_mean_of_their_pieces(tiny_bert):
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    model = AutoModelForMaskedLM.from_pretrained(str(tiny_bert))
    pieces = tokenizer("interleukinase", add_special_tokens=False).input_ids
    extend_vocabulary(model, tokenizer, ["interleukinase"])
    new_id = tokenizer.convert_tokens_to_ids("interleukinase")
    weight = model.get_input_embeddings().weight
    assert torch.allclose(weight[new_id], weight[pieces].mean(0))
    assert torch.allclose(model.cls.predictions.bias[new_id], model.cls.predictions.bias[pieces].mean())


def test_finetune_takes_the_adapted_run_folder(adapted, sentiment, tmp_path):
    train, dev = sentiment
    flags = ["finetune", "--model", str(adapted), "--train_file", str(train), "--valid_file", str(dev)]
    assert cli.main([*flags, "--out", str(tmp_path / "ft"), *"--train.max_steps 2 --train.precision fp32".split()]) == 0
    assert json.loads((tmp_path / "ft" / "report.json").read_text())["model"] == str(adapted / "final")


def test_resume_of_a_finished_adaptation_is_an_error(adapted, capsys):
    assert cli.main(["adapt", "--resume", "true", "--out", str(adapted)]) == 2
    assert "already finished" in capsys.readouterr().err


def test_task_files_give_their_text(tmp_path):
    table = tmp_path / "train.tsv"
    table.write_text("sentence\tlabel\n" + "".join(f"{t}\t{l}\n" for t, l in sentiment_rows(5, 0)), encoding="utf-8")
    conll = tmp_path / "ner.txt"
    conll.write_text("-DOCSTART- O\n\nAspirin\tB-Chem\nhelps\tO\n\nIt\tO\nworks\tO\n", encoding="utf-8")
    prose = tmp_path / "prose.txt"
    prose.write_text("A plain sentence about aspirin.\nAnother one.\n", encoding="utf-8")
    assert [task_file_kind(p) for p in (table, conll, prose)] == ["table", "conll", None]
    assert task_texts(table, "table", FormatConfig()) == [t for t, _ in sentiment_rows(5, 0)]
    assert task_texts(conll, "conll", FormatConfig()) == ["Aspirin helps", "It works"]


def test_whole_word_masking_masks_every_piece_of_a_word_and_never_a_special(tiny_bert):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert))
    starts = objectives.word_starts(tokenizer)
    text = "immunohistochemistry of the interleukin receptor " * 40
    ids = torch.tensor([tokenizer(text, add_special_tokens=False).input_ids[:126]] * 64)
    mlm = objectives.MaskedLM(
        ids.numpy().ravel(), 128, 64, 0, tokenizer.mask_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
        len(tokenizer), tuple(tokenizer.all_special_ids), 0.15, word_starts=starts,
    )  # fmt: skip
    batch = mlm.mask(mlm._wrap(ids), torch.Generator().manual_seed(0))
    chosen = batch["labels"] != objectives.IGNORE
    rows = mlm._wrap(ids)
    assert not chosen[rows == tokenizer.cls_token_id].any() and not chosen[rows == tokenizer.sep_token_id].any()
    continues = ~starts[rows]
    # a continuation piece is chosen exactly when the piece before it is
    assert torch.equal(chosen[:, 1:][continues[:, 1:]], chosen[:, :-1][continues[:, 1:]])
    assert 0.10 < chosen.float().mean() < 0.20


@pytest.mark.parametrize(
    "extra,message",
    [
        ({"data": []}, "--data is required"),
        ({"model": "no/such/model"}, "model folder not found"),
        ({"context": 4096}, "--context 4096"),
        ({"eval_general": "no/such/general.txt"}, "--eval_general no/such/general.txt: no such file"),
        ({"tokenizer.extend": -1}, "--tokenizer.extend must be >= 0"),
        ({"split.test_fraction": 0.1}, "text stages hold out valid only"),
        ({"data": ["no/such/domain.txt"]}, "--data no/such/domain.txt: no such file or folder"),
    ],
)
def test_bad_inputs_are_one_line_errors_before_any_work(tiny_bert, tmp_path, extra, message, capsys):
    overrides = {"model": str(tiny_bert), "data": [str(domain_text(tmp_path))], "out": str(tmp_path / "out")} | extra
    if not overrides["data"]:
        del overrides["data"]
    assert cli.main(["adapt", *argv_of(overrides)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_extension_of_a_causal_model_is_refused(tmp_path):
    from lmforge.adapt import check

    gpt = tmp_path / "gpt"
    from tokenizers import Tokenizer, models
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    GPT2LMHeadModel(GPT2Config(vocab_size=10, n_embd=16, n_layer=1, n_head=2)).save_pretrained(str(gpt))
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0}, unk_token="a"))).save_pretrained(
        str(gpt)
    )
    config = config_mod.resolve(AdaptConfig, None, {"model": str(gpt), "data": ["x"], "tokenizer.extend": 5})
    with pytest.raises(LmforgeError, match="--tokenizer.extend is for masked LMs"):
        check(config)


def test_resume_restarts_a_training_part_killed_before_its_first_checkpoint(adapted, tmp_path):
    import shutil

    copy = tmp_path / "killed"
    shutil.copytree(adapted, copy)
    for part in ("train/checkpoints", "train/final", "final"):
        shutil.rmtree(copy / part)
    for name in ("train/report.json", "train/report.html", "report.json", "report.html"):
        (copy / name).unlink()
    for manifest_path in (copy / "manifest.json", copy / "train" / "manifest.json"):  # neither run ended
        manifest = json.loads(manifest_path.read_text())
        manifest_path.write_text(json.dumps(manifest | {"finished": None}))
    assert cli.main(["adapt", "--resume", "true", "--out", str(copy)]) == 0
    assert (copy / "train" / "final" / "config.json").is_file() and (copy / "report.json").is_file()
