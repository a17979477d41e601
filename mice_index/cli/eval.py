"""`mice-index eval`: score a TREC run against qrels with ir_measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mice_index.cli import app

DEFAULT_METRICS = "nDCG@10,R@100,RR@10"


def _split_metrics(text: str) -> list[str]:
    from mice_index.runs.metrics import MetricError

    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise MetricError(f"--metrics {text!r}: no metric names (expected e.g. {DEFAULT_METRICS})")
    return names


@app.command("eval")
def eval_command(
    run: Annotated[Path, typer.Option("--run", help="TREC run file (qid Q0 docid rank score tag).")],
    qrels: Annotated[
        str,
        typer.Option("--qrels", help="BEIR folder, qrels TSV/TREC file, or irds:<dataset id>."),
    ],
    metrics: Annotated[
        str, typer.Option("--metrics", help="Comma-separated ir_measures names.")
    ] = DEFAULT_METRICS,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON object {metric: value} on stdout. \\[default: off]")
    ] = False,
) -> None:
    """Evaluate a run file against relevance judgements."""
    from rich.table import Table

    from mice_index.runs import evaluate

    values = evaluate(run, qrels, _split_metrics(metrics))
    if as_json:
        typer.echo(json.dumps(values))
        return
    console = Console(emoji=False)
    console.print(f"run [bold]{run}[/] vs qrels [bold]{qrels}[/]", highlight=False, soft_wrap=True)
    table = Table()
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in values.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)
