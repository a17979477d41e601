"""First-stage candidate generation: BM25 (bm25s), dense (faiss) and their fusion.

Documents are integer rows 0..N-1 in corpus order; results are :class:`Candidates`
(rows int64 [Q, k] padded with -1, scores float32 [Q, k] padded with -inf).
"""

from mice_index.candidates.base import CandidateGenerator, Candidates
from mice_index.candidates.bm25 import BM25Config, BM25Index
from mice_index.candidates.dense import DenseConfig, DenseIndex, DenseIndexBuilder
from mice_index.candidates.hybrid import HybridConfig, fuse, fuse_lists, interpolate
from mice_index.candidates.vectors import StoredVectors

__all__ = [
    "BM25Config",
    "BM25Index",
    "CandidateGenerator",
    "Candidates",
    "DenseConfig",
    "DenseIndex",
    "DenseIndexBuilder",
    "HybridConfig",
    "StoredVectors",
    "fuse",
    "fuse_lists",
    "interpolate",
]
