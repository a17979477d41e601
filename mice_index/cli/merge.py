"""`mice-index merge`: assemble an index built in static slices (`build --num-shards N --shard-id i`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from mice_index.cli import app
from mice_index.errors import os_errors


@app.command("merge")
def merge_command(
    index: Annotated[Path, typer.Option("--index", help="Index folder the slices wrote into.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the index info as one JSON object. \\[default: off]")] = False,
) -> None:
    """Check that every slice and build shard is committed, verify shard checksums, build the BM25 /
    dense candidate indexes and write the complete manifest."""
    from mice_index.distributed.static import merge_index

    with os_errors(index, "merging the index"):
        info = merge_index(index)
    if as_json:
        typer.echo(json.dumps(info))
        return
    Console(emoji=False).print(f"[bold green]merged[/] {escape(str(info['path']))}: {info['num_docs']:,} documents in "
                               f"{info['num_shards']} "
                               f"shards, {info['num_tokens']:,} tokens, codec {info['codec']}, complete", highlight=False,
                               soft_wrap=True)
