#!/usr/bin/env bash
# The README's pipeline tour at tiny scale: every stage once, each leaving a folder the next reads.
#   bash scripts/tour.sh [OUT]       (default runs/tour; about a minute on 2 CPU cores)
# LMFORGE overrides the command (tests run `python -m lmforge`).
set -euo pipefail
OUT="${1:-runs/tour}"
LMFORGE="${LMFORGE:-lmforge}"
PYTHON="${PYTHON:-python3}"
mkdir -p "$OUT"
run() { echo "+ lmforge $*" >&2; $LMFORGE "$@"; }

# docs/: documents in four formats, cut from the packaged tinyshakespeare, and a labelled task
# (is a line a question?) split into train/dev/test TSV files
"$PYTHON" - "$OUT" <<'PY'
import html, json, pathlib, random, sys
import lmforge
out = pathlib.Path(sys.argv[1])
text = (pathlib.Path(lmforge.__file__).parent / "data" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:240_000]
scenes = [s.strip() for s in text.split("\n\n") if s.strip()]
docs = out / "docs"
docs.mkdir(exist_ok=True)
quarter = len(scenes) // 4
(docs / "act1.txt").write_text("\n\n".join(scenes[:quarter]) + "\n", encoding="utf-8")
(docs / "act2.md").write_text("# Act two\n\n" + "\n\n".join(scenes[quarter:2 * quarter]) + "\n", encoding="utf-8")
(docs / "act3.html").write_text("<html><body><h1>Act three</h1>" + "".join(f"<p>{html.escape(s)}</p>" for s in scenes[2 * quarter:3 * quarter]) + "</body></html>", encoding="utf-8")
with open(docs / "act4.jsonl", "w", encoding="utf-8") as handle:
    for s in scenes[3 * quarter:]:
        handle.write(json.dumps({"text": s}) + "\n")
lines = sorted({l.strip() for l in text.splitlines() if len(l.split()) >= 4 and not l.endswith(":")})
random.Random(0).shuffle(lines)
questions = [l for l in lines if l.endswith("?")][:250]
others = [l for l in lines if not l.endswith("?")][: len(questions)]
rows = [f"{l}\tquestion" for l in questions] + [f"{l}\tother" for l in others]  # balanced: the majority class scores 50%
random.Random(1).shuffle(rows)
third = len(rows) // 5
for name, part in (("train", rows[: 3 * third]), ("dev", rows[3 * third : 4 * third]), ("test", rows[4 * third :])):
    (out / f"{name}.tsv").write_text("sentence\tlabel\n" + "\n".join(part) + "\n", encoding="utf-8")
PY

# corpus/: cleaned, deduplicated snippets split into train/valid/test JSONL, report.html, dropped.jsonl
run corpus --data "$OUT/docs" --split.valid_fraction 0.2 --split.test_fraction 0.1 --out "$OUT/corpus"   # 57 documents: 5% valid could be none
# tok/: an HF fast tokenizer (tokenizer.json) with BERT's special tokens, so one vocabulary serves both models
run tokenizer --data "$OUT/corpus" --objective mlm --tokenizer.kind wordpiece --tokenizer.vocab_size 800 --out "$OUT/tok"
# shards/: the corpus as packed uint16 token ids (train.bin, valid.bin, meta.json)
run shards --data "$OUT/corpus" --tokenizer "$OUT/tok" --out "$OUT/shards"
# gpt/: a causal LM pretrained from the shards: checkpoints/, final/ (HF folder), metrics.jsonl, report.html
run pretrain --shards "$OUT/shards" --tokenizer.path "$OUT/tok" --model.family llama --model.preset tiny --model.context 32 \
    --train.max_steps 30 --train.batch_size 8 --train.eval_every 0 --train.eval_windows 16 --train.precision fp32 --out "$OUT/gpt"
# bert/: a masked LM pretrained from the same shards, for fine-tuning below
run pretrain --shards "$OUT/shards" --tokenizer.path "$OUT/tok" --train.objective mlm --model.family bert --model.preset tiny \
    --model.context 32 --train.max_steps 30 --train.batch_size 8 --train.eval_every 0 --train.eval_windows 16 --train.precision fp32 --out "$OUT/bert"
# gpt-eval/: perplexity and bits per byte of the corpus's valid split (report.json says what was scored)
run evaluate --model "$OUT/gpt" --data "$OUT/corpus" --out "$OUT/gpt-eval"
# (prints) a sample from the causal LM; fill-mask predictions from the masked LM
run generate --model "$OUT/gpt" --prompt "ROMEO:" --max_new_tokens 20
run fill-mask --model "$OUT/bert" --text "to be or not to [MASK]"
# clf/: the masked LM fine-tuned to tell questions: best/, final/ (with labels), test metrics in report.json
run finetune --task classification --model "$OUT/bert" --train_file "$OUT/train.tsv" --valid_file "$OUT/dev.tsv" --test_file "$OUT/test.tsv" \
    --epochs 10 --train.batch_size 16 --train.lr 2e-3 --train.precision fp32 --out "$OUT/clf"
# clf-eval/: per-class table, confusion matrix and errors.jsonl on the dev file
run evaluate --task classification --model "$OUT/clf" --data "$OUT/dev.tsv" --out "$OUT/clf-eval"
# pred/: one prediction row per input line, with its scores
run predict --model "$OUT/clf" --input "$OUT/test.tsv" --out "$OUT/pred"
echo "tour done: $OUT" >&2
