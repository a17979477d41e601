"""`mice-index search`: one query (ranked list / JSON) or a batch of queries (TREC run file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from mice_index.cli import app
from mice_index.errors import SearchError, os_errors
from mice_index.runs import write_run
from mice_index.scorer import ScorerConfig
from mice_index.search import CANDIDATES, RERANKERS, SearchConfig, Searcher
from mice_index.sources import read_queries
from mice_index.text import check_argument


def _snippet(title: str, text: str, width: int = 90) -> str:
    body = " ".join(f"{title} {text}".split()) if title else " ".join(text.split())
    return body if len(body) <= width else body[: width - 1] + "…"


@app.command("search")
def search_command(
    index: Annotated[Path, typer.Option("--index", help="Index folder made by `mice-index build`.")],
    query: Annotated[Optional[str], typer.Option("--query", "-q", help="One query (prints a ranked list).")] = None,
    queries: Annotated[Optional[str], typer.Option("--queries", help="Batch: BEIR folder, JSONL/TSV file or irds:<id>.")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="Batch: TREC run file to write.")] = None,
    run_tag: Annotated[str, typer.Option("--run-tag", help="Tag column of the run file.")] = "mice-index",
    k: Annotated[Optional[int], typer.Option("--k", help="Results per query [default: 10 for one query, the depth "
                                             "in batch mode; clipped to the corpus size].")] = None,
    candidates: Annotated[str, typer.Option("--candidates", help=f"First stage: {'|'.join(CANDIDATES)}.")] = "hybrid",
    depth: Annotated[Optional[int], typer.Option("--depth", help="Candidates per query re-ranked by MICE "
                                                 "[default: 100; clipped to the corpus size].")] = None,
    rerank: Annotated[str, typer.Option("--rerank", help=f"Re-ranker: {'|'.join(RERANKERS)}.")] = "mice",
    alpha: Annotated[Optional[float], typer.Option(
        "--alpha", help="Interpolation weight of the first-stage score: alpha·z(first stage) + "
        "(1−alpha)·z(MICE) per query; 0 = pure MICE [default: the model's recommended alpha].")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="MICE model [default: the index's model].")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="auto|fp32|bf16 for MICE scoring.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto|cpu|cuda.")] = "auto",
    remove_query: Annotated[bool, typer.Option("--remove-query", help="Batch: leave out a document whose id "
                                               "equals the query id (BEIR arguana, quora).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One query: print JSON.")] = False,
) -> None:
    """Search an index: first-stage candidates, then MICE re-ranking over stored states."""
    if query is not None:
        check_argument(query, "--query", SearchError)
    check_argument(run_tag, "--run-tag", SearchError)
    if (query is None) == (queries is None):
        raise SearchError("give exactly one of --query (one query) or --queries (batch, with --run)")
    if queries is not None and run is None:
        raise SearchError("--queries needs --run FILE to write the TREC run to")
    if dtype not in ("auto", "fp32", "bf16") or device not in ("auto", "cpu", "cuda"):
        raise SearchError(f"--dtype must be auto|fp32|bf16 and --device auto|cpu|cuda (got {dtype}, {device})")
    if remove_query and query is not None:
        raise SearchError("--remove-query applies to --queries (batch mode) only; one --query has no query id")
    config = SearchConfig(candidates=candidates, depth=depth, rerank=rerank, alpha=alpha,
                          remove_query_id=remove_query, scorer=ScorerConfig(dtype=dtype, device=device))
    if query is not None:
        if not query.strip():
            raise SearchError("--query is empty")
        searcher = Searcher.open(index, model=model, config=config)
        hits = searcher.search(query, k=k)
        if as_json:
            typer.echo(json.dumps([{"rank": h.rank, "doc_id": h.doc_id, "score": round(h.score, 6),
                                    "snippet": _snippet(h.title, h.text, 200)} for h in hits]))
            return
        table = Table(title=f"{query!r} — {candidates}{' → MICE' if rerank == 'mice' else ''}")
        for col, justify in (("rank", "right"), ("doc id", "left"), ("score", "right"), ("snippet", "left")):
            table.add_column(col, justify=justify)
        for h in hits:
            table.add_row(str(h.rank), h.doc_id, f"{h.score:.4f}", _snippet(h.title, h.text))
        Console().print(table)
        return
    qs = list(read_queries(queries))
    searcher = Searcher.open(index, model=model, config=config)
    console = Console(stderr=True)
    with Progress(TextColumn("searching"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("queries", total=len(qs))
        results = searcher.search_many(qs, k=k, progress=lambda n: bar.advance(task, n))
    with os_errors(run, "writing the run file"):
        write_run(run, results, tag=run_tag)
    console.print(f"wrote {sum(map(len, results.values()))} results for {len(results)} queries to {run}",
                  highlight=False)
