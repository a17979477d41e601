"""`mice-index search`: one query (ranked list / JSON) or a batch of queries (TREC run file).

Heavy modules (torch, the index reader, the model) are imported inside the command, so that
`mice-index --help` and the other commands start fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from mice_index.choices import CANDIDATES, QUANTIZE, RERANKERS, check_positive, check_search_options
from mice_index.cli import app
from mice_index.errors import SearchError, os_errors
from mice_index.store.manifest import read_manifest
from mice_index.text import check_argument

QUANTIZE_HELP = ("MICE interaction layers: auto (int8 when scoring in fp32 on a CPU, else none), none or int8 "
                 "(dynamic int8 linear layers; BENCHMARKS.md → Latency for its effect on nDCG@10).")
SNIPPET_WIDTH = 90  # characters of snippet in the printed table (JSON: 200)


def check_dtype_device(dtype: str, device: str) -> None:
    """One line naming the bad option (SearchError)."""
    if dtype not in ("auto", "fp32", "bf16"):
        raise SearchError(f"--dtype must be auto, fp32 or bf16, got {dtype!r}")
    if device not in ("auto", "cpu", "cuda"):
        raise SearchError(f"--device must be auto, cpu or cuda, got {device!r}")


def search_config(candidates: str, depth: int | None, rerank: str, dtype: str, device: str,
                  alpha: float | None = None, remove_query: bool = False, quantize: str = "auto"):
    """The SearchConfig for the CLI's search options (`search` and `serve` share them)."""
    from mice_index.scorer import ScorerConfig
    from mice_index.search import SearchConfig

    check_dtype_device(dtype, device)
    return SearchConfig(candidates=candidates, depth=depth, rerank=rerank, alpha=alpha,  # type: ignore[arg-type]
                        remove_query_id=remove_query,
                        scorer=ScorerConfig(dtype=dtype, device=device, quantize=quantize))  # type: ignore[arg-type]


@app.command("search")
def search_command(
    index: Annotated[Path, typer.Option("--index", help="Index folder made by `mice-index build`.")],
    query: Annotated[Optional[str], typer.Option("--query", "-q", help="One query (prints a ranked list) \\[default: none; give --query or --queries].")] = None,
    queries: Annotated[Optional[str], typer.Option("--queries", help="Batch: BEIR folder, JSONL/TSV file or irds:<id> \\[default: none].")] = None,
    run: Annotated[Optional[Path], typer.Option("--run", help="Batch: TREC run file to write \\[default: none; needed with --queries].")] = None,
    run_tag: Annotated[str, typer.Option("--run-tag", help="Tag column of the run file.")] = "mice-index",
    k: Annotated[Optional[int], typer.Option("--k", help="Results per query \\[default: 10 for one query, the depth "
                                             "in batch mode; clipped to the corpus size].")] = None,
    candidates: Annotated[str, typer.Option("--candidates", help=f"First stage: {'|'.join(CANDIDATES)}.")] = "hybrid",
    depth: Annotated[Optional[int], typer.Option("--depth", help="Candidates per query re-ranked by MICE "
                                                 "\\[default: 100; clipped to the corpus size].")] = None,
    rerank: Annotated[str, typer.Option("--rerank", help=f"Re-ranker: {'|'.join(RERANKERS)}.")] = "mice",
    alpha: Annotated[Optional[float], typer.Option(
        "--alpha", help="Interpolation weight of the first-stage score: alpha·z(first stage) + "
        "(1−alpha)·z(MICE) per query; 0 = pure MICE \\[default: the model's recommended alpha].")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="MICE model \\[default: the index's model].")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="MICE scoring: auto (bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, else fp32), fp32 or bf16.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto|cpu|cuda.")] = "auto",
    quantize: Annotated[str, typer.Option("--quantize", help=QUANTIZE_HELP)] = "auto",
    remove_query: Annotated[bool, typer.Option("--remove-query", help="Batch: leave out a document whose id "
                                               "equals the query id (BEIR arguana, quora). \\[default: off]")] = False,
    filter_: Annotated[Optional[str], typer.Option(
        "--filter", help="Search only the documents a metadata filter keeps, e.g. \"year >= 2020 and source in "
        "('a','b')\" (fields from `build --field`; grammar: README → Filters); applied before the depth cut, so "
        "a query gets min(k, matching documents) hits. \\[default: none]")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One query: print JSON. \\[default: off]")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="One query: show and highlight the document words "
                                          "each query word matched: its best MaxSim match for a cls+maxsim model "
                                          "(the default; none below a cosine of 0.5, so a hit may have none), the "
                                          "words it attended to most for a cls model (MICE cross-attention). "
                                          "\\[default: off]")] = False,
) -> None:
    """Search an index: first-stage candidates, then MICE re-ranking over stored states."""
    # Every check that needs no model comes first, before torch is imported (an error in < 0.5 s).
    if query is not None:
        check_argument(query, "--query", SearchError)
    check_argument(run_tag, "--run-tag", SearchError)
    if filter_ is not None:
        check_argument(filter_, "--filter", SearchError)
    if (query is None) == (queries is None):
        raise SearchError("give exactly one of --query (one query) or --queries (batch, with --run)")
    if queries is not None and run is None:
        raise SearchError("--queries needs --run FILE to write the TREC run to")
    if query is not None:  # options of batch mode that one query would silently ignore
        for given, option in ((run is not None, "--run"), (remove_query, "--remove-query")):
            if given:
                raise SearchError(f"{option} applies to --queries (batch mode) only; one --query "
                                  f"{'prints its results' if option == '--run' else 'has no query id'}")
    else:
        for given, option in ((as_json, "--json"), (explain, "--explain")):
            if given:
                raise SearchError(f"{option} works with one --query; batch mode (--queries) writes a TREC run")
    check_dtype_device(dtype, device)
    check_search_options(candidates, rerank, depth, alpha)
    if k is not None:
        check_positive("--k", k)
    if quantize not in QUANTIZE:
        raise SearchError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if query is not None and not query.strip():
        raise SearchError("--query is empty")
    manifest = read_manifest(index)  # a missing or damaged index folder, named
    if filter_ is not None:  # a bad filter is refused before torch is imported
        from mice_index.filters import compile_filter
        from mice_index.sources.fields import Field

        compile_filter(filter_, tuple(Field(f.name, f.type) for f in manifest.settings.fields))
    if queries is not None:
        from mice_index.sources import read_queries

        qs = list(read_queries(queries))  # a bad queries file is refused before torch is imported
    config = search_config(candidates, depth, rerank, dtype, device, alpha=alpha, remove_query=remove_query,
                           quantize=quantize)
    from mice_index.search import Searcher

    if query is not None:
        searcher = Searcher.open(index, model=model, config=config)
        hits = searcher.search(query, k=k, filter=filter_)
        explanations = _explain(searcher, index, model, query, hits) if explain else [None] * len(hits)
        _print_hits(query, hits, explanations, as_json, f"{candidates}{' → MICE' if rerank == 'mice' else ''}")
        return
    from mice_index.cli.progress import task_progress
    from mice_index.runs import write_run

    searcher = Searcher.open(index, model=model, config=config)
    console = Console(stderr=True)
    with task_progress("search", "queries", console, transient=True) as bar:
        bar.set_total(len(qs))
        results = searcher.search_many(qs, k=k, progress=bar.advance, filter=filter_)
    with os_errors(run, "writing the run file"):
        write_run(run, results, tag=run_tag)
    console.print(f"wrote {sum(map(len, results.values()))} results for {len(results)} queries to {run}",
                  highlight=False)


def _explain(searcher, index: Path, model: str | None, query: str, hits) -> list:
    from mice_index.explain import Explainer
    from mice_index.search import checked_model

    # with --rerank none the searcher has no model: load the index's (explaining needs one)
    mice = searcher.model if searcher.model is not None else checked_model(searcher.reader, model)
    return Explainer(mice, searcher.reader).explain(query, hits)


def _print_hits(query: str, hits, explanations, as_json: bool, pipeline: str) -> None:
    from rich.table import Table
    from rich.text import Text

    from mice_index.explain import hit_record

    if as_json:
        typer.echo(json.dumps([hit_record(h, e) for h, e in zip(hits, explanations)]))
        return
    table = Table(title=f"{query!r} — {pipeline}")
    for col, justify in (("rank", "right"), ("doc id", "left"), ("score", "right"), ("snippet", "left")):
        table.add_column(col, justify=justify)
    for h, e in zip(hits, explanations):
        record = hit_record(h, e, width=SNIPPET_WIDTH)
        cell = Text(record["snippet"])
        for a, b in record.get("highlights", []):
            cell.stylize("bold black on yellow", a, b)
        if h.title:  # the snippet is of the text; the title goes above it
            cell = Text.assemble((h.title, "bold"), "\n", cell)
        if e is not None:
            cell.append("\n" + "; ".join(f"{m['query_word']} → " + (", ".join(w["word"] for w in m["words"]) or "–")
                                         for m in record["matches"]), style="dim")
        table.add_row(str(h.rank), h.doc_id, f"{h.score:.4f}", cell)
    Console().print(table)
