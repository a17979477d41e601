"""Streaming readers for documents and queries (BEIR folder, JSONL, TSV, or `irds:<id>`).

Each reader yields records one by one; only the 64-bit hashes of the ids seen so far are kept (for
duplicate detection: 8 bytes per record, `sources.seen`; a hash hit is re-checked against the
exact id by re-reading the source). Every bad input raises one SourceError naming file and line (and the id when known).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mice_index.errors import SourceError
from mice_index.sources import irds, tsv
from mice_index.sources._files import (
    Src,
    blame_damaged_stream,
    count_nonblank_lines,
    first_line_of,
    get_str,
    is_irds,
    iter_lines,
    parse_json_object,
    resolve_file,
)
from mice_index.sources.fields import Field, field_values
from mice_index.sources.records import Document, Query
from mice_index.sources.seen import SeenIds
from mice_index.text import check_text, id_problem

_JSONL_SUFFIXES = {".jsonl", ".json", ".ndjson"}
_TSV_SUFFIXES = {".tsv"}  # other names (.txt, none): the first line decides


def _check_id(value: str, path: Path | str, where: str, kind: str) -> str:
    if not value.strip():
        raise SourceError(f"{path}:{where}: empty {kind} id")
    problem = id_problem(value)
    if problem:
        raise SourceError(f"{path}:{where}: {kind} id {value!r} {problem}")
    return value


def _duplicate(path: Path, lineno: int, kind: str, key: str, extract) -> SourceError | None:
    """The error for `key` on `lineno`, whose hash was seen before; None when the first line with
    that exact id is this one (a hash collision with another id)."""
    first = first_line_of(path, key, extract)
    if first == lineno:
        return None
    seen = f"first on line {first}" if first is not None and first < lineno else "seen earlier"
    return SourceError(f"{path}:{lineno}: duplicate {kind} id {key!r} ({seen})")


def _irds_duplicate(src: str, kind: str, n: int, key: str, convert, id_of) -> SourceError | None:
    """Like `_duplicate` for an ir_datasets record #n (re-iterates the dataset up to it)."""
    for m, record in enumerate(irds.iterate(src, kind, convert), 1):
        if id_of(record) == key:
            if m == n:
                return None
            break
    what = "document" if kind == "docs" else "query"
    return SourceError(f"{src}: {what} #{n}: duplicate {what} id {key!r}")


# --------------------------------------------------------------------------- documents


def read_documents(
    src: Src, *, id_field: str = "_id", text_field: str = "text", title_field: str = "title",
    fields: tuple[Field, ...] = (),
) -> Iterator[Document]:
    """Stream documents from a BEIR folder (corpus.jsonl), a JSONL or TSV file (.gz/.bz2/.xz ok)
    or `irds:<id>`.

    For JSONL, `id_field` and `text_field` are required strings and `title_field` an optional
    string (missing/null -> ""); empty text is allowed. A TSV file (`.tsv`, or a first line
    that is not a JSON object) has `id<TAB>text` (MS MARCO collection.tsv) or `id<TAB>title<TAB>text`
    columns, or a header row naming them (see `sources.tsv`). For irds the record's doc_id / text
    (or default_text()) / title are used and the field options are ignored. Raises SourceError on
    bad input, text that is not valid Unicode, a duplicate id, or (at the end of iteration) an
    empty corpus. `fields` (JSONL only; SourceError for TSV and irds): values read into
    `Document.fields` (sources/fields.py; a value of the wrong type is a SourceError).
    """
    fields = tuple(fields)
    if fields and is_irds(src):
        raise SourceError(f"{src}: --field reads JSONL keys; an irds: corpus has none (export it to JSONL first)")
    if is_irds(src):
        yield from _irds_documents(str(src))
        return
    path = resolve_file(src, "corpus.jsonl", "corpus")
    header = None  # line number of a TSV header row
    if _is_jsonl(path):
        def parse(lineno: int, line: str) -> tuple[str, str, str, tuple]:
            obj = parse_json_object(path, lineno, line)
            doc_id = _check_id(get_str(obj, id_field, path, lineno), path, str(lineno), "document")
            where = f" document {doc_id!r}:"
            text = get_str(obj, text_field, path, lineno, where=where)
            title = get_str(obj, title_field, path, lineno, where=where, required=False) or ""
            return doc_id, text, title, field_values(obj, fields, path, lineno, doc_id) if fields else ()
    else:
        if fields:
            raise SourceError(f"{path}: --field reads JSONL keys; this corpus is TSV (convert it to JSONL to "
                              "give documents fields)")
        layout = tsv.corpus_layout(path, id_field, text_field, title_field)
        header = layout.header_line

        def parse(lineno: int, line: str) -> tuple[str, str, str, tuple]:
            doc_id, text, title = layout.split(path, lineno, line)
            return _check_id(doc_id, path, str(lineno), "document"), text, title, ()

    seen = SeenIds()
    with blame_damaged_stream(path):
        for lineno, line in iter_lines(path):
            if lineno == header:
                continue
            doc_id, text, title, values = parse(lineno, line)
            if seen.seen_before(doc_id):
                error = _duplicate(path, lineno, "document", doc_id, lambda n, ln: parse(n, ln)[0])
                if error is not None:
                    raise error
            yield Document(doc_id, text, title, values)
    if not seen:
        raise SourceError(f"{path}: no documents (file is empty or has only blank lines)")


def _irds_documents(src: str) -> Iterator[Document]:
    seen = SeenIds()

    def convert(record) -> Document:
        title = getattr(record, "title", "") or ""
        return Document(str(record.doc_id), irds.record_text(record), str(title))

    for n, doc in enumerate(irds.iterate(src, "docs", convert), 1):
        for field in ("doc_id", "text", "title"):
            check_text(getattr(doc, field), f"{src}: document #{n} ({ascii(doc.doc_id)}): {field}")
        if seen.seen_before(doc.doc_id):
            error = _irds_duplicate(src, "docs", n, doc.doc_id, convert, lambda d: d.doc_id)
            if error is not None:
                raise error
        yield doc
    if not seen:
        raise SourceError(f"{src}: dataset has no documents")


def count_documents(src: Src) -> int | None:
    """Number of documents for progress bars: non-blank lines of the JSONL / TSV (less a TSV header
    row), or ir_datasets' docs_count() (None when it does not know). Does not validate the lines,
    but reading the file raises SourceError for a truncated / corrupt compressed file."""
    if is_irds(src):
        return irds.docs_count(str(src))
    path = resolve_file(src, "corpus.jsonl", "corpus")
    header = 0 if _is_jsonl(path) else int(tsv.corpus_layout(path).header_line is not None)
    return count_nonblank_lines(path) - header


# --------------------------------------------------------------------------- queries


def read_queries(src: Src, *, id_field: str = "_id", text_field: str = "text") -> Iterator[Query]:
    """Stream queries from a BEIR folder (queries.jsonl), JSONL, TSV (`qid<TAB>text`, an optional
    header row such as `qid<TAB>query` is skipped) or `irds:<id>`; .gz/.bz2/.xz files are
    decompressed. All queries of the file are kept. Empty query text, text that is not valid
    Unicode and duplicate ids raise SourceError naming file and line; so does a file without any
    query (at the end).

    The format of a file is taken from its suffix (.jsonl/.json/.ndjson vs .tsv), otherwise
    from its first non-blank line (JSON object or not).
    """
    if is_irds(src):
        yield from _irds_queries(str(src))
        return
    path = resolve_file(src, "queries.jsonl", "queries")
    jsonl = _is_jsonl(path)
    parse = _parse_jsonl_query if jsonl else _parse_tsv_query
    header = None if jsonl else tsv.query_header_line(path, id_field, text_field)

    def extract(lineno: int, line: str) -> str:
        return parse(path, lineno, line, id_field, text_field)[0]

    seen = SeenIds()
    with blame_damaged_stream(path):
        for lineno, line in iter_lines(path):
            if lineno == header:
                continue
            query_id, text = parse(path, lineno, line, id_field, text_field)
            if not text.strip():
                raise SourceError(f"{path}:{lineno}: query {query_id!r} has empty text")
            if seen.seen_before(query_id):
                error = _duplicate(path, lineno, "query", query_id, extract)
                if error is not None:
                    raise error
            yield Query(query_id, text)
    if not seen:
        raise SourceError(f"{path}: no queries (file is empty or has only blank lines)")


def _is_jsonl(path: Path) -> bool:
    suffixes = {s.lower() for s in path.suffixes}
    if suffixes & _JSONL_SUFFIXES:
        return True
    if suffixes & _TSV_SUFFIXES:
        return False
    for _, line in iter_lines(path):
        return line.lstrip().startswith("{")
    return True


def _parse_jsonl_query(path: Path, lineno: int, line: str, id_field: str, text_field: str):
    obj = parse_json_object(path, lineno, line)
    query_id = _check_id(get_str(obj, id_field, path, lineno), path, str(lineno), "query")
    text = get_str(obj, text_field, path, lineno, where=f" query {query_id!r}:")
    return query_id, text


def _parse_tsv_query(path: Path, lineno: int, line: str, _id_field: str, _text_field: str):
    if "\t" not in line:
        raise SourceError(f"{path}:{lineno}: expected 'query_id<TAB>text' (no tab found)")
    query_id, text = line.split("\t", 1)
    query_id = _check_id(query_id.strip(), path, str(lineno), "query")
    return query_id, text.strip()


def _irds_queries(src: str) -> Iterator[Query]:
    seen = SeenIds()

    def convert(record) -> Query:
        return Query(str(record.query_id), irds.record_text(record))

    for n, query in enumerate(irds.iterate(src, "queries", convert), 1):
        for field in ("query_id", "text"):
            check_text(getattr(query, field), f"{src}: query #{n} ({ascii(query.query_id)}): {field}")
        if not query.text.strip():
            raise SourceError(f"{src}: query #{n} ({query.query_id!r}) has empty text")
        if seen.seen_before(query.query_id):
            error = _irds_duplicate(src, "queries", n, query.query_id, convert, lambda q: q.query_id)
            if error is not None:
                raise error
        yield query
    if not seen:
        raise SourceError(f"{src}: dataset has no queries")
