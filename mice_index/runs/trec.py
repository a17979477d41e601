"""TREC run files: `qid Q0 docid rank score tag`, one line per retrieved document."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from mice_index.errors import SourceError


class RunError(SourceError):
    """A run file or in-memory run is malformed (bad line, duplicate result, bad id, NaN score)."""


class ScoredDoc(NamedTuple):
    """One retrieved document; field names match ir_measures.ScoredDoc."""

    query_id: str
    doc_id: str
    score: float


Results = Mapping[str, Sequence[ScoredDoc]] | Iterable[ScoredDoc]


def _group(results: Results) -> dict[str, list[ScoredDoc]]:
    """Results per query id, in first-appearance order of the queries."""
    if isinstance(results, Mapping):
        grouped: dict[str, list[ScoredDoc]] = {}
        for qid, docs in results.items():
            docs = list(docs)
            for sd in docs:
                if sd.query_id != qid:
                    raise RunError(f"result for query {sd.query_id!r} listed under query {qid!r}")
            grouped[qid] = docs
        return grouped
    grouped = {}
    for sd in results:
        grouped.setdefault(sd.query_id, []).append(sd)
    return grouped


def _check_id(value: str, kind: str) -> None:
    if not isinstance(value, str) or not value or any(ch.isspace() for ch in value):
        raise RunError(f"{kind} id {value!r} cannot be written to a TREC run (empty or contains whitespace)")


def ranked(docs: Iterable[ScoredDoc]) -> list[ScoredDoc]:
    """Score descending, ties broken by doc_id ascending (deterministic)."""
    return sorted(docs, key=lambda sd: (-sd.score, sd.doc_id))


def write_run(path: str | os.PathLike[str], results: Results, tag: str = "mice-index") -> Path:
    """Write `results` as a 6-column TREC run, atomically (temp file + fsync + os.replace).

    Within a query, lines are ranked from 1 by score descending, ties by doc_id ascending; queries
    keep their input order. An existing file is replaced only if the whole write succeeds; parent
    folders are created. Raises RunError for ids with whitespace, NaN scores or a repeated
    (query, document) pair.
    """
    path = Path(path)
    _check_id(tag, "run tag")
    grouped = _group(results)
    lines: list[str] = []
    for qid, docs in grouped.items():
        _check_id(qid, "query")
        seen: set[str] = set()
        for rank, sd in enumerate(ranked(docs), 1):
            _check_id(sd.doc_id, "document")
            if sd.doc_id in seen:
                raise RunError(f"query {qid!r}: document {sd.doc_id!r} appears twice in the results")
            seen.add(sd.doc_id)
            score = float(sd.score)
            if math.isnan(score):
                raise RunError(f"query {qid!r}: document {sd.doc_id!r} has a NaN score")
            lines.append(f"{qid} Q0 {sd.doc_id} {rank} {score!r} {tag}\n")
    atomic_write_text(path, "".join(lines))
    return path


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable (POSIX; best effort elsewhere)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def read_run(path: str | os.PathLike[str]) -> list[ScoredDoc]:
    """Parse a 6-column TREC run (whitespace separated; the Q0, rank and tag columns are checked
    for presence only, the score decides the order). RunError names file:line for a malformed
    line, a non-numeric rank/score, a repeated (query, document) pair, or an empty file."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: run file not found")
    from mice_index.sources._files import iter_lines  # shared strict UTF-8 line reader

    out: list[ScoredDoc] = []
    first_line: dict[tuple[str, str], int] = {}
    for lineno, line in iter_lines(path):
        fields = line.split()
        if len(fields) != 6:
            raise RunError(
                f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(fields)}"
            )
        qid, _q0, docid, rank, score, _tag = fields
        try:
            int(rank)
        except ValueError:
            raise RunError(f"{path}:{lineno}: rank {rank!r} is not an integer") from None
        try:
            value = float(score)
        except ValueError:
            raise RunError(f"{path}:{lineno}: score {score!r} is not a number") from None
        if math.isnan(value):
            raise RunError(f"{path}:{lineno}: score is NaN")
        key = (qid, docid)
        if key in first_line:
            raise RunError(
                f"{path}:{lineno}: document {docid!r} listed twice for query {qid!r} "
                f"(first on line {first_line[key]})"
            )
        first_line[key] = lineno
        out.append(ScoredDoc(qid, docid, value))
    if not out:
        raise RunError(f"{path}: run file has no results")
    return out
