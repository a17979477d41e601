"""benchmarks/scale.py's synthetic corpus goes through the real build (`encoder_factory` hook,
pre-encoded codec columns in `EncodedWindow.parts`) and reads back as generated."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from mice_index.build import BuildConfig, build_index
from mice_index.codec import make_codec
from mice_index.search import SearchConfig, Searcher
from mice_index.store import IndexReader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from synthetic import STOPWORDS, SyntheticEncoder, Vocab, documents  # noqa: E402


def test_synthetic_corpus_builds_through_the_real_pipeline(tmp_path, tiny_mice):
    vocab = Vocab(vocab_size=2000, topics=10, dim=tiny_mice.config.hidden_size)
    docs = list(documents(vocab, 300, mean_tokens=20, max_len=64, chunk=128))
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"_id": i, "text": t}) + "\n" for i, t, _ in docs))
    encoders = []

    def factory(model, enc_cfg, tower, dense_model, dense_tower):
        encoders.append(SyntheticEncoder(vocab, enc_cfg, dense=False))
        return encoders[-1]

    cfg = BuildConfig(codec="int8", dense="none", shard_docs=128, window_docs=50, dtype="fp32")
    build_index(corpus, tmp_path / "idx", cfg, model=tiny_mice, encoder_factory=factory)
    assert encoders[0].parts is not None  # the index's codec was bound before the shards were written
    r = IndexReader.open(tmp_path / "idx")
    assert r.num_docs == 300 and len(r.manifest.shards) == 3
    rows = [0, 127, 128, 299]
    assert r.doc_ids_of(rows) == [docs[i][0] for i in rows]
    assert [t for _, t in r.texts(rows)] == [docs[i][1] for i in rows]
    codec = r.codec
    for row, got in zip(rows, r.get_encoded(rows)):  # states = the words' states, encoded once per word
        ids = [vocab.cls, *vocab.word_ids(docs[row][1]), vocab.sep]
        want = codec.encode(vocab.states[ids])
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    import Stemmer

    stem = Stemmer.Stemmer("english").stemWord
    word = next(w for w in docs[5][1].split() if w not in STOPWORDS and not w.startswith("q"))
    hits = Searcher.open(tmp_path / "idx", model=tiny_mice,
                         config=SearchConfig(candidates="bm25", rerank="none")).search(word, k=300)
    assert docs[5][0] in {h.doc_id for h in hits}  # BM25 indexed the real words
    assert all(stem(word) in {stem(w) for w in h.text.split()} for h in hits)


def test_windows_never_cross_a_shard_boundary():
    vocab = Vocab(vocab_size=500, topics=5, dim=8)
    enc = SyntheticEncoder(vocab, type("C", (), {"window_docs": 7, "max_doc_length": 16})(), dense=True)
    from mice_index.sources import Document

    docs = [Document(i, t) for i, t, _ in documents(vocab, 40, 10, 16)]
    wins = list(enc.windows(docs, 0, boundary=16))
    assert [(w.start_row, len(w.docs)) for w in wins] == [(0, 7), (7, 7), (14, 2), (16, 7), (23, 7), (30, 2),
                                                           (32, 7), (39, 1)]
    assert all(w.states.shape == (int(w.lengths.sum()), 8) and w.dense.shape == (len(w.docs), 8) for w in wins)
    enc.bind_codec(make_codec("fp16", 8))
    w = next(enc.windows(docs, 0, stop_row=3))
    assert w.states is None and w.parts["values"].shape == (int(w.lengths.sum()), 8)
