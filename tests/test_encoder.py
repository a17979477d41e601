"""Encoder: states equal the model's reference path, length-bucketed batches, corpus-order windows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mice_index.encoder import DocumentEncoder, EncoderConfig
from mice_index.errors import MiceIndexError
from mice_index.sources import Document

TEXTS = ["", "short one", "a somewhat longer document about cells and proteins " * 3,
         "word " * 500, "title only?", "mid length text " * 8]


def _encoder(model, **kw):
    cfg = EncoderConfig(max_doc_length=model.config.max_doc_length, **{"device": "cpu", "dtype": "fp32", **kw})
    return DocumentEncoder(model, cfg)


def test_fp32_states_equal_reference(tiny_mice):
    # fp32 compute: the stored states are the model's own layer-ℓ* states (bf16 differs ~1e-2).
    enc = _encoder(tiny_mice, batch_tokens=100)
    got = enc.encode_texts(TEXTS)
    for text, states in zip(TEXTS, got):
        ref = tiny_mice.encode_documents([text])[0].numpy()
        assert states.dtype == np.float32 and states.shape == ref.shape
        np.testing.assert_allclose(states, ref, atol=1e-5)
    assert got[0].shape[0] == 2  # empty document -> [CLS] [SEP]
    assert got[3].shape[0] == tiny_mice.config.max_doc_length


def test_bf16_close_to_fp32(tiny_mice):
    a = _encoder(tiny_mice).encode_texts(TEXTS[1:3])
    b = _encoder(tiny_mice, dtype="bf16").encode_texts(TEXTS[1:3])
    for x, y in zip(a, b):
        assert x.shape == y.shape and y.dtype == np.float32
        assert np.abs(x - y).max() < 0.2  # LayerNorm-ed states (unit scale), bf16 has ~3 digits


def test_truncation_flag_matches_tokenizer(tiny_mice):
    p = _encoder(tiny_mice).main
    L = tiny_mice.config.max_doc_length
    ids, cut = p.tokenize(["word " * (L - 2), "word " * (L - 1), "word " * 100_000])
    assert [len(x) for x in ids] == [L, L, L] and cut == [False, True, True]
    ref, _ = tiny_mice.tokenize(["word " * (L - 1)], L)
    assert ids[1] == ref[0].tolist()


def test_batches_respect_token_budget(tiny_mice):
    enc = _encoder(tiny_mice, batch_tokens=64)
    lengths = [5, 60, 3, 33, 17, 17, 64, 2, 40]
    batches = list(enc._batches(lengths))
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 64
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)


def test_windows_keep_corpus_order_and_boundaries(tiny_mice):
    docs = [Document(f"d{i}", "text " * (i % 13), f"t{i}" if i % 3 else "") for i in range(23)]
    enc = _encoder(tiny_mice, window_docs=4, batch_tokens=128)
    wins = list(enc.windows(iter(docs), start_row=0, boundary=5))
    assert [d.doc_id for w in wins for d in w.docs] == [d.doc_id for d in docs]
    for w in wins:
        assert len(w.docs) <= 4
        assert w.start_row // 5 == (w.start_row + len(w.docs) - 1) // 5  # never crosses a shard
        assert w.states.shape == (int(w.lengths.sum()), tiny_mice.config.hidden_size)
    ref = enc.encode_texts([tiny_mice.format_document(d.title, d.text) for d in docs[5:10]])
    w = next(w for w in wins if w.start_row == 5)
    np.testing.assert_allclose(w.states[: w.lengths[0]], ref[0], atol=1e-5)
    # resuming at a boundary gives the same windows
    again = list(enc.windows(iter(docs[10:]), start_row=10, boundary=5))
    tail = [w for w in wins if w.start_row >= 10]
    assert [w.start_row for w in again] == [w.start_row for w in tail]
    for a, b in zip(again, tail):
        assert np.array_equal(a.states, b.states)


def test_token_window_limit(tiny_mice):
    docs = [Document(f"d{i}", "word " * 30) for i in range(6)]
    wins = list(_encoder(tiny_mice, window_tokens=70).windows(iter(docs)))
    assert all(w.lengths.sum() <= 70 for w in wins) and sum(len(w.docs) for w in wins) == 6


def test_bad_options(tiny_mice):
    with pytest.raises(MiceIndexError, match="--batch-tokens"):
        EncoderConfig(batch_tokens=0)
    with pytest.raises(MiceIndexError, match="--dtype"):
        EncoderConfig(dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(MiceIndexError, match="no CUDA"):
            _encoder(tiny_mice, device="cuda")
