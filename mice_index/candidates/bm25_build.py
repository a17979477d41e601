"""Bounded-memory BM25 build: streams a corpus into exactly the files ``bm25s.BM25.save`` writes.

``bm25s.BM25.index`` needs every document's token ids in memory and builds its CSC score matrix
(term-major: ``indptr`` [V+1] int64, ``indices`` [P] int32 document rows, ascending within a term,
``data`` [P] float32 scores, P = number of (term, document) postings) from several per-posting
copies: GBs at a million passages. :func:`write_index` writes the same arrays with memory bounded
by a batch and a bucket, not by the corpus:

1. tokenise (bm25s's ``Tokenizer``, streamed); every ``batch_tokens`` tokens, append the batch's
   unique (document, term) postings and their term frequencies to a spool, and update the per-term
   document frequencies (df) and the total length;
2. df gives bm25s's idf (its own functions) and ``indptr``, hence every posting's final position.
   Read the spool batch by batch, score each posting with bm25s's term-frequency function, and
   append (offset, row, score) records to the file of its position range (bucket of
   ``bucket_postings`` positions);
3. read the buckets in order, place each one's records in a buffer and append it to
   ``data.csc.index.npy`` / ``indices.csc.index.npy``: the output is written sequentially.

Memory: O(batch_tokens + bucket_postings) plus vocabulary-sized arrays (about 32 bytes per term,
next to the tokenizer's own word dicts); the vocabulary grows sublinearly with the corpus (Heaps'
law). Nothing per document or per posting stays in memory; a batch holds whole documents, so one
document longer than ``batch_tokens`` makes a batch of its own. Disk, in ``tmp_dir``: 8 bytes per
posting + 8 per document (spool) and 12 per posting (buckets), each file removed once read.

Scores equal bm25s's bit for bit: each posting goes through the same elementwise float32 / float64
operations as in ``bm25s.scoring._build_scores_and_indices_for_matrix`` with numpy >= 2 type
promotion (NEP 50); with numpy 1.x's value-based casting bm25s computes part of the term-frequency
component in float32 instead, so scores may then differ in the last float32 bit.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from array import array
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np
from bm25s.scoring import _build_idf_array, _build_nonoccurrence_array, _select_idf_scorer, _select_tfc_scorer

from mice_index.errors import IndexError_

logger = logging.getLogger(__name__)

BATCH_TOKENS = 1 << 17  # tokens per spool batch (passes 1 and 2 hold ~100 bytes per token of one batch)
BUCKET_POSTINGS = 1 << 19  # output positions per bucket (pass 3 holds ~28 bytes per position of one bucket)

# pass 2 -> 3 record: offset inside its bucket, document row, score
_RECORD = np.dtype([("off", "<i4"), ("row", "<i4"), ("score", "<f4")])
_DATA, _INDICES = "data.csc.index.npy", "indices.csc.index.npy"  # bm25s.BM25.save's default names


@dataclass
class _Spool:
    """What pass 1 leaves for pass 2: the spool files and per-batch sizes (a few per million tokens)."""

    dir: Path
    batches: list[tuple[int, int]]  # (documents, postings) per batch, in corpus order
    num_docs: int
    num_tokens: int
    df: np.ndarray  # int64 [V] documents containing each term


class _DocFreqs:
    """A df array seen as the ``{term id: df}`` dict bm25s's idf helpers iterate, without building it."""

    def __init__(self, df: np.ndarray) -> None:
        self.df = df

    def __len__(self) -> int:
        return int(self.df.size)

    def items(self) -> Iterator[tuple[int, int]]:
        step = 1 << 16
        for start in range(0, self.df.size, step):
            yield from enumerate(self.df[start : start + step].tolist(), start)


def write_index(
    directory: Path,
    ids_stream: Iterable[list[int]],
    vocab: dict,
    model: bm25s.BM25,
    num_docs: int | None = None,
    tmp_dir: Path | None = None,
    batch_tokens: int = BATCH_TOKENS,
    bucket_postings: int = BUCKET_POSTINGS,
) -> int:
    """Write ``model.save``'s files for the token-id lists of ``ids_stream`` into ``directory``.

    ids_stream: one list of term ids per document (bm25s ``Tokenizer.streaming_tokenize``), consumed
        once; ``vocab`` is that tokenizer's vocabulary dict, read once the stream is exhausted (the
        ``{"": 0}`` dummy when empty). ``model`` gives the parameters (k1, b, method, delta, dtypes)
        and is left holding the vocabulary, ``indptr`` and empty ``data``/``indices`` arrays.
    tmp_dir: where the spool goes (a fresh sub-folder, removed on return); default ``directory``.
    Returns the number of documents. IndexError_ for an empty corpus or a count other than ``num_docs``.
    """
    if batch_tokens < 1 or bucket_postings < 1:
        raise ValueError("batch_tokens and bucket_postings must be >= 1")
    directory.mkdir(parents=True, exist_ok=True)
    spool_dir = Path(tempfile.mkdtemp(prefix=".bm25-spool-", dir=tmp_dir or directory))
    try:
        spool = _spool_postings(ids_stream, spool_dir, batch_tokens, vocab)
        if spool.num_docs == 0:
            raise IndexError_("BM25: cannot index an empty corpus")
        if num_docs is not None and num_docs != spool.num_docs:
            raise IndexError_(f"BM25: expected {num_docs} documents, got {spool.num_docs}")
        if not vocab:  # every document empty / only stopwords: keep one dummy term so bm25s works
            vocab = {"": 0}
            spool.df = np.zeros(1, dtype=np.int64)
        assert spool.df.size == len(vocab)
        indptr = np.zeros(spool.df.size + 1, dtype=np.int64)
        np.cumsum(spool.df, out=indptr[1:])
        _score_into_buckets(spool, model, indptr, bucket_postings)
        # bm25s writes vocab, params, indptr (and the bm25l/bm25+ non-occurrence array) itself;
        # its data / indices files are empty placeholders, overwritten by the streamed ones below
        model.scores = {"data": np.empty(0, dtype=model.dtype), "indices": np.empty(0, dtype=model.int_dtype),
                        "indptr": indptr, "num_docs": spool.num_docs}
        model.vocab_dict = vocab
        model.save(str(directory), show_progress=False)
        _write_csc(directory, spool_dir, int(indptr[-1]), bucket_postings, model)
        logger.info("BM25: indexed %d documents, %d terms, %d postings", spool.num_docs, len(vocab), indptr[-1])
        return spool.num_docs
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)


def _spool_postings(ids_stream: Iterable[list[int]], spool: Path, batch_tokens: int, vocab: dict) -> _Spool:
    """Pass 1: per batch, append [terms | tfs] (int32, document-major) to postings.i32 and
    [lengths | unique terms] (int32, per document) to docs.i32; accumulate df and the length total."""
    df = np.zeros(1 << 12, dtype=np.int64)
    out = _Spool(spool, [], 0, 0, df)
    with open(spool / "postings.i32", "wb") as fp, open(spool / "docs.i32", "wb") as fd:

        def flush(tokens: array, lengths: array) -> None:
            toks = np.frombuffer(tokens, dtype=np.int32) if tokens else np.empty(0, dtype=np.int32)
            lens = np.frombuffer(lengths, dtype=np.int32)
            rows = np.repeat(np.arange(lens.size, dtype=np.int64), lens)
            keys, tfs = np.unique((rows << 32) | toks, return_counts=True)  # (row, term) sorted
            terms = (keys & 0xFFFFFFFF).astype(np.int32)
            uniq = np.bincount(keys >> 32, minlength=lens.size).astype(np.int32)
            fp.write(terms.data)
            fp.write(tfs.astype(np.int32).data)
            fd.write(lens.data)
            fd.write(uniq.data)
            counts = np.bincount(terms)
            if len(vocab) > out.df.size:
                out.df = np.concatenate([out.df, np.zeros(max(len(vocab), 2 * out.df.size) - out.df.size, np.int64)])
            out.df[: counts.size] += counts
            out.batches.append((lens.size, terms.size))
            out.num_docs += lens.size
            out.num_tokens += toks.size

        tokens, lengths = array("i"), array("i")
        assert tokens.itemsize == 4
        for ids in ids_stream:
            lengths.append(len(ids))
            tokens.extend(ids)
            if len(tokens) >= batch_tokens:
                flush(tokens, lengths)
                tokens, lengths = array("i"), array("i")
        if lengths:
            flush(tokens, lengths)
    out.df = out.df[: len(vocab)]
    return out


def _score_into_buckets(spool: _Spool, model: bm25s.BM25, indptr: np.ndarray, bucket: int) -> None:
    """Pass 2: score every spooled posting as bm25s does and append it to its bucket file."""
    n, df = spool.num_docs, spool.df
    avg_len = np.float64(spool.num_tokens) / n  # == np.mean of the lengths (integer sum exact in float64)
    idf_fn, tfc_fn = _select_idf_scorer(model.idf_method), _select_tfc_scorer(model.method)
    idf = _build_idf_array(_DocFreqs(df), n_docs=n, compute_idf_fn=idf_fn, dtype=model.dtype)
    nnoc = None
    if model.method in model.methods_requiring_nonoccurrence:
        nnoc = _build_nonoccurrence_array(_DocFreqs(df), n_docs=n, compute_idf_fn=idf_fn, calculate_tfc_fn=tfc_fn,
                                          l_d=avg_len, l_avg=avg_len, k1=model.k1, b=model.b, delta=model.delta,
                                          dtype=model.dtype)
    model.nonoccurrence_array = nnoc
    cursor = indptr[:-1].copy()  # next free position of each term
    first = 0
    with open(spool.dir / "postings.i32", "rb") as fp, open(spool.dir / "docs.i32", "rb") as fd:
        for num, size in spool.batches:
            lens, uniq = _read(fd, num), _read(fd, num)
            terms, tfs = _read(fp, size), _read(fp, size)
            if size == 0:  # only empty documents
                first += num
                continue
            rows = np.repeat(np.arange(num, dtype=np.int32), uniq)  # batch-local row of each posting
            tfc = tfc_fn(tf_array=tfs.astype(model.dtype), l_d=lens[rows], l_avg=avg_len, k1=model.k1, b=model.b,
                         delta=model.delta)
            scores = idf[terms] * tfc
            if nnoc is not None:
                scores -= nnoc[terms]
            order = np.argsort(terms, kind="stable")  # term-major, rows stay ascending within a term
            ts = terms[order]
            starts = np.flatnonzero(np.diff(ts, prepend=-1))
            runs = np.diff(starts, append=ts.size)
            pos = np.repeat(cursor[ts[starts]] - starts, runs) + np.arange(ts.size)  # ascending
            cursor[ts[starts]] += runs
            rec = np.empty(ts.size, dtype=_RECORD)
            rec["row"] = rows[order] + first
            rec["score"] = scores[order]  # float64 -> float32, as bm25s stores them
            which = pos // bucket
            rec["off"] = pos - which * bucket
            cuts = np.flatnonzero(np.diff(which)) + 1
            for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), ts.size]):
                with open(spool.dir / f"bucket-{which[a]}", "ab") as fh:
                    fh.write(rec[a:b].data)
            first += num
    assert np.array_equal(cursor, indptr[1:]), "BM25 spool: posting counts disagree with df"
    (spool.dir / "postings.i32").unlink()
    (spool.dir / "docs.i32").unlink()


def _write_csc(directory: Path, spool: Path, nnz: int, bucket: int, model: bm25s.BM25) -> None:
    """Pass 3: write data / indices as .npy files (np.save's header), bucket after bucket."""
    with open(directory / _DATA, "wb") as fd, open(directory / _INDICES, "wb") as fi:
        for fh, dtype in ((fd, model.dtype), (fi, model.int_dtype)):
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (nnz,)}
            np.lib.format.write_array_header_1_0(fh, header)
        for k in range(-(-nnz // bucket)):
            path = spool / f"bucket-{k}"
            rec = np.fromfile(path, dtype=_RECORD)
            assert rec.size == min(bucket, nnz - k * bucket), f"BM25 spool: bucket {k} incomplete"
            data, rows = np.empty(rec.size, dtype=model.dtype), np.empty(rec.size, dtype=model.int_dtype)
            off = rec["off"].astype(np.intp)
            data[off] = rec["score"]
            rows[off] = rec["row"]
            fd.write(data.data)
            fi.write(rows.data)
            del rec, off
            path.unlink()


def _read(fh, count: int) -> np.ndarray:
    """`count` int32 from the spool file's current position."""
    buf = fh.read(4 * count)
    assert len(buf) == 4 * count, "BM25 spool: short read"
    return np.frombuffer(buf, dtype=np.int32)
