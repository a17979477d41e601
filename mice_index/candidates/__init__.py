"""First-stage candidate generation: BM25 (bm25s), dense (faiss) and their fusion."""

from mice_index.candidates.base import Candidates, CandidateGenerator
from mice_index.candidates.bm25 import BM25Config, BM25Index

__all__ = ["BM25Config", "BM25Index", "CandidateGenerator", "Candidates"]
