"""EncoderConfig.prefetch: tokenization and forward passes in threads ahead of the writer give the
same windows and bit-identical states; errors arrive in order; leaving early stops the threads."""

import threading

import numpy as np
import pytest

from mice_index.encoder import DocumentEncoder, EncoderConfig
from mice_index.encoder.prefetch import ahead
from mice_index.errors import MiceIndexError
from mice_index.sources import Document

DOCS = [Document(f"d{i}", "", "word " * (i % 37) + f"number {i} about cells and proteins") for i in range(700)]


def _windows(model, prefetch, docs=DOCS, **kw):
    cfg = EncoderConfig(max_doc_length=model.config.max_doc_length, device="cpu", dtype="fp32", window_docs=100,
                        batch_tokens=256, prefetch=prefetch)
    return DocumentEncoder(model, cfg).windows(docs, **kw)


@pytest.mark.parametrize("kw", [{}, {"start_row": 10, "boundary": 300}, {"boundary": 300, "stop_row": 300}])
def test_prefetched_windows_are_bit_identical(tiny_mice, kw):
    serial = list(_windows(tiny_mice, 0, DOCS[kw.get("start_row", 0):], **kw))
    threaded = list(_windows(tiny_mice, 2, DOCS[kw.get("start_row", 0):], **kw))
    assert [w.start_row for w in threaded] == [w.start_row for w in serial] and len(serial) >= 3
    for a, b in zip(serial, threaded):
        assert [d.doc_id for d in a.docs] == [d.doc_id for d in b.docs]
        np.testing.assert_array_equal(a.lengths, b.lengths)
        assert np.array_equal(a.states, b.states)  # bit-identical, not close


def test_prefetch_default_is_serial_on_cpu(tiny_mice):
    enc = DocumentEncoder(tiny_mice, EncoderConfig(max_doc_length=64, device="cpu", dtype="fp32"))
    assert enc.prefetch == 0
    with pytest.raises(MiceIndexError, match="--prefetch must be >= 0"):
        EncoderConfig(prefetch=-1)


def test_bad_document_after_a_shard_comes_after_its_windows(tiny_mice):
    def docs():
        yield from DOCS[:300]
        raise ValueError("line 301: not JSON")

    got = []
    with pytest.raises(ValueError, match="line 301"):
        for w in _windows(tiny_mice, 2, docs(), boundary=300):
            got.append(w)
    assert sum(len(w.docs) for w in got) == 300  # the whole first shard arrived before the error


def test_ahead_keeps_order_and_stops_when_left():
    assert list(ahead(iter(range(1000)), 3)) == list(range(1000))
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    before = threading.active_count()
    gen = ahead(endless(), 2)
    assert [next(gen) for _ in range(5)] == [0, 1, 2, 3, 4]
    gen.close()
    assert closed.wait(5) and threading.active_count() == before


def test_ahead_reraises_in_position():
    def items():
        yield 1
        yield 2
        raise OSError("disk gone")

    out = []
    with pytest.raises(OSError, match="disk gone"):
        for x in ahead(items(), 4):
            out.append(x)
    assert out == [1, 2]
