"""`mice-index score`: rank a small corpus for one query with MICE, straight from text (no index).

Useful to try a model on a handful of documents; for collections, `build` once and `search`.
"""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from mice_index.cli import app
from mice_index.errors import SearchError
from mice_index.text import check_argument

MAX_TEXT_DOCS = 5_000  # scoring from text re-encodes every document: past this, build an index


@app.command("score")
def score_command(
    query: Annotated[str, typer.Option("--query", "-q", help="Query text.")],
    corpus: Annotated[str, typer.Option("--corpus", help="BEIR folder, JSONL or TSV file (.gz/.bz2/.xz ok) or irds:<id>.")],
    model: Annotated[str, typer.Option("--model", help="MICE checkpoint, HF folder or hub id.")] = "default",
    k: Annotated[Optional[int], typer.Option("--k", help="How many documents to print \\[default: 10; "
                                             "clipped to the corpus size].")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Documents per forward pass.")] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table. \\[default: off]")] = False,
) -> None:
    """Score every document of a small corpus against QUERY with the MICE model, from text."""
    if not check_argument(query, "--query", SearchError).strip():
        raise SearchError("--query is empty")
    if k is not None and k <= 0:
        raise SearchError(f"--k must be positive, got {k}")
    if batch_size < 1:
        raise SearchError(f"--batch-size must be >= 1, got {batch_size}")
    from mice_index.sources import read_documents

    docs = []  # read (and refused, if need be) before torch and the model load
    for doc in read_documents(corpus):
        docs.append(doc)
        if len(docs) > MAX_TEXT_DOCS:
            raise SearchError(f"{corpus}: more than {MAX_TEXT_DOCS} documents; `mice-index build` an index "
                              "and use `mice-index search` instead")
    import torch
    from rich.table import Table
    from rich.text import Text

    from mice_index.defaults import load_model
    from mice_index.explain import highlight_snippet
    from mice_index.search import clipped

    mice = load_model(None if model == "default" else model)
    k = clipped("--k", k, 10, len(docs))
    texts = [mice.format_document(d.title, d.text) for d in docs]
    scores = torch.cat([mice.score_texts(query, texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)])
    order = sorted(range(len(docs)), key=lambda i: (-scores[i].item(), docs[i].doc_id))[:k]  # the tie rule
    if as_json:
        for rank, i in enumerate(order, 1):
            typer.echo(json.dumps({"rank": rank, "doc_id": docs[i].doc_id, "score": round(scores[i].item(), 6)}))
        return
    table = Table(title=f"MICE scores for {escape(repr(query))}")
    for col, justify in (("rank", "right"), ("doc id", "left"), ("score", "right"), ("document", "left")):
        table.add_column(col, justify=justify)
    for rank, i in enumerate(order, 1):
        table.add_row(str(rank), Text(docs[i].doc_id), f"{scores[i].item():.4f}",
                      Text(highlight_snippet(texts[i], (), 80)[0]))  # cut at 80 characters with "…"
    Console(emoji=False).print(table)
