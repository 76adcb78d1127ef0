import json
import math
import shutil

import numpy as np
import pytest
import torch
from conftest import tiny_pretrain
from corpus_helpers import prose, run_corpus
from transformers import AutoModelForCausalLM

from lmforge import cli, documents, objectives, shards
from lmforge import config as config_mod
from lmforge import model as model_mod
from lmforge import tokenizer as tokenizer_mod
from lmforge.documents import ReadConfig, SplitConfig
from lmforge.errors import LmforgeError
from lmforge.evaluate import (
    EvaluateConfig,
    causal_scores,
    masked_scores,
    pseudo_log_likelihood,
    read_tokens,
    whole_documents,
)
from lmforge.evaluate import run as evaluate


def evaluate_report(out, **values) -> dict:
    evaluate(config_mod.resolve(EvaluateConfig, None, {"out": str(out), **values}))
    return json.loads((out / "report.json").read_text())


def trained_tokenizer(text, kind: str, objective: str, vocab_size: int = 300):
    cfg = tokenizer_mod.TokenizerConfig(kind=kind, vocab_size=vocab_size, min_frequency=1)
    return tokenizer_mod.train(
        documents.iter_split(documents.resolve_sources([text]), "train", SplitConfig(valid_fraction=0.1)),
        cfg,
        objective,
    )


def model_folder(folder, tokenizer, family: str, objective: str, context: int = 32):
    """A random-weight model saved with its tokenizer: a folder like a run's final/."""
    torch.manual_seed(0)
    model = model_mod.build(model_mod.ModelConfig(family=family, preset="tiny", context=context), tokenizer, objective)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def clm_model(small_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("clm")
    tiny_pretrain(small_text, out, **{"train.max_steps": 30})
    return out / "final"


@pytest.fixture(scope="module")
def mlm_model(small_text, tmp_path_factory):
    out = tmp_path_factory.mktemp("mlm")
    mlm = {"train.objective": "mlm", "tokenizer.kind": "wordpiece", "tokenizer.vocab_size": 300, "train.max_steps": 20}
    tiny_pretrain(small_text, out, **mlm)
    return out / "final"


@pytest.fixture(scope="module")
def unigram_llama(small_text, tmp_path_factory):
    """A random Llama with a Unigram (Metaspace) tokenizer: the kind whose ids depend on encoding line by line."""
    return model_folder(
        tmp_path_factory.mktemp("unigram"), trained_tokenizer(small_text, "unigram", "clm"), "llama", "clm"
    )


@pytest.fixture(scope="module")
def char_mlm_tokenizer(small_text):
    return trained_tokenizer(small_text, "char", "mlm", vocab_size=500)


@pytest.fixture(scope="module")
def corpus_folder(tmp_path_factory):
    """A real `lmforge corpus` folder with documents in each of train, valid and test."""
    inputs = tmp_path_factory.mktemp("corpus_in")
    for i in range(30):
        (inputs / f"doc{i}.txt").write_text(prose(i, sentences=6) + "\n")
    folder, records, _ = run_corpus(
        [inputs], tmp_path_factory.mktemp("corpus") / "out", **{"split.valid_fraction": 0.3, "split.test_fraction": 0.3}
    )
    assert all(records[split] for split in ("train", "valid", "test"))
    return folder, records


def test_sliding_window_scores_every_token_once():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=30,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=64,
        )
    ).eval()
    tokens = np.random.default_rng(0).integers(0, 30, size=101)
    with torch.no_grad():
        nll, count = causal_scores(model, tokens, context=200, stride=100, batch_size=4, device="cpu")
        ids = torch.from_numpy(tokens).unsqueeze(0)
        reference = torch.nn.functional.cross_entropy(model(ids[:, :-1]).logits[0], ids[0, 1:], reduction="sum")
        assert count == 100 and nll == pytest.approx(float(reference), rel=1e-5)
        nll, count = causal_scores(model, tokens, context=16, stride=8, batch_size=4, device="cpu")
        assert count == 100  # each of the 100 targets predicted exactly once


def test_evaluate_clm_reports_perplexity_and_bits_per_byte(clm_model, small_text, tmp_path):
    report = evaluate_report(tmp_path, model=str(clm_model), data=[str(small_text)])
    assert report["perplexity"] == pytest.approx(math.exp(report["loss"]))
    assert report["loss"] < math.log(60)
    # char-level ASCII text: one token per byte, so bits/byte = loss / ln 2 (up to the boundary token)
    assert report["bits_per_byte"] == pytest.approx(report["loss"] / math.log(2), rel=0.01)
    # what was scored: the one plain file, whole, every character plus the closing boundary token
    size = small_text.stat().st_size
    assert report["data"] == [str(small_text)] and report["split"] == "whole"
    assert report["tokens"] == size + 1 and report["bytes"] == size and report["cut_by_max_tokens"] is False
    assert "What was scored" in (tmp_path / "report.html").read_text()


def test_evaluate_reads_the_tokens_the_shards_hold(unigram_llama, small_text, tmp_path):
    """Unigram/Metaspace marks each line start with '▁' when encoded line by line (training, shards);
    evaluation must see the same ids, and a boundary token after every document as the shards have."""
    text = tmp_path / "play.txt"
    text.write_text(small_text.read_text()[:3000])
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(
        "".join(
            json.dumps({"text": f"Second Citizen:\nWe are accounted poor citizens, {i}.\n"}) + "\n" for i in range(3)
        )
    )
    sources = documents.resolve_sources([text, jsonl])
    shards.build(sources, unigram_llama, SplitConfig(valid_fraction=0.0), ReadConfig(), tmp_path / "shards")
    held = shards.TokenShards.open(tmp_path / "shards").train
    scored = read_tokens(whole_documents(sources, ReadConfig()), tokenizer_mod.load(unigram_llama), None)
    assert scored.tokens.tolist() == held.tolist()
    assert scored.bytes == text.stat().st_size + sum(
        len(json.loads(line)["text"].encode()) for line in jsonl.read_text().splitlines()
    )


def test_evaluate_loss_equals_the_training_objective_loss(unigram_llama, small_text, tmp_path):
    """Five non-overlapping windows (stride = context) score each token once with the same left
    context as the training objective's windows over the shards' tokens, so the losses agree."""
    text = tmp_path / "play.txt"
    text.write_text(small_text.read_text()[:3000])
    context, windows = 32, 5
    report = evaluate_report(
        tmp_path / "eval", model=str(unigram_llama), data=[str(text)], stride=context, max_tokens=windows * context + 1
    )
    shards.build(
        documents.resolve_sources([text]),
        unigram_llama,
        SplitConfig(valid_fraction=0.0),
        ReadConfig(),
        tmp_path / "shards",
    )
    held = np.asarray(shards.TokenShards.open(tmp_path / "shards").train[: windows * context + 1], dtype=np.int64)
    objective = objectives.CausalLM(held, context, windows, seed=0)
    batch = {"tokens": objectives.gather(held, np.arange(windows) * context, objective.window)}
    model = model_mod.load(unigram_llama, AutoModelForCausalLM).eval()
    with torch.no_grad():
        loss = float(objective.loss(model, batch)) / objective.targets(batch)
    assert report["predicted_tokens"] == windows * context and report["cut_by_max_tokens"] is True
    assert report["loss"] == pytest.approx(loss, rel=1e-5)


def test_max_tokens_cut_counts_the_bytes_of_the_scored_part_only(clm_model, tmp_path):
    text = tmp_path / "accents.txt"
    text.write_text("héllo wörld, ça va?\n" * 20, encoding="utf-8")  # char level: one token per character
    tokenizer = tokenizer_mod.load(clm_model)
    scored = read_tokens(whole_documents(documents.resolve_sources([text]), ReadConfig()), tokenizer, 50)
    assert len(scored.tokens) == 50 and scored.cut
    assert scored.bytes == len(text.read_text(encoding="utf-8")[:50].encode("utf-8"))
    whole = read_tokens(whole_documents(documents.resolve_sources([text]), ReadConfig()), tokenizer, 20 * 20 + 1)
    assert not whole.cut and whole.bytes == text.stat().st_size


def test_evaluate_scores_the_valid_split_of_a_corpus_folder(clm_model, corpus_folder, tmp_path):
    folder, records = corpus_folder
    tokenizer = tokenizer_mod.load(clm_model)

    def tokens_of(split):
        return sum(len(tokenizer_mod.encode_text(tokenizer, r["text"])) + 1 for r in records[split])

    report = evaluate_report(tmp_path / "valid", model=str(clm_model), data=[str(folder)])
    assert report["split"] == "valid" and report["data"] == [str(p) for p in sorted(folder.glob("valid-*.jsonl"))]
    assert report["tokens"] == tokens_of("valid") and report["bytes"] == sum(
        len(r["text"].encode()) for r in records["valid"]
    )
    assert report["cut_by_max_tokens"] is False
    report = evaluate_report(tmp_path / "test", model=str(clm_model), data=[str(folder)], split="test")
    assert report["split"] == "test" and report["tokens"] == tokens_of("test")
    report = evaluate_report(tmp_path / "all", model=str(clm_model), data=[str(folder)], split="all")
    assert [p.split("/")[-1].split("-")[0] for p in report["data"]] == ["train", "valid", "test"]
    assert report["tokens"] == tokens_of("train") + tokens_of("valid") + tokens_of("test")
    # a cap on a corpus folder scores the first tokens of valid, never training text
    report = evaluate_report(tmp_path / "cap", model=str(clm_model), data=[str(folder)], max_tokens=100)
    assert report["split"] == "valid" and report["tokens"] == 100 and report["cut_by_max_tokens"] is True


def test_evaluate_bad_inputs_name_the_flag_and_the_fix(clm_model, mlm_model, corpus_folder, small_text, tmp_path):
    with pytest.raises(
        LmforgeError, match=r"--split test: only a corpus folder .* plain files, which are scored whole; drop --split"
    ):
        evaluate_report(tmp_path / "e1", model=str(clm_model), data=[str(small_text)], split="test")
    no_test = tmp_path / "corpus"
    shutil.copytree(corpus_folder[0], no_test)
    for path in no_test.glob("test-*.jsonl"):
        path.unlink()
    with pytest.raises(LmforgeError, match=rf"--data {no_test}: the corpus has no test split .*pick another --split"):
        evaluate_report(tmp_path / "e2", model=str(clm_model), data=[str(no_test)], split="test")
    with pytest.raises(
        LmforgeError, match=r"--pseudo_perplexity_tokens -1: must be 0 \(skip\), a positive count, or null"
    ):
        evaluate_report(tmp_path / "e3", model=str(mlm_model), data=[str(small_text)], pseudo_perplexity_tokens=-1)
    blank = tmp_path / "blank.txt"
    blank.write_text("   \n")  # WordPiece drops whitespace: only the boundary token is left
    with pytest.raises(
        LmforgeError,
        match=rf"--data: {blank}: no text to score \(1 token\(s\) after tokenizing\); give files with text",
    ):
        evaluate_report(tmp_path / "e4", model=str(mlm_model), data=[str(blank)])


def bias_only_bert(tokenizer, bias: torch.Tensor):
    """A tiny BERT whose masked-LM logits are `bias` at every position (the head's transform is zeroed)."""
    torch.manual_seed(0)
    model = model_mod.build(model_mod.ModelConfig(family="bert", preset="tiny", context=32), tokenizer, "mlm").eval()
    with torch.no_grad():
        model.cls.predictions.transform.LayerNorm.weight.zero_()
        model.cls.predictions.transform.LayerNorm.bias.zero_()
        model.cls.predictions.decoder.bias.copy_(bias)
    return model


def test_masked_scores_match_a_model_with_known_answers(char_mlm_tokenizer):
    """On a text of one repeated character, a model that always predicts it scores accuracy 1, one
    that always predicts another character scores 0, and both losses are log-softmax of the bias."""
    tokenizer = char_mlm_tokenizer
    a, b = tokenizer.convert_tokens_to_ids(["a", "b"])
    tokens = np.full(300, a, dtype=np.int64)
    vocab = len(tokenizer)
    for favourite, accuracy in ((a, 1.0), (b, 0.0)):
        bias = torch.zeros(vocab)
        bias[favourite] = 3.0
        model = bias_only_bert(tokenizer, bias)
        scores = masked_scores(
            model, tokenizer, tokens, context=32, batch_size=4, probability=0.15, seed=0, device="cpu"
        )
        expected_loss = float(torch.logsumexp(bias, 0) - bias[a])
        assert scores["masked_accuracy"] == accuracy
        assert scores["masked_loss"] == pytest.approx(expected_loss, rel=1e-5)
        assert 20 <= scores["masked_tokens"] <= 75  # 15% of 300 = 45, sd 6
        nll, count = pseudo_log_likelihood(model, tokenizer, tokens, 32, 16, "cpu")
        assert count == 300 and nll / count == pytest.approx(expected_loss, rel=1e-5)


def test_pseudo_perplexity_masks_each_token_in_turn(char_mlm_tokenizer, small_text):
    """Batched pseudo-log-likelihood equals the one-forward-per-token definition; special tokens
    (a document boundary here) are not scored; the shorter last row is scored too."""
    tokenizer = char_mlm_tokenizer
    context = 16
    torch.manual_seed(0)
    model = model_mod.build(
        model_mod.ModelConfig(family="bert", preset="tiny", context=context), tokenizer, "mlm"
    ).eval()
    ids = tokenizer_mod.encode_text(tokenizer, small_text.read_text()[:80])
    tokens = np.asarray(
        ids[:40] + [tokenizer.sep_token_id] + ids[40:75], dtype=np.int64
    )  # 76 tokens: 5 rows of 14, 1 of 6
    nll, count = pseudo_log_likelihood(model, tokenizer, tokens, context, batch_size=7, device="cpu")
    reference, scored = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens), context - 2):
            row = [tokenizer.cls_token_id] + tokens[start : start + context - 2].tolist() + [tokenizer.sep_token_id]
            for position, token in enumerate(row):
                if token in tokenizer.all_special_ids:
                    continue
                masked = torch.tensor([row[:position] + [tokenizer.mask_token_id] + row[position + 1 :]])
                reference -= float(model(input_ids=masked).logits[0, position].log_softmax(-1)[token])
                scored += 1
    assert count == scored == 75
    assert nll == pytest.approx(reference, rel=1e-5)


def test_evaluate_mlm_reports_masked_scores_and_pseudo_perplexity(mlm_model, small_text, tmp_path):
    report = evaluate_report(tmp_path, model=str(mlm_model), data=[str(small_text)], max_tokens=600)
    assert report["objective"] == "mlm" and report["tokens"] == 600 and report["cut_by_max_tokens"] is True
    assert report["masked_tokens"] == pytest.approx(0.15 * 600 * 30 / 32, abs=30)  # 18 windows of 30 (+[CLS] [SEP])
    assert report["pseudo_scored_tokens"] == 600  # the cut came before the first boundary token
    assert report["pseudo_perplexity"] == pytest.approx(math.exp(report["pseudo_loss"]))
    assert report["pseudo_perplexity"] < 300  # 20 steps of training beat uniform guessing over the 300-token vocabulary
    capped = evaluate_report(
        tmp_path / "capped", model=str(mlm_model), data=[str(small_text)], max_tokens=600, pseudo_perplexity_tokens=250
    )
    assert capped["pseudo_scored_tokens"] == 250 and capped["masked_loss"] == report["masked_loss"]
    skipped = evaluate_report(
        tmp_path / "skipped", model=str(mlm_model), data=[str(small_text)], max_tokens=600, pseudo_perplexity_tokens=0
    )
    assert "pseudo_perplexity" not in skipped


def test_evaluate_rejects_a_foreign_tokenizer(clm_model, small_text, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(clm_model, model_dir)
    cli.main(
        [
            "tokenizer",
            "--data",
            str(small_text),
            "--out",
            str(tmp_path / "bpe"),
            "--tokenizer.vocab_size",
            "400",
            "--tokenizer.min_frequency",
            "1",
        ]
    )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tmp_path / "bpe" / name, model_dir / name)
    with pytest.raises(LmforgeError, match=r"tokenizer has \d+ tokens but .*model has a vocabulary of \d+"):
        evaluate(
            config_mod.resolve(
                EvaluateConfig, None, {"model": str(model_dir), "data": [str(small_text)], "out": str(tmp_path / "e")}
            )
        )
