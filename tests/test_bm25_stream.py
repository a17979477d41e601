"""Parity of the streamed BM25 build (mice_index.candidates.bm25_build) with bm25s's in-memory
``BM25.index`` + ``save``: the same files byte for byte, hence the same search results."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import bm25s
import numpy as np
import pytest

from mice_index.candidates import BM25Config, BM25Index
from mice_index.candidates.base import write_meta
from mice_index.candidates.bm25 import _tokenizer
from mice_index.errors import IndexError_

DOCS = [
    "The cat sat on the mat, the cat sat again.",  # repeated terms
    "Dogs are loyal animals and good companions.",
    "",  # empty
    "the of and to a",  # only stopwords
    "Quantum chromodynamics describes the strong interaction of quarks and gluons.",
    "Cats and dogs: a guide to household pets; cats cats cats.",
    "Running runners run: marathon training for runners.",  # stems collide
    "A recipe for sourdough bread with rye flour, bread bread.",
    "Photosynthesis converts light energy into chemical energy.",
    "x",  # one character: no token (the splitter needs 2+ characters)
    "Glaciers are melting because of climate change; glaciers retreat.",
    "Neural networks learn representations from data, and data from networks.",
    "Ancient Rome and the fall of the republic. Rome, Rome!",
]
QUERIES = ["cat", "cats dogs", "running marathon", "bread rye flour", "energy light", "the of", "zzz",
           "rome republic fall", "networks data", "glaciers change climate", "quarks"]
FILES = ("data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy", "vocab.index.json",
         "params.index.json", "nonoccurrence_array.index.npy")


def bm25s_oracle(texts: list[str], config: BM25Config, directory: Path) -> BM25Index:
    """bm25s's own in-memory build of the same token ids (the pre-streaming code path), saved."""
    tokenizer = _tokenizer(config)
    ids = list(tokenizer.streaming_tokenize(texts, update_vocab=True, allow_empty=False))
    vocab = tokenizer.get_vocab_dict() or {"": 0}
    model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
    model.index((ids, vocab), show_progress=False, create_empty_token=False)
    model.save(str(directory), show_progress=False)
    write_meta(directory, {"name": "bm25", "config": asdict(config), "num_docs": len(texts)})
    return BM25Index.load(directory)


def assert_same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert {"data.csc.index.npy", "indices.csc.index.npy", "indptr.csc.index.npy"} <= set(names)
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def assert_same_search(a: BM25Index, b: BM25Index, queries: list[str]) -> None:
    ca, cb = a.search(queries, k=a.num_docs), b.search(queries, k=b.num_docs)
    np.testing.assert_array_equal(ca.rows, cb.rows)
    np.testing.assert_array_equal(ca.scores, cb.scores)


CONFIGS = [
    BM25Config(),
    BM25Config(stemmer=None, stopwords=None),
    BM25Config(method="robertson", k1=1.2, b=0.75, stemmer=None),
    BM25Config(method="atire", stopwords=None),
    BM25Config(method="bm25l", k1=1.5, b=0.3),
    BM25Config(method="bm25+", stemmer="english", stopwords=None),
]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.method}-{c.stemmer}-{c.stopwords}")
@pytest.mark.parametrize("batch_tokens,bucket_postings", [(1, 1), (5, 3), (10**6, 10**6)])
def test_stream_build_equals_bm25s(tmp_path, config, batch_tokens, bucket_postings) -> None:
    # batch of 1 token = one document per batch; 5 tokens = 1-3 documents; a bucket of 1-3 postings
    # puts most terms across several buckets; 10**6 = one batch, one bucket
    oracle = bm25s_oracle(DOCS, config, tmp_path / "oracle")
    BM25Index.build_into(tmp_path / "stream", iter(DOCS), config, num_docs=len(DOCS), batch_tokens=batch_tokens,
                         bucket_postings=bucket_postings)
    assert_same_files(tmp_path / "oracle", tmp_path / "stream")
    if config.method in ("bm25l", "bm25+"):
        assert (tmp_path / "stream" / "nonoccurrence_array.index.npy").is_file()
    streamed = BM25Index.load(tmp_path / "stream")
    assert_same_search(oracle, streamed, QUERIES)
    assert oracle.search(["cat"], k=3).rows[0, 0] >= 0  # the queries do match something


def test_in_memory_build_equals_bm25s(tmp_path) -> None:
    oracle = bm25s_oracle(DOCS, BM25Config(), tmp_path / "oracle")
    built = BM25Index.build(iter(DOCS), num_docs=len(DOCS))
    assert not isinstance(built.model.scores["data"], np.memmap)
    assert_same_search(oracle, built, QUERIES)
    built.save(tmp_path / "saved")
    assert_same_files(tmp_path / "oracle", tmp_path / "saved")


def test_larger_random_corpus_many_batches(tmp_path) -> None:
    # Zipf-like words over 300 documents: frequent terms span many batches and buckets
    rng = np.random.default_rng(0)
    words = [f"w{i}x" for i in range(400)]
    texts = [" ".join(words[j] for j in np.minimum(rng.zipf(1.3, size=rng.integers(0, 40)), 400) - 1)
             for _ in range(300)]
    config = BM25Config(stemmer=None)
    oracle = bm25s_oracle(texts, config, tmp_path / "oracle")
    BM25Index.build_into(tmp_path / "stream", texts, config, batch_tokens=97, bucket_postings=50)
    assert_same_files(tmp_path / "oracle", tmp_path / "stream")
    assert_same_search(oracle, BM25Index.load(tmp_path / "stream"), ["w0x", "w1x w2x", "w3x w399x w17x"])


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # bm25s: 0/0 length
def test_only_stopwords_and_empty_documents(tmp_path) -> None:
    texts = ["the of and", "", "a an the"]
    oracle = bm25s_oracle(texts, BM25Config(), tmp_path / "oracle")
    BM25Index.build_into(tmp_path / "stream", texts, batch_tokens=1, bucket_postings=1)
    assert_same_files(tmp_path / "oracle", tmp_path / "stream")
    assert json.loads((tmp_path / "stream" / "vocab.index.json").read_text()) == {"": 0}
    idx = BM25Index.load(tmp_path / "stream")
    assert idx.num_docs == 3 and not idx.search(["the", "cat"], k=2).found.any()


def test_temporary_files_removed(tmp_path) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    BM25Index.build_into(tmp_path / "idx", DOCS, batch_tokens=3, bucket_postings=2, tmp_dir=spool)
    assert list(spool.iterdir()) == []
    assert not [p for p in (tmp_path / "idx").iterdir() if p.name.startswith(".")]


def test_errors_leave_no_spool(tmp_path) -> None:
    with pytest.raises(IndexError_, match="empty corpus"):
        BM25Index.build_into(tmp_path / "a", iter([]))
    with pytest.raises(IndexError_, match="expected 5 documents, got 3"):
        BM25Index.build_into(tmp_path / "b", ["a cat", "two dogs", ""], num_docs=5)
    with pytest.raises(IndexError_, match="empty corpus"):
        BM25Index.build([])
    for d in ("a", "b"):
        assert not [p for p in (tmp_path / d).iterdir() if p.name.startswith(".bm25-spool")]

    def failing():
        yield "first document"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        BM25Index.build_into(tmp_path / "c", failing(), batch_tokens=1)
    assert list((tmp_path / "c").iterdir()) == []
