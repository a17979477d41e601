"""Cross-query batching (scorer/feed.py, the CUDA default) on the CPU, through the same code path
forced with batching="cross": a query's scores do not depend on the queries it is batched with,
shapes come from buckets, host buffers are allocated once, device decoding equals host decoding."""

import numpy as np
import pytest
import torch

from mice_index.codec import make_codec
from mice_index.errors import SearchError
from mice_index.scorer import MiceScorer, ScorerConfig
from mice_index.scorer.feed import BF16_BOUND, BufferPool, bucket_length, plan_cross

WORDS = ("honey bees wax cells nectar volcano crust lava solar panels cloud power sailors latitude star "
         "night instrument river delta silt ocean tide moon orbit").split()
QUERIES = ["how do bees make honey", "navigation by stars at night with a simple instrument and a clear sky",
           "volcano", "solar power on cloudy days", "river delta silt"]


def corpus(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, rng.integers(1, 60))) for _ in range(n)]


class CodecReader:
    """An index in memory: codec columns per row, as IndexReader returns them."""

    def __init__(self, model, texts, codec="fp16"):
        states = [s.numpy() for s in model.encode_documents(texts)]
        self.codec = make_codec(codec, dim=states[0].shape[1], **({"M": 8, "n_centroids": 16}
                                                                     if codec == "rq" else {}))
        self.codec.fit(np.concatenate(states), seed=0)
        self.parts = [self.codec.encode(s) for s in states]
        self.num_docs = len(texts)

    def lengths(self, rows):
        return np.array([len(self.parts[r]["values" if "values" in self.parts[r] else "codes"]) for r in rows])

    def get_encoded(self, rows):
        return [self.parts[r] for r in rows]

    def get_states(self, rows):
        return [self.codec.decode(self.parts[r]) for r in rows]


def candidates(n_queries, n_docs, k=12, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.choice(n_docs, k, replace=False).tolist() for _ in range(n_queries)]


def cfg(**kw):
    return ScorerConfig(dtype=kw.pop("dtype", "fp32"), quantize="none", **kw)


@pytest.fixture(scope="module")
def model(tmp_path_factory, minilm_dir):
    """The tiny random MICE model of conftest.py (tiny_mice), once per module."""
    from mice_index.model import MiceModel
    from tests.conftest import write_tiny_bert

    path = tmp_path_factory.mktemp("cross") / "tiny-bert"
    write_tiny_bert(path, minilm_dir)
    return MiceModel.from_pretrained(path, fusion_layer=2, num_interaction_layers=2, max_doc_length=64,
                                     max_query_length=16)


@pytest.fixture(scope="module")
def reader(model):
    return CodecReader(model, corpus())


@pytest.mark.parametrize("budget", [64, 256, 131_072])
@pytest.mark.parametrize("decode", ["host", "device"])
def test_cross_batches_equal_alone_fp32(model, reader, budget, decode):
    cands = candidates(len(QUERIES), reader.num_docs)
    scorer = MiceScorer(model, reader, cfg(batching="cross", cross_batch_tokens=budget, decode=decode))
    assert scorer.feed is not None
    together = scorer.score(QUERIES, cands)
    alone = MiceScorer(model, reader, cfg(batching="query"))
    for q, c, got in zip(QUERIES, cands, together):
        np.testing.assert_allclose(got, alone.score([q], [c])[0], atol=1e-5, rtol=0)
        np.testing.assert_allclose(got, scorer.score([q], [c])[0], atol=1e-5, rtol=0)
    # the batches really mixed queries (else the test proves nothing)
    flat_q = np.concatenate([np.full(len(c), i) for i, c in enumerate(cands)])
    lengths = reader.lengths(np.concatenate(cands).tolist())
    assert max(len(np.unique(flat_q[b])) for b in scorer.feed.plan(lengths, flat_q)) > 1


def test_cross_scores_equal_text_scores(model, reader):
    texts = corpus()
    scorer = MiceScorer(model, CodecReader(model, texts, "fp32"), cfg(batching="cross", cross_batch_tokens=100,
                                                                       decode="device"))
    cands = candidates(2, len(texts), k=6)
    for q, c, got in zip(QUERIES, cands, scorer.score(QUERIES[:2], cands)):
        np.testing.assert_allclose(got, model.score_texts(q, [texts[i] for i in c]).numpy(), atol=1e-5)


def test_cross_batches_bf16_within_stated_bound(model, reader):
    cands = candidates(len(QUERIES), reader.num_docs, seed=3)
    together = MiceScorer(model, reader, cfg(dtype="bf16", batching="cross", cross_batch_tokens=256,
                                             decode="device")).score(QUERIES, cands)
    alone = MiceScorer(model, reader, cfg(dtype="bf16", batching="query"))
    worst = 0.0
    for q, c, got in zip(QUERIES, cands, together):
        want = alone.score([q], [c])[0]
        worst = max(worst, float((np.abs(got - want) / (1 + np.abs(want))).max()))
    assert worst <= BF16_BOUND


def test_device_decoding_of_compact_codes_equals_host(model):
    reader = CodecReader(model, corpus(30), "rq")
    cands = candidates(3, 30, k=10)
    host = MiceScorer(model, reader, cfg(batching="cross", decode="host", cross_batch_tokens=128)).score(QUERIES[:3], cands)
    dev = MiceScorer(model, reader, cfg(batching="cross", decode="device", cross_batch_tokens=128)).score(QUERIES[:3], cands)
    for h, d in zip(host, dev):
        np.testing.assert_allclose(d, h, atol=1e-5)


def test_device_cache_gives_the_same_scores(model, reader, monkeypatch):
    import mice_index.scorer.feed as feed

    monkeypatch.setattr(feed.DeviceCache, "BLOCK", 7)  # several fill blocks
    scorer = MiceScorer(model, reader, cfg(batching="cross", decode="device", gpu_cache=1, cross_batch_tokens=200))
    assert scorer.feed.cache.rows == reader.num_docs  # 1 MiB holds this corpus
    assert scorer.feed.describe()["gpu_cache"]["rows"] == reader.num_docs
    cands = candidates(len(QUERIES), reader.num_docs)
    want = MiceScorer(model, reader, cfg(batching="query")).score(QUERIES, cands)
    for g, w in zip(scorer.score(QUERIES, cands), want):
        np.testing.assert_allclose(g, w, atol=1e-5)


def test_device_cache_holds_a_prefix_within_its_bound(model, reader):
    from mice_index.scorer.feed import DeviceCache

    bound = int(reader.lengths(range(10)).sum() * reader.codec.bytes_per_token) + 1  # rows 0..9 fit, not 10
    cache = DeviceCache(reader, torch.device("cpu"), bound)
    assert cache.rows == 10 and cache.nbytes <= bound
    scorer = MiceScorer(model, reader, cfg(batching="cross", decode="device", cross_batch_tokens=200))
    scorer.feed.cache = cache
    cands = candidates(len(QUERIES), reader.num_docs, seed=5)  # mixes cached and uncached rows
    assert any(min(c) < 10 <= max(c) for c in cands)
    want = MiceScorer(model, reader, cfg(batching="query")).score(QUERIES, cands)
    for g, w in zip(scorer.score(QUERIES, cands), want):
        np.testing.assert_allclose(g, w, atol=1e-5)
    assert DeviceCache(reader, torch.device("cpu"), 0).rows == 0


def test_bucket_length_ladder():
    assert [bucket_length(n) for n in (0, 1, 16, 17, 128, 129, 190, 256, 300, 511, 512)] == \
        [16, 16, 16, 32, 128, 144, 192, 256, 320, 512, 512]
    for n in range(1, 2000):
        b = bucket_length(n)
        assert n <= b <= max(16, n * 1.125 + 16) and b % 16 == 0
    assert len({bucket_length(n) for n in range(1, 513)}) <= 8 + 8 + 8 + 8  # few shapes


def test_plan_cross_shapes_and_cover():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, 640)
    pair_query = np.repeat(np.arange(64), 10)
    budget = 4096
    plan = plan_cross(lengths, pair_query, budget)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(640))  # every pair exactly once
    shapes = set()
    for b in plan:
        T = bucket_length(lengths[b].max())
        assert {bucket_length(n) for n in lengths[b]} == {T}  # one bucket per batch
        assert len(b) <= max(1, budget // T)
        assert (np.diff(pair_query[b]) >= 0).all()  # a query's pairs contiguous
        shapes.add((len(b), T))
    full = [b for b in plan if len(b) == budget // bucket_length(lengths[b].max())]
    assert len(full) >= len(plan) // 2  # most batches have their bucket's full shape
    assert len(shapes) <= 2 * len({bucket_length(n) for n in lengths})


def test_plan_cross_keeps_query_length_classes_apart():
    rng = np.random.default_rng(1)
    query_lengths = np.array([3, 5, 30, 9, 31, 4])
    pair_query = np.repeat(np.arange(6), 20)
    lengths = rng.integers(1, 200, len(pair_query))
    plan = plan_cross(lengths, pair_query, 10_000, query_lengths)
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(pair_query)))
    for b in plan:
        assert len({-(-int(query_lengths[q]) // 8) for q in pair_query[b]}) == 1
    assert any(len(np.unique(pair_query[b])) > 1 for b in plan)  # short queries 3, 5, 4 still share


def test_plan_cross_long_document_alone():
    plan = plan_cross(np.array([5000, 10, 10]), np.array([0, 1, 1]), 1024)
    assert [b.tolist() for b in plan] == [[0], [1, 2]]


def test_buffers_allocated_once_and_reused(model, reader):
    scorer = MiceScorer(model, reader, cfg(batching="cross", cross_batch_tokens=128, decode="device", prefetch=2))
    for seed in range(3):
        scorer.score(QUERIES, candidates(len(QUERIES), reader.num_docs, seed=seed))
    pool = scorer.feed.pool
    assert pool.allocated == pool.count == 4 and pool.grown == 0
    host = MiceScorer(model, reader, cfg(batching="cross", cross_batch_tokens=128, decode="host"))
    host.score(QUERIES, candidates(len(QUERIES), reader.num_docs))
    assert host.feed.pool.allocated == host.feed.pool.count and host.feed.pool.grown == 0


def test_buffer_pool_grows_for_an_oversized_batch():
    pool = BufferPool(2, 100, pin=False)
    a = pool.acquire(50)
    pool.release(a)
    assert pool.acquire(50) is a or pool.allocated == 2
    big = pool.acquire(1000)
    assert big.numel() >= 1000 and pool.grown == 1 and pool.allocated == 3


def test_bad_batching_options(model, reader):
    with pytest.raises(SearchError, match="--batching must be"):
        MiceScorer(model, reader, cfg(batching="mixed"))
    with pytest.raises(SearchError, match="quantize int8"):
        MiceScorer(model, reader, ScorerConfig(dtype="fp32", quantize="int8", batching="cross"))
    with pytest.raises(SearchError, match="--decode must be"):
        MiceScorer(model, reader, cfg(batching="cross", decode="gpu"))
    with pytest.raises(SearchError, match="--gpu-cache needs cross"):
        MiceScorer(model, reader, cfg(batching="query", gpu_cache=64))
    with pytest.raises(SearchError, match="--gpu-cache must be"):
        cfg(gpu_cache=-1)
    with pytest.raises(SearchError, match="--cross-batch-tokens must be"):
        cfg(cross_batch_tokens=0)
    with pytest.raises(SearchError, match="--sdpa must be"):
        cfg(sdpa="fast")


def test_auto_batching_is_per_query_on_cpu(model, reader):
    assert MiceScorer(model, reader, cfg()).feed is None


def test_sdpa_choice_gives_the_same_scores(model, reader):
    cands = candidates(2, reader.num_docs)
    a = MiceScorer(model, reader, cfg(batching="cross", sdpa="math")).score(QUERIES[:2], cands)
    b = MiceScorer(model, reader, cfg(batching="cross")).score(QUERIES[:2], cands)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=1e-6)
