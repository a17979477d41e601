"""Tab-separated inputs: which column holds what, and header rows.

Corpus: `id<TAB>text` (MS MARCO collection.tsv) or `id<TAB>title<TAB>text`; queries:
`id<TAB>text`. A first line whose cells are column names (e.g. `id<TAB>text`,
`docid<TAB>title<TAB>body`, `qid<TAB>query`; names are matched case-insensitively, and the reader's
id/text/title field names count too) is a header row: it is skipped and, for a corpus, its names
decide the columns (other columns, such as `url`, are ignored). There is no quoting: a tab always
separates cells, and the text column, when it is the last one, keeps any further tabs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mice_index.errors import SourceError
from mice_index.sources._files import iter_lines

DOC_ID_NAMES = frozenset({"id", "_id", "docid", "doc_id", "doc-id", "docno", "did", "pid", "document_id",
                          "documentid", "corpus-id", "corpus_id", "passage_id", "passageid"})
TITLE_NAMES = frozenset({"title", "doc_title", "headline"})
DOC_TEXT_NAMES = frozenset({"text", "body", "passage", "contents", "content", "document", "doc_text",
                            "passage_text", "abstract"})
QUERY_ID_NAMES = frozenset({"id", "_id", "qid", "query_id", "query-id", "queryid", "qno", "topic", "topic_id",
                            "topicid", "num"})
QUERY_TEXT_NAMES = frozenset({"text", "query", "query_text", "querytext", "question", "title", "description"})
RELEVANCE_NAMES = frozenset({"rel", "relevance", "score", "label", "judgment", "judgement", "grade", "qrel"})

_NAME = re.compile(r"[a-z_][a-z0-9_.\-]*")


def first_line(path: Path) -> tuple[int, str] | None:
    """(line number, text) of the first non-blank line, None for an empty file."""
    for lineno, line in iter_lines(path):
        return lineno, line
    return None


def _names(line: str) -> list[str] | None:
    """The cells of `line` lower-cased when every one looks like a column name, else None."""
    cells = [c.strip().lower() for c in line.split("\t")]
    return cells if all(_NAME.fullmatch(c) for c in cells) else None


def _find(cells: list[str], names: set[str] | frozenset[str], taken: set[int]) -> int | None:
    return next((i for i, c in enumerate(cells) if c in names and i not in taken), None)


@dataclass(frozen=True)
class CorpusLayout:
    """Columns of a TSV corpus (0-based) and the line number of its header row (None: none)."""

    ncols: int
    id_col: int
    text_col: int
    title_col: int | None = None
    header_line: int | None = None

    def describe(self) -> str:
        cols = {self.id_col: "id", self.text_col: "text", **({self.title_col: "title"} if self.title_col is not None
                                                          else {})}
        return ", ".join(cols.get(i, "ignored") for i in range(self.ncols))

    def split(self, path: Path, lineno: int, line: str) -> tuple[str, str, str]:
        """(id, text, title) of one data line; SourceError (file:line) for a wrong column count."""
        text_last = self.text_col == self.ncols - 1
        cells = line.split("\t", self.ncols - 1) if text_last else line.split("\t")
        if len(cells) != self.ncols:
            like = "the header" if self.header_line is not None else "the first line"
            raise SourceError(f"{path}:{lineno}: expected {self.ncols} tab-separated columns ({self.describe()}) "
                              f"like {like}, got {len(cells)}")
        title = cells[self.title_col].strip() if self.title_col is not None else ""
        return cells[self.id_col].strip(), cells[self.text_col].strip(), title


def corpus_layout(path: Path, id_field: str = "_id", text_field: str = "text",
                  title_field: str = "title") -> CorpusLayout:
    """The layout of a TSV corpus from its first non-blank line (a header row or the first document).
    SourceError (file:line) when a headerless first line has neither 2 nor 3 columns."""
    first = first_line(path)
    if first is None:
        return CorpusLayout(2, 0, 1)  # empty: the reader reports "no documents"
    lineno, line = first
    cells = _names(line)
    if cells is not None:
        id_col = _find(cells, DOC_ID_NAMES | {id_field.lower()}, set())
        text_col = _find(cells, DOC_TEXT_NAMES | {text_field.lower()}, {id_col})
        if id_col is not None and text_col is not None:
            title_col = _find(cells, TITLE_NAMES | {title_field.lower()}, {id_col, text_col})
            return CorpusLayout(len(cells), id_col, text_col, title_col, lineno)
    n = len(line.split("\t"))
    if n == 2:
        return CorpusLayout(2, 0, 1)
    if n == 3:
        return CorpusLayout(3, 0, 2, 1)
    raise SourceError(f"{path}:{lineno}: a TSV corpus has 2 (id, text) or 3 (id, title, text) tab-separated "
                      f"columns, got {n}; a header row can name them (e.g. id<TAB>title<TAB>text)")


def query_header_line(path: Path, id_field: str = "_id", text_field: str = "text") -> int | None:
    """Line number of a queries TSV's header row (`qid<TAB>query`, `id<TAB>text`, ...), None without."""
    first = first_line(path)
    if first is None:
        return None
    lineno, line = first
    cells = _names(line)
    if cells is None or len(cells) != 2:
        return None
    if cells[0] in QUERY_ID_NAMES | {id_field.lower()} and cells[1] in QUERY_TEXT_NAMES | {text_field.lower()}:
        return lineno
    return None


def is_trec_qrels_header(fields: list[str]) -> bool:
    """True for a 4-column qrels header row whose last cell names the relevance (`qid iter docid rel`).
    (BEIR's 3-column `query-id corpus-id score` header is recognised by its non-integer score.)"""
    return len(fields) == 4 and fields[3].lower() in RELEVANCE_NAMES


__all__ = ["CorpusLayout", "corpus_layout", "first_line", "is_trec_qrels_header", "query_header_line"]
