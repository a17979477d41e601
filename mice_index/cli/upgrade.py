"""`mice-index upgrade`: rewrite an older index's manifest in the current format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mice_index.cli import app
from mice_index.errors import os_errors


@app.command("upgrade")
def upgrade_command(
    index: Annotated[Path, typer.Option("--index", help="Index folder to upgrade.")],
) -> None:
    """Rewrite a format-2 index's manifest as format 3 (atomic, under the index's lock; the shard
    files are unchanged). An index already in format 3 is left as it is."""
    from mice_index.store.upgrade import upgrade_index

    with os_errors(index, "upgrading the index"):
        r = upgrade_index(index)
    if r.changed:
        Console().print(f"[bold green]upgraded[/] {r.path}: index format {r.from_version} → {r.to_version}",
                        highlight=False, soft_wrap=True)
    else:
        Console().print(f"{r.path}: already current (index format {r.to_version}); nothing to do",
                        highlight=False, soft_wrap=True)
