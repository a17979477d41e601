"""Model selection on real queries: nDCG@10 of a model being trained, on held-out collections.

Pseudo-query dev metrics reward copy detection and say little about real queries (see
BENCHMARKS.md → Training), so early stopping and the recommended interpolation weight are
chosen on real queries with relevance judgements (BEIR folders). These are *read-only*: their
queries and qrels are never trained on, and one setting is chosen for all collections together.

Per collection, BM25 and hybrid (BM25 + all-MiniLM-L6-v2, z-score fusion) candidates are mined
once from the corpus the trainer already holds (texts, layer-ℓ* states, dense embeddings); each
evaluation then scores the union of both lists with the model's inference path and reports

- ``bm25>mice``: pure MICE over BM25's top `depth`;
- ``hybrid>mice@a``: hybrid's top `depth` ranked by a·z(hybrid) + (1−a)·z(MICE), for each a in
  `alphas` (a = 0: pure MICE), so that the best single a (averaged over collections) is known;
- the first stages alone (for reference).

Metrics by ir_measures (`mice_index.runs.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mice_index.candidates import interpolate
from mice_index.model import MiceModel, pad_states
from mice_index.runs import ScoredDoc, evaluate
from mice_index.scorer.fast import score_pairs
from mice_index.sources import read_qrels, read_queries
from mice_index.train.states import round_trip

ALPHAS = (0.0, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class _Collection:
    name: str
    folder: Path
    query_ids: list[str]
    query_texts: list[str]
    lists: dict[str, tuple[np.ndarray, np.ndarray]]  # "bm25" / "hybrid" -> (rows [Q,k], scores [Q,k])
    corpus: object  # train.data.Corpus with states attached
    qrels: list = None  # judgements of the evaluated queries only (others would count as 0)
    states: object = None  # codec round-tripped states (codec=...), else the corpus's

    def tensors(self, rows: list[int]) -> list[torch.Tensor]:
        return (self.states or self.corpus.states).tensors(rows)


class RealDev:
    """Real-query evaluation of a MICE model over corpora held by the trainer.

    `folders`: BEIR folders (queries.jsonl + qrels/test.tsv) whose corpora are `corpora` (same
    names); `depth` candidates per first stage; `max_queries` per collection (first ones, in file
    order; None = all). `codec` (e.g. "compact"): score states round-tripped through that codec,
    fitted per collection as `build` fits it (on the first `fit_tokens` tokens of the corpus)."""

    def __init__(self, folders: list[Path], corpora: dict[str, object], dense, depth: int = 30,
                 max_queries: int | None = None, alphas=ALPHAS, codec: str | None = None,
                 fit_tokens: int = 100_000):
        from mice_index.train.teachers import HybridTeacher, dense_query_embeddings

        self.depth, self.alphas, self.collections = depth, tuple(alphas), []
        model, tower = dense
        for folder in map(Path, folders):
            corpus = corpora[folder.name]
            queries = list(read_queries(folder))[:max_queries]
            texts = [q.text for q in queries]
            teacher = HybridTeacher(corpus.texts, corpus.states.dense, depth=min(depth, len(corpus.doc_ids)))
            bm25, _, hybrid = teacher.mine(texts, dense_query_embeddings(model, tower, texts))
            ids = [q.query_id for q in queries]
            c = _Collection(folder.name, folder, ids, texts,
                            {"bm25": (bm25.rows, bm25.scores), "hybrid": (hybrid.rows, hybrid.scores)}, corpus,
                            [j for j in read_qrels(folder) if j.query_id in set(ids)])
            if codec is not None:
                c.states = round_trip(corpus.states, codec, fit_tokens)
            self.collections.append(c)

    @torch.inference_mode()
    def evaluate(self, model: MiceModel, batch_pairs: int = 256) -> dict[str, float]:
        """-> {"<system>/<collection>": nDCG@10, "<system>": average over collections}."""
        was = model.training
        model.eval()
        out: dict[str, float] = {}
        try:
            for c in self.collections:
                mice = self._score(model, c, batch_pairs)
                runs = {"bm25": self._run(c, "bm25", None), "hybrid": self._run(c, "hybrid", None),
                        "bm25>mice": self._run(c, "bm25", mice, 0.0)}
                for a in self.alphas:
                    runs[f"hybrid>mice@{a:g}"] = self._run(c, "hybrid", mice, a)
                for name, run in runs.items():
                    out[f"{name}/{c.name}"] = evaluate(run, c.qrels, ["nDCG@10"])["nDCG@10"]
        finally:
            model.train(was)
        for name in {k.split("/")[0] for k in out}:
            vals = [out[f"{name}/{c.name}"] for c in self.collections]
            out[name] = float(np.mean(vals))
        return out

    def best_alpha(self, result: dict[str, float]) -> tuple[float, float]:
        """(alpha, average nDCG@10) of the best hybrid>mice interpolation weight."""
        return max(((a, result[f"hybrid>mice@{a:g}"]) for a in self.alphas), key=lambda t: (t[1], -t[0]))

    def _score(self, model: MiceModel, c: _Collection, batch_pairs: int) -> dict[tuple[int, int], float]:
        """MICE scores of every (query, row) in the union of both lists."""
        pairs = sorted({(q, int(r)) for rows, _ in c.lists.values() for q in range(len(rows)) for r in rows[q] if r >= 0})
        q_states, q_mask = model.encode_queries(c.query_texts)
        scores = {}
        for i in range(0, len(pairs), batch_pairs):
            chunk = pairs[i:i + batch_pairs]
            docs, d_mask = pad_states(c.tensors([r for _, r in chunk]))
            pq = torch.tensor([q for q, _ in chunk])
            s = score_pairs(model.interaction, q_states, q_mask, pq, docs.to(q_states.dtype), d_mask)
            scores.update(zip(chunk, s.float().tolist()))
        return scores

    def _run(self, c: _Collection, kind: str, mice, alpha: float | None = None) -> dict[str, list[ScoredDoc]]:
        rows_all, first_all = c.lists[kind]
        run = {}
        for q, (rows, first) in enumerate(zip(rows_all, first_all)):
            keep = rows >= 0
            rows, first = rows[keep], first[keep]
            s = first if mice is None else interpolate(first, np.array([mice[(q, int(r))] for r in rows]), alpha)
            run[c.query_ids[q]] = [ScoredDoc(c.query_ids[q], c.corpus.doc_ids[int(r)], float(v)) for r, v in zip(rows, s)]
        return run

