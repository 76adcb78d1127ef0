"""`lmforge corpus`: turn a collection of documents into the corpus folder later stages read.

    documents (txt md html pdf jsonl csv tsv docx, .gz) -> extract -> clean -> filter
        -> deduplicate (exact + MinHash LSH) -> documents or snippets -> train/valid/test shards

The output folder holds `train-00000.jsonl`, `valid-00000.jsonl`, `test-00000.jsonl` (one JSON
object per line: text, source, doc_id, meta), `dropped.jsonl` (one line per document left out:
source, position, reason), `manifest.json`, `report.json` and `report.html`.
"""

from lmforge.corpus.config import CorpusConfig
from lmforge.corpus.pipeline import run

__all__ = ["CorpusConfig", "run"]
