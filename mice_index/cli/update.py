"""`mice-index add / delete / compact`: thin shells over mice_index.update (living indexes)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mice_index.cli import app
from mice_index.cli.progress import task_progress
from mice_index.errors import MiceIndexError, os_errors
from mice_index.text import check_argument

_DEVICE = ("auto", "cpu", "cuda")
_DTYPE = ("auto", "bf16", "fp32")


def _check(device: str, dtype: str | None) -> None:
    for value, option, allowed in ((device, "--device", _DEVICE), (dtype, "--dtype", _DTYPE)):
        if value is not None and value not in allowed:
            raise MiceIndexError(f"{option} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")


def _config(model: str | None, device: str, dtype: str | None, no_auto_compact: bool):
    from mice_index.update import UpdateConfig

    return UpdateConfig(model=None if model in (None, "index") else model,  # type: ignore[arg-type]
                        device=device, dtype=dtype, auto_compact=not no_auto_compact)


def _summary(verb: str, r) -> None:
    info = r.info
    what = {"add": f"{r.added:,} added, {r.updated:,} updated", "delete": f"{r.deleted:,} deleted",
            "compact": f"{r.deleted:,} deleted rows dropped" if r.compacted else "already compact"}[r.op]
    if r.already_applied:
        what = "already applied by the last commit (nothing to do)"
    extra = ", compacted" if r.compacted and r.op != "compact" else ""
    Console().print(f"[bold green]{verb}[/] {info['path']}: {what}{extra}; {info['num_docs']:,} documents "
                    f"({info['deleted_docs']:,} deleted rows awaiting compaction) in {info['num_shards']} segments, "
                    f"{r.seconds:.1f} s", highlight=False, soft_wrap=True)


_MODEL = typer.Option("--model", help="MICE model to encode with; its fingerprint must equal the index's "
                                      "\\[default: the index's model].")
_NO_AUTO = typer.Option("--no-auto-compact", help="Do not compact after the change even when the compaction "
                                                  "policy says so (mice_index.update.UpdateConfig: deleted fraction, "
                                                  "number of small segments). \\[default: off]")


@app.command("add")
def add_command(
    index: Annotated[Path, typer.Option("--index", help="Index folder (a complete index).")],
    corpus: Annotated[str, typer.Option("--corpus", help="Documents to add: BEIR folder, JSONL or TSV file, irds:<id> "
                                        "(read with the index's --id-field / --text-field / --title-field).")],
    update: Annotated[bool, typer.Option("--update", help="Replace documents whose id is already in the index "
                                         "(without it, such ids are an error). \\[default: off]")] = False,
    model: Annotated[str | None, _MODEL] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str | None, typer.Option("--dtype", help="auto, bf16 or fp32 \\[default: the index's].")] = None,
    no_auto_compact: Annotated[bool, _NO_AUTO] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress. \\[default: off]")] = False,
) -> None:
    """Add documents to an index (new ids appended as a new segment; BM25 and dense follow). Re-run to finish."""
    check_argument(corpus, "--corpus")
    _check(device, dtype)
    from mice_index.update import add_documents

    config = _config(model, device, dtype, no_auto_compact)
    with task_progress("encode", "docs", Console(stderr=True), quiet=quiet) as progress, \
            os_errors(index, "adding documents"):
        result = add_documents(index, corpus, update=update, config=config, progress=progress.advance)
    _summary("added to", result)


def _read_ids(ids: list[str]) -> list[str]:
    """IDs given on the command line; a single existing file holds one id per line."""
    if len(ids) == 1 and Path(ids[0]).is_file():
        path = Path(ids[0])
        with os_errors(path, "reading the ids"):
            lines = path.read_text(encoding="utf-8").splitlines()
        out = [line.strip() for line in lines if line.strip()]
        if not out:
            raise MiceIndexError(f"{path}: holds no document ids (one per line)")
        return out
    return ids


@app.command("delete")
def delete_command(
    index: Annotated[Path, typer.Option("--index", help="Index folder (a complete index).")],
    ids: Annotated[list[str], typer.Option("--ids", help="Document ids to delete, or one file holding one id per "
                                           "line (repeat --ids or give several after it).")],
    extra: Annotated[list[str] | None, typer.Argument(help="More ids.", show_default=False)] = None,
    no_auto_compact: Annotated[bool, _NO_AUTO] = False,
) -> None:
    """Delete documents by id (every row of each id; an unknown id is an error and nothing is deleted)."""
    from mice_index.update import delete_documents

    wanted = _read_ids([*ids, *(extra or [])])
    with os_errors(index, "deleting documents"):
        result = delete_documents(index, wanted, _config(None, "auto", None, no_auto_compact))
    _summary("deleted from", result)


@app.command("compact")
def compact_command(
    index: Annotated[Path, typer.Option("--index", help="Index folder (a complete index).")],
    refit: Annotated[bool, typer.Option("--refit", help="Also fit the codec again on the live documents and "
                                        "re-encode them from their stored texts (resets the codec drift that "
                                        "`info` reports). \\[default: off]")] = False,
    model: Annotated[str | None, _MODEL] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda (--refit).")] = "auto",
    dtype: Annotated[str | None, typer.Option("--dtype", help="auto, bf16 or fp32 (--refit) "
                                                              "\\[default: the index's].")] = None,
) -> None:
    """Rewrite an index without its deleted rows, merging small segments (rows renumbered; BM25 / dense rebuilt)."""
    _check(device, dtype)
    from mice_index.update import compact_index

    with os_errors(index, "compacting the index"):
        result = compact_index(index, refit=refit, config=_config(model, device, dtype, False))
    _summary("compacted", result)
