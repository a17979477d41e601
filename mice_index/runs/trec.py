"""TREC run files: `qid Q0 docid rank score tag`, one line per retrieved document.

One tie rule everywhere (`ranked`): score descending, equal scores by doc id ascending (code-point
order), as Anserini. A written run states its ranks twice, in the rank column and through scores
that strictly decrease down each query's list (`strictly_decreasing`), so trec_eval (which orders
equal scores by doc id descending) and every ir_measures backend read the same ranks.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mice_index.errors import SourceError
from mice_index.text import check_text


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
    from mice_index.text import id_problem

    if not isinstance(value, str) or not value:
        raise RunError(f"{kind} id {value!r} cannot be written to a TREC run (empty)")
    problem = id_problem(value)
    if problem:
        raise RunError(f"{kind} id {value!r} cannot be written to a TREC run: it {problem}")
    check_text(value, f"{kind} id {ascii(value)}", RunError)


def ranked(docs: Iterable[ScoredDoc]) -> list[ScoredDoc]:
    """The project's one tie rule: score descending, equal scores by doc_id ascending."""
    return sorted(docs, key=lambda sd: (-sd.score, sd.doc_id))


def strictly_decreasing(scores: Iterable[float]) -> list[float]:
    """Scores of a ranked list (best first) with every tie broken in list order: a score that is not
    below the previous (written) one, in float64 or once read as float32, becomes the next float32
    below it. trec_eval (and pytrec_eval, behind ir_measures) reads scores as 32-bit floats, so a
    float64-sized step would be lost. Sorting by score alone then gives back the list's order;
    other scores are kept exactly. Scores must be finite."""
    out: list[float] = []
    prev: float | None = None
    with np.errstate(over="ignore"):
        for score in scores:
            score = float(score)
            if prev is not None and (score >= prev or np.float32(score) >= np.float32(prev)):
                below = float(np.nextafter(np.float32(prev), np.float32(-np.inf)))
                score = below if math.isfinite(below) and below < prev else math.nextafter(prev, -math.inf)
            out.append(score)
            prev = score
    return out


def write_run(path: str | os.PathLike[str], results: Results, tag: str = "mice-index") -> Path:
    """Write `results` as a 6-column TREC run, atomically (temp file + fsync + os.replace).

    Within a query, lines are ranked from 1 by score descending, ties by doc_id ascending; queries
    keep their input order. A tied score is written as the next float32 below the score above it
    (`strictly_decreasing`), so tools that order by score alone read the same ranks. An existing
    file is replaced only if the whole write succeeds; parent folders are created. Raises RunError
    for ids with whitespace, NaN or infinite scores or a repeated (query, document) pair.
    """
    path = Path(path)
    _check_id(tag, "run tag")
    grouped = _group(results)
    lines: list[str] = []
    for qid, docs in grouped.items():
        _check_id(qid, "query")
        seen: set[str] = set()
        for sd in docs:
            _check_id(sd.doc_id, "document")
            if sd.doc_id in seen:
                raise RunError(f"query {qid!r}: document {sd.doc_id!r} appears twice in the results")
            seen.add(sd.doc_id)
            if not math.isfinite(float(sd.score)):
                kind = "NaN" if math.isnan(float(sd.score)) else "infinite"
                raise RunError(f"query {qid!r}: document {sd.doc_id!r} has a {kind} score")
        docs = ranked(docs)
        for rank, (sd, score) in enumerate(zip(docs, strictly_decreasing(sd.score for sd in docs)), 1):
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
    for presence only: the score decides the order, equal scores by doc id ascending). RunError
    names file:line for a malformed line, a non-numeric rank/score, a repeated (query, document)
    pair, or an empty file."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: run file not found")
    from mice_index.sources._files import blame_damaged_stream, iter_lines  # shared strict UTF-8 line reader
    from mice_index.text import id_problem

    out: list[ScoredDoc] = []
    first_line: dict[tuple[str, str], int] = {}
    with blame_damaged_stream(path):
        for lineno, line in iter_lines(path):
            fields = line.split()
            if len(fields) != 6:
                raise RunError(
                    f"{path}:{lineno}: expected 6 columns 'qid Q0 docid rank score tag', got {len(fields)}"
                )
            qid, _q0, docid, rank, score, _tag = fields
            for kind, value in (("query", qid), ("document", docid)):
                problem = id_problem(value)
                if problem:
                    raise RunError(f"{path}:{lineno}: {kind} id {value!r} {problem}")
            try:
                int(rank)
            except ValueError:
                raise RunError(f"{path}:{lineno}: rank {rank!r} is not an integer") from None
            try:
                value = float(score)
            except ValueError:
                raise RunError(f"{path}:{lineno}: score {score!r} is not a number") from None
            if not math.isfinite(value):  # NaN or ±inf: no rank can be derived from it
                raise RunError(f"{path}:{lineno}: score {score!r} is not a finite number")
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
