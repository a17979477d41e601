"""BM25 candidate generator on top of bm25s (+ PyStemmer).

Tokenisation is bm25s's own ``Tokenizer`` (scikit-learn style ``\\b\\w\\w+\\b`` split, lower-case,
stopword removal, optional Snowball stemming), fed as a stream so the raw texts are never held in
memory; the score matrix is bm25s's, written with bounded memory by ``bm25_build`` (bm25s itself
needs the whole tokenised corpus in memory), then loaded with ``bm25s.BM25.load``.

Only documents sharing at least one term with the query are returned (like Lucene): the rest of
the row is padding, and a query with no known term (e.g. only stopwords) gives an all-padding row.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ClassVar, Literal

import bm25s
import numpy as np
import Stemmer

from mice_index.candidates.base import (Candidates, check_allowed, check_k, load_rows_map, map_rows, read_meta,
                                        to_ordinals, topk_rows, write_meta)
from mice_index.candidates.bm25_build import BATCH_TOKENS, BUCKET_POSTINGS, write_index
from mice_index.errors import IndexError_, SearchError

logger = logging.getLogger(__name__)

BM25Method = Literal["lucene", "robertson", "atire", "bm25l", "bm25+"]


@dataclass(frozen=True)
class BM25Config:
    k1: float = 0.9
    b: float = 0.4
    method: BM25Method = "lucene"
    stemmer: str | None = "english"  # a PyStemmer (Snowball) language, or None
    stopwords: str | None = "en"  # a bm25s stopword list name ("en", "fr", ...), or None

    def __post_init__(self) -> None:
        if self.method not in BM25Method.__args__:
            raise SearchError(f"bm25 method must be one of {BM25Method.__args__}, got {self.method!r}")
        if self.stemmer is not None and self.stemmer not in Stemmer.algorithms():
            raise SearchError(f"bm25 stemmer {self.stemmer!r} unknown; choose from {Stemmer.algorithms()}")


def _tokenizer(config: BM25Config) -> bm25s.tokenization.Tokenizer:
    stemmer = Stemmer.Stemmer(config.stemmer) if config.stemmer else None
    return bm25s.tokenization.Tokenizer(stopwords=config.stopwords or None, stemmer=stemmer)


class BM25Index:
    """A bm25s index over corpus rows 0..N-1; search() takes raw query strings."""

    name: ClassVar[str] = "bm25"

    def __init__(self, model: bm25s.BM25, config: BM25Config) -> None:
        self.model = model
        self.config = config
        self.rows_map: np.ndarray | None = None  # ordinal -> store row (candidates/base.py ROWS_FILE)

    @property
    def num_docs(self) -> int:
        return int(self.model.scores["num_docs"])

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        config: BM25Config = BM25Config(),
        num_docs: int | None = None,
        progress: bool = False,
    ) -> BM25Index:
        """Index ``texts`` (one string per row, e.g. ``title + " " + text``), consumed lazily, into
        memory (the arrays only: built through a temporary folder by :meth:`build_into`)."""
        with tempfile.TemporaryDirectory(prefix="mice-bm25-") as tmp:
            cls.build_into(tmp, texts, config, num_docs=num_docs, progress=progress)
            return cls.load(tmp, mmap=False)

    @classmethod
    def build_into(
        cls,
        directory: str | Path,
        texts: Iterable[str],
        config: BM25Config = BM25Config(),
        num_docs: int | None = None,
        progress: bool = False,
        tmp_dir: str | Path | None = None,
        batch_tokens: int = BATCH_TOKENS,
        bucket_postings: int = BUCKET_POSTINGS,
    ) -> None:
        """Index ``texts`` straight into ``directory`` (what :meth:`save` writes, :meth:`load` reads)
        with memory bounded by ``batch_tokens`` / ``bucket_postings`` and the vocabulary, not by the
        corpus (see :mod:`mice_index.candidates.bm25_build`); the scores equal bm25s's in-memory
        ``BM25.index``. Temporary files go to ``tmp_dir`` (default: ``directory``) and are removed.
        IndexError_ for an empty corpus or a document count other than ``num_docs``; the folder is
        then left incomplete (callers build into a temporary folder and rename it)."""
        directory = Path(directory)
        tokenizer = _tokenizer(config)
        stream = tokenizer.streaming_tokenize(texts, update_vocab=True, allow_empty=False)
        if progress:
            from rich.progress import track

            stream = track(stream, total=num_docs, description="BM25 tokenise")
        model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
        n = write_index(directory, stream, tokenizer.get_vocab_dict(), model, num_docs=num_docs,
                        tmp_dir=Path(tmp_dir) if tmp_dir is not None else None, batch_tokens=batch_tokens,
                        bucket_postings=bucket_postings)
        write_meta(directory, {"name": cls.name, "config": asdict(config), "num_docs": n})

    def tokenize(self, query_texts: list[str]) -> list[list[int]]:
        """Query term ids (unknown terms and stopwords dropped; may be empty)."""
        tok = _tokenizer(self.config)  # fresh per call: its word caches stay bounded
        if self.config.stemmer:
            tok.stem_to_sid = self.model.vocab_dict
        else:
            tok.word_to_id = self.model.vocab_dict
        return list(tok.streaming_tokenize(query_texts, update_vocab=False, allow_empty=False))

    def _matching(self, ids: list[int]) -> np.ndarray:
        """Bool mask of the documents containing at least one of the term ids."""
        indptr, indices = self.model.scores["indptr"], self.model.scores["indices"]
        mask = np.zeros(self.num_docs, dtype=bool)
        for t in set(ids):
            mask[indices[indptr[t] : indptr[t + 1]]] = True
        return mask

    def search(self, queries: list[str], k: int, allowed: np.ndarray | None = None) -> Candidates:
        """Top-k rows [Q, k] per query among the documents sharing a term with it. `allowed` (bool
        [N]): only those rows, before the cut (the exact top-k of the allowed matching documents,
        equal to the unfiltered ranking with the other rows removed; as bm25s's ``weight_mask``,
        but a masked-out row is dropped rather than scored 0, so it never ties a real match)."""
        if isinstance(queries, str):
            raise SearchError("BM25 search expects a list of query strings, got a single string")
        k = check_k(k, self.num_docs)
        allowed = check_allowed(to_ordinals(allowed, self.rows_map), self.num_docs)  # store rows -> ordinals
        out = Candidates.empty(len(queries), k)
        for qi, ids in enumerate(self.tokenize(list(queries))):
            if not ids:  # bm25s would score every doc 0 (or crash): report "nothing found"
                continue
            scores = self.model.get_scores_from_ids(ids)
            keep = self._matching(ids)
            if allowed is not None:
                keep &= allowed
            rows, vals = topk_rows(scores, k, keep=keep)
            out.rows[qi, : rows.size] = rows
            out.scores[qi, : rows.size] = vals
        return map_rows(out, self.rows_map)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.model.save(str(directory))
        write_meta(directory, {"name": self.name, "config": asdict(self.config), "num_docs": self.num_docs})

    @classmethod
    def load(cls, directory: str | Path, mmap: bool = True) -> BM25Index:
        directory = Path(directory)
        meta = read_meta(directory, cls.name)
        try:
            model = bm25s.BM25.load(str(directory), mmap=mmap)
        except (OSError, ValueError, KeyError) as exc:
            raise IndexError_(f"{directory}: cannot load bm25s index ({exc})") from None
        index = cls(model, BM25Config(**meta["config"]))
        if index.num_docs != meta["num_docs"]:
            raise IndexError_(f"{directory}: bm25s index has {index.num_docs} docs, metadata says {meta['num_docs']}")
        index.rows_map = load_rows_map(directory, index.num_docs)
        return index
