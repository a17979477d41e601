"""Teachers: where the distillation targets come from.

- Teacher-scores files (the route to reproduce the paper on MS MARCO):
  * ``msmarco-tsv``: Hofstätter et al.'s ensemble file, one triplet per line
    ``score_pos<TAB>score_neg<TAB>qid<TAB>pid_pos<TAB>pid_neg``;
  * ``jsonl``: one object per line ``{"query_id": ..., "doc_id": ..., "score": ...}``.
  Ids are checked against the queries and corpus: an unknown id is one error naming file and line.
- The offline hybrid teacher: per query, z-score fusion of BM25 and all-MiniLM-L6-v2 dense scores
  (``mice_index.candidates.fuse``), i.e. the project's own first stage used as a judge.
- A full cross-encoder (any HF ``*ForSequenceClassification`` with one label, path or hub id).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mice_index.candidates import BM25Index, Candidates, DenseIndex, fuse
from mice_index.errors import SourceError
from mice_index.sources._files import blame_damaged_stream, iter_lines, parse_json_object
from mice_index.text import JSON_HINT, bounded_texts, check_text

log = logging.getLogger(__name__)


class TeacherFileError(SourceError):
    """A teacher-scores file is malformed or references unknown query / document ids."""


@dataclass(frozen=True)
class TeacherTriplet:
    query_id: str
    pos_id: str
    neg_id: str
    pos_score: float
    neg_score: float


def _float(text: str, path: Path, lineno: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise TeacherFileError(f"{path}:{lineno}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise TeacherFileError(f"{path}:{lineno}: {what} is not finite ({text})")
    return value


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    if not path.is_file():
        raise TeacherFileError(f"{path}: teacher-scores file not found")
    return iter_lines(path)  # strict UTF-8, .gz/.bz2/.xz, errors naming file:line


def read_msmarco_triplets(path: str | Path) -> Iterator[tuple[int, TeacherTriplet]]:
    """(line number, triplet) from a Hofstätter et al. ensemble-scores TSV."""
    path = Path(path)
    with blame_damaged_stream(path):
        for lineno, line in _lines(path):
            parts = line.split("\t") if "\t" in line else line.split()
            if len(parts) != 5:
                raise TeacherFileError(f"{path}:{lineno}: expected 5 fields 'score_pos score_neg qid pid_pos "
                                       f"pid_neg', got {len(parts)}")
            sp, sn = _float(parts[0], path, lineno, "score_pos"), _float(parts[1], path, lineno, "score_neg")
            yield lineno, TeacherTriplet(parts[2], parts[3], parts[4], sp, sn)


def read_jsonl_scores(path: str | Path) -> Iterator[tuple[int, str, str, float]]:
    """(line number, query id, doc id, score) from a JSONL teacher-scores file."""
    path = Path(path)
    with blame_damaged_stream(path):
        for lineno, line in _lines(path):
            obj = parse_json_object(path, lineno, line)
            for key in ("query_id", "doc_id", "score"):
                if key not in obj:
                    raise TeacherFileError(f"{path}:{lineno}: missing field {key!r}")
            score = _float(str(obj["score"]), path, lineno, "score")
            qid, did = (check_text(str(obj[k]), f"{path}:{lineno}: field {k!r}", TeacherFileError, JSON_HINT)
                        for k in ("query_id", "doc_id"))
            yield lineno, qid, did, score


def check_known(path, lineno: int, query_id: str, doc_ids: Iterable[str], queries, docs) -> None:
    if query_id not in queries:
        raise TeacherFileError(f"{path}:{lineno}: unknown query id {query_id!r} (not in the training queries)")
    for d in doc_ids:
        if d not in docs:
            raise TeacherFileError(f"{path}:{lineno}: unknown document id {d!r} (not in the corpus)")


def referenced_ids(path: str | Path, fmt: str) -> tuple[set[str], set[str]]:
    """Query ids and doc ids a teacher file mentions (to read only those texts from big corpora)."""
    qids, dids = set(), set()
    if fmt == "msmarco-tsv":
        for _, t in read_msmarco_triplets(path):
            qids.add(t.query_id)
            dids.update((t.pos_id, t.neg_id))
    else:
        for _, q, d, _ in read_jsonl_scores(path):
            qids.add(q)
            dids.add(d)
    return qids, dids


# ----------------------------------------------------------------------------------------------
# The offline hybrid teacher (also the candidate miner)


class HybridTeacher:
    """BM25 + dense (all-MiniLM-L6-v2) over one corpus; `mine` returns the fused candidates, whose
    fused z-scores are the hybrid teacher's scores."""

    def __init__(self, texts: list[str], dense: np.ndarray, depth: int = 100):
        self.bm25 = BM25Index.build(texts)
        self.dense = DenseIndex.build(dense)
        self.depth = depth

    def mine(self, query_texts: list[str], query_emb: np.ndarray) -> tuple[Candidates, Candidates, Candidates]:
        """(bm25, dense, fused) candidates, each [Q, depth]."""
        a = self.bm25.search(query_texts, self.depth)
        b = self.dense.search(query_emb, self.depth)
        return a, b, fuse(a, b, "zscore", k=self.depth)


@torch.inference_mode()
def dense_query_embeddings(model, tower, texts: list[str], batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of queries through the MICE bottom + the backbone's upper layers."""
    out = []
    for i in range(0, len(texts), batch_size):
        ids, mask = model.tokenize(texts[i : i + batch_size], model.config.max_doc_length)
        out.append(tower(model.encode_document_batch(ids, mask), mask).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.config.hidden_size), np.float32)


# ----------------------------------------------------------------------------------------------
# Full cross-encoder teacher


class CrossEncoderTeacher:
    """Scores (query, document) pairs with an HF sequence-classification model (one label)."""

    def __init__(self, name_or_path: str, batch_size: int = 32, max_length: int = 512):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from mice_index.checkpoints import load_safetensors as _load_safetensors, resolve_model_path

        path = resolve_model_path(name_or_path)
        _load_safetensors(path)  # refuses pickle-only checkpoints with a clear message
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(str(path), use_safetensors=True).eval()
        if self.model.config.num_labels != 1:
            raise SourceError(f"{path}: a teacher cross-encoder must have exactly one label")
        self.batch_size, self.max_length = batch_size, max_length

    @torch.inference_mode()
    def score(self, pairs: list[tuple[str, str]]) -> np.ndarray:
        out = []
        for i in range(0, len(pairs), self.batch_size):
            chunk = pairs[i : i + self.batch_size]
            docs = bounded_texts(self.tokenizer, [d for _, d in chunk], self.max_length)  # same kept tokens
            enc = self.tokenizer([q for q, _ in chunk], docs, truncation="only_second",
                                 max_length=self.max_length, padding=True, return_tensors="pt")
            out.append(self.model(**enc).logits[:, 0].float().numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)
