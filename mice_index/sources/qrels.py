"""Relevance judgements: BEIR folder / BEIR TSV (with header), TREC qrels, or `irds:<id>`.

Returns a list of ir_measures.Qrel (qrels are small; ir_measures wants them all anyway).
"""

from __future__ import annotations


import ir_measures

from mice_index.errors import SourceError
from mice_index.sources import irds
from mice_index.sources._files import Src, blame_damaged_stream, is_irds, iter_lines, resolve_file
from mice_index.sources.tsv import is_trec_qrels_header

_BEIR_QRELS = "qrels/test.tsv"


def read_qrels(src: Src) -> list[ir_measures.Qrel]:
    """Judgements from a BEIR folder (qrels/test.tsv), a BEIR TSV (`query-id corpus-id score`
    header; a headerless 3-column file is accepted too), a TREC qrels file (`qid iter docid rel`,
    whitespace separated, optionally under a header row such as `qid iter docid rel`) or
    `irds:<id>`; .gz/.bz2/.xz files are decompressed. The format is detected from the first non-blank line.

    Raises SourceError (file:line) on a malformed line, a non-integer relevance, a repeated
    (query, document) pair, or a file without judgements.
    """
    if is_irds(src):
        return _irds_qrels(str(src))
    path = resolve_file(src, _BEIR_QRELS, "qrels")
    qrels: list[ir_measures.Qrel] = []
    first_line: dict[tuple[str, str], int] = {}
    ncols: int | None = None
    with blame_damaged_stream(path):
        for lineno, line in iter_lines(path):
            fields = line.split()
            if ncols is None:
                ncols = len(fields)
                if ncols not in (3, 4):
                    raise SourceError(
                        f"{path}:{lineno}: unrecognised qrels format: expected 3 columns "
                        f"(BEIR: query-id corpus-id score) or 4 (TREC: qid iter docid rel), got {ncols}"
                    )
                if (ncols == 3 and not _is_int(fields[2])) or is_trec_qrels_header(fields):
                    continue  # header line
            if len(fields) != ncols:
                raise SourceError(f"{path}:{lineno}: expected {ncols} columns like the first line, got {len(fields)}")
            if ncols == 3:
                qid, docid, rel = fields
                iteration = "0"
            else:
                qid, iteration, docid, rel = fields
            if not _is_int(rel):
                raise SourceError(f"{path}:{lineno}: relevance {rel!r} is not an integer")
            key = (qid, docid)
            if key in first_line:
                raise SourceError(
                    f"{path}:{lineno}: duplicate judgement for query {qid!r} document {docid!r} "
                    f"(first on line {first_line[key]})"
                )
            first_line[key] = lineno
            qrels.append(ir_measures.Qrel(qid, docid, int(float(rel)), iteration))
    if not qrels:
        raise SourceError(f"{path}: no relevance judgements")
    return qrels


def _is_int(text: str) -> bool:
    """True for '1', '-1', and integral floats such as '1.0' (seen in some exported qrels)."""
    try:
        value = float(text)
    except ValueError:
        return False
    return value.is_integer()


def _irds_qrels(src: str) -> list[ir_measures.Qrel]:
    def convert(record) -> ir_measures.Qrel:
        return ir_measures.Qrel(
            str(record.query_id), str(record.doc_id), int(record.relevance),
            str(getattr(record, "iteration", "0")),
        )

    qrels = list(irds.iterate(src, "qrels", convert))
    if not qrels:
        raise SourceError(f"{src}: dataset has no relevance judgements")
    return qrels


__all__ = ["read_qrels"]
