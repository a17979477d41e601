"""candidates/faiss_gpu.py: faiss-gpu where installed, else faiss-cpu with one log line."""

import logging
import types

import faiss
import numpy as np
import pytest

from mice_index.candidates import faiss_gpu
from mice_index.candidates.dense import DenseConfig, DenseIndex


@pytest.fixture(autouse=True)
def fresh_once():
    faiss_gpu._say_cpu_once.cache_clear()
    yield
    faiss_gpu._say_cpu_once.cache_clear()


def vectors(n=500, d=16, seed=0):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_cpu_build_stays_on_cpu_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setattr(faiss_gpu.faiss, "get_num_gpus", lambda: 0, raising=False)
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)  # CUDA seen by torch, not by faiss
    caplog.set_level(logging.INFO, logger=faiss_gpu.__name__)
    x = vectors()
    index = DenseIndex.build(x, DenseConfig(kind="flat"))
    want = faiss.IndexFlatIP(16)
    want.add(x)
    for _ in range(3):
        got = index.search(x[:5], 10)
    np.testing.assert_array_equal(got.rows, want.search(x[:5], 10)[1])
    assert index._searcher is index.index  # not copied anywhere
    lines = [r for r in caplog.records if "faiss-gpu" in r.getMessage()]
    assert len(lines) == 1 and "CPU" in lines[0].getMessage()


def test_no_log_line_without_cuda(monkeypatch, caplog):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    caplog.set_level(logging.INFO, logger=faiss_gpu.__name__)
    assert faiss_gpu.search_index("idx", "flat") == "idx" or faiss_gpu.gpu_count() > 0
    assert not [r for r in caplog.records if "faiss-gpu" in r.getMessage()]


class FakeGpuFaiss(types.SimpleNamespace):
    """The parts of a faiss-gpu module faiss_gpu.py uses, moving nothing (records the calls)."""

    def __init__(self):
        super().__init__(moved=[], StandardGpuResources=lambda: "res", get_num_gpus=lambda: 1,
                         IndexFlatL2=faiss.IndexFlatL2, extract_index_ivf=faiss.extract_index_ivf)

    def index_cpu_to_gpu(self, res, dev, index):
        self.moved.append((res, dev, type(index).__name__))
        return index  # a real faiss index: IVF training takes it as its clustering index


def test_gpu_build_moves_flat_and_ivf_not_hnsw(monkeypatch):
    fake = FakeGpuFaiss()
    monkeypatch.setattr(faiss_gpu, "faiss", fake)
    faiss_gpu._resources.cache_clear()
    flat = faiss.IndexFlatIP(8)
    assert faiss_gpu.search_index(flat, "flat") is flat and fake.moved == [("res", 0, "IndexFlatIP")]
    assert faiss_gpu.search_index("hnsw-index", "hnsw") == "hnsw-index"
    assert faiss_gpu.search_index("pq-index", "ivfpq") == "pq-index"
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 4, faiss.METRIC_INNER_PRODUCT)
    assert faiss_gpu.train_on_gpu(ivf)
    assert [m[2] for m in fake.moved] == ["IndexFlatIP", "IndexFlatL2"]
    faiss_gpu._resources.cache_clear()


def test_train_on_gpu_is_a_no_op_on_faiss_cpu(monkeypatch):
    monkeypatch.setattr(faiss_gpu.faiss, "get_num_gpus", lambda: 0, raising=False)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(8), 8, 4, faiss.METRIC_INNER_PRODUCT)
    assert not faiss_gpu.train_on_gpu(ivf)
    x = vectors(200, 8)
    ivf.train(x)  # still trains on the CPU
    assert ivf.is_trained
