"""Labelled-data tasks for fine-tuning: readers, encoders, losses, post-processing and metrics.

    data.py            CSV/TSV/JSONL tables, CoNLL columns, SQuAD JSON; label maps
    classification.py  single sentences and pairs: multi-class, multi-label, regression
    ner.py             token classification, labels on the first sub-token of each word
    qa.py              extractive QA with doc stride; answers mapped back to character offsets
    metrics.py         accuracy, F1, MCC, Pearson/Spearman, seqeval entity F1, SQuAD EM/F1
    objective.py       the loop's objective over encoded features (length-grouped batches, dynamic padding)
    backbone.py        the pretrained model: --model sources, task heads, full / LoRA / head-only (cached states)
    evaluation.py      a fine-tuned model over a file: predictions, metrics, report.html, errors.jsonl
"""
