"""The `mice-index` command: a thin typer shell over the Python API.

Each command lives in its own module and registers itself on `app` when imported below; user
errors (MiceIndexError) are printed as one red line with exit code 2, never as a traceback.
"""

from __future__ import annotations

import logging
import os
import sys

import typer
from rich.console import Console
from rich.markup import escape

from mice_index.errors import MiceIndexError, storage_error

app = typer.Typer(
    name="mice-index",
    help="Index documents for MICE re-ranking, search them and evaluate runs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(stderr=True, emoji=False)

# Command modules (each adds its commands to `app`).
from mice_index.cli import score as _score  # noqa: E402,F401
from mice_index.cli import eval as _eval  # noqa: E402,F401
from mice_index.cli import build as _build  # noqa: E402,F401
from mice_index.cli import search as _search  # noqa: E402,F401
from mice_index.cli import train as _train  # noqa: E402,F401
from mice_index.cli import merge as _merge  # noqa: E402,F401
from mice_index.cli import serve as _serve  # noqa: E402,F401
from mice_index.cli import update as _update  # noqa: E402,F401
from mice_index.cli import upgrade as _upgrade  # noqa: E402,F401


def main() -> None:
    from rich.logging import RichHandler

    # Only the CLI configures logging; library modules just log to their module loggers.
    logging.basicConfig(level=logging.WARNING, format="%(message)s",
                        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)])
    logging.getLogger("bm25s").setLevel(logging.WARNING)  # bm25s sets its own logger to DEBUG
    try:
        try:
            _run_app()
        except OSError as exc:  # disk full, permission denied, read-only: one line naming the path
            # the commands name the files they write (os_errors); what is left without a name is stdout
            err = storage_error(exc, "<stdout>" if exc.filename is None else None)
            if err is None:
                raise
            raise err from exc
    except MiceIndexError as exc:
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        _drop_stdout()
        sys.exit(2)


def _run_app() -> None:
    try:
        app()
    except SystemExit as done:
        if not done.code:
            sys.stdout.flush()  # a full disk under a redirected stdout shows here, not at interpreter exit
        raise


def _drop_stdout() -> None:
    """If stdout cannot be flushed (e.g. the disk under a redirected stdout is full), drop its
    buffer so that the interpreter's exit does not print a second error."""
    try:
        sys.stdout.flush()
    except OSError:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives until exit
