"""Fixtures for the corpus tests, built on the spot: English-like prose, HTML pages with
navigation and boilerplate, Sphinx-style pages with highlighted code and permalinks, PDFs with
running headers and hyphenated line ends (fpdf2)."""

from __future__ import annotations

import html
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from lmforge import config as config_mod
from lmforge.corpus import CorpusConfig, run

WORDS = (
    "the river valley holds several small farms where families grow wheat barley and apples during "
    "the long summer months while the winter brings snow from the northern mountains and travellers "
    "often stop at the old stone bridge to rest before continuing their journey toward the coastal "
    "towns markets schools churches libraries gardens houses roads forests meadows lakes fishermen "
    "teachers doctors children parents neighbours visitors workers builders painters writers"
).split()


def prose(seed: int, sentences: int = 12, words_per_sentence: int = 12) -> str:
    """Deterministic English-looking paragraphs: enough words and letters to pass the filters."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(words_per_sentence)]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def html_page(title: str, body: str) -> str:
    """A page whose main text is `body`, wrapped in navigation, script, style and a footer."""
    paragraphs = "".join(f"<p>{p}</p>" for p in body.split("\n\n"))
    return f"""<!doctype html><html><head><title>{title}</title>
<style>.menu {{ color: red; font-family: NAVSTYLE; }}</style>
<script>var trackingCode = "SCRIPTCODE"; function track() {{ return 1; }}</script></head>
<body><header><nav class="menu"><ul><li><a href="/">Home</a></li><li><a href="/about">About us NAVLINK</a></li>
<li><a href="/contact">Contact NAVLINK</a></li></ul></nav></header>
<main><article><h1>{title}</h1>{paragraphs}</article></main>
<aside class="sidebar"><h3>Related</h3><ul><li><a href="/x">Sidebar link SIDEBAR</a></li></ul></aside>
<footer><p>Copyright 2024 BOILERPLATE Corp. All rights reserved.</p><a href="/privacy">Privacy policy</a></footer>
</body></html>"""


def _highlighted(code: str) -> str:
    """`code` marked up the way Pygments does in Sphinx: one span per token, spaces and newlines between."""

    def token(match: re.Match) -> str:
        text = match.group(0)
        kind = "gp" if text in (">>> ", "... ") else "k" if text in ("def", "for", "if", "return", "in", "not") else "n"
        return f'<span class="{kind}">{html.escape(text)}</span>'

    return re.sub(r"^(?:>>> |\.\.\. )|[^\s]+", token, code, flags=re.MULTILINE)


def sphinx_page(title: str, paragraphs: list[str], code: str) -> str:
    """A page as Sphinx writes it: `¶` permalinks after headings and terms, code in a highlight block."""
    link = '<a class="headerlink" href="#{0}" title="Permalink to this headline">¶</a>'
    body = "".join(f"<p>{p}</p>" for p in paragraphs)
    return f"""<!doctype html><html><head><title>{title} &#8212; Docs</title></head>
<body><div class="related"><ul><li><a href="index.html">index</a></li><li><a href="modules.html">modules NAVLINK</a></li></ul></div>
<div class="document"><div class="body" role="main"><section id="top">
<h1>{title}{link.format("top")}</h1>{body}
<dl class="py function"><dt class="sig sig-object py" id="all"><span class="sig-name descname">all</span>(iterable){link.format("all")}</dt>
<dd><p>Return True if all elements of the iterable are true. Equivalent to:</p>
<div class="highlight-python3 notranslate"><div class="highlight"><pre><span></span>{_highlighted(code)}
</pre></div></div></dd></dl></section></div></div>
<div class="footer">&#169; Copyright 2001-2023 BOILERPLATE Foundation.</div></body></html>"""


def write_pdf(
    path: Path,
    pages: list[list[str]],
    header: str | Callable[[int], str | None] | None = None,
    footer: bool = True,
    encrypt_password: str | None = None,
) -> Path:
    """A PDF whose pages have the given lines, a running header (a text, or one per page number)
    and a 'Page N of M' footer."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_auto_page_break(False)
    if encrypt_password:
        pdf.set_encryption(owner_password="owner", user_password=encrypt_password)
    for number, lines in enumerate(pages, start=1):
        pdf.add_page()
        pdf.set_font("Helvetica", size=11)
        text = header(number) if callable(header) else header
        if text:
            pdf.set_xy(10, 8)
            pdf.cell(text=text)
        pdf.set_xy(10, 25)
        for line in lines:
            pdf.cell(text=line, new_x="LMARGIN", new_y="NEXT")
        if footer:
            pdf.set_xy(10, 280)
            pdf.cell(text=f"Page {number} of {len(pages)}")
    pdf.output(str(path))
    return path


def run_corpus(data: list, out: Path, **overrides) -> tuple[Path, dict[str, list[dict]], dict]:
    """Run the stage (1 worker unless told) -> (folder, records per split, report.json)."""
    values = {"data": [str(d) for d in data], "out": str(out), "workers": 1}
    values.update(overrides)
    cfg = config_mod.resolve(CorpusConfig, None, values)
    folder = run(cfg)
    records = {}
    for split in ("train", "valid", "test"):
        records[split] = [
            json.loads(line)
            for path in sorted(folder.glob(f"{split}-*.jsonl"))
            for line in path.read_text(encoding="utf-8").splitlines()
        ]
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    return folder, records, report


def all_records(records: dict[str, list[dict]]) -> list[dict]:
    return [r for split in ("train", "valid", "test") for r in records[split]]


def all_text(records: dict[str, list[dict]]) -> str:
    return "\n".join(r["text"] for r in all_records(records))
