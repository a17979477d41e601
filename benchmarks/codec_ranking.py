"""Ranking effect of each codec: nDCG@10 of first-stage → MICE from codec-decoded states vs fp32.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/codec_ranking.py --collection ../shared/datasets/scifact

One side-by-side run, so every codec re-ranks exactly the same candidates with the same model:
1. the candidates: `--candidates` top-`--depth` per test query from the collection's fp16 index
   (INDEX_ROOT/<collection>-fp16, the naming of pipelines/beir_eval.py; built when missing);
2. the reference: fp32 layer-ℓ* states of every candidate document, recomputed from its text;
3. each codec is fitted as `build` fits it (a random sample of `--fit-tokens` tokens, seed 0,
   here drawn from the candidates' fp32 states), encodes and decodes the reference states, and MICE
   re-ranks from the decoded states.
Reports bytes/token, nDCG@10 and its change vs fp32 in points, and the mean |Δscore|.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from mice_index.build import BuildConfig
from mice_index.codec import make_codec
from mice_index.defaults import load_model
from mice_index.runs import ScoredDoc, evaluate
from mice_index.scorer import MiceScorer, ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import read_queries
from search_speed import ensure_index  # benchmarks/ is on sys.path when run as a script

CODECS = "fp16,int8,int8-dim,pq32,opq32,rq26,rq32"


class MemoryStates:
    """A StateReader over states held in memory (row -> [T, D] float32)."""

    def __init__(self, states: dict[int, np.ndarray]):
        self.states = states

    def lengths(self, rows):
        return np.array([self.states[r].shape[0] for r in rows])

    def get_states(self, rows):
        return [self.states[r] for r in rows]


def reference_states(model, reader, rows: list[int], batch: int = 32) -> dict[int, np.ndarray]:
    out = {}
    for i in range(0, len(rows), batch):
        chunk = rows[i:i + batch]
        texts = [model.format_document(t, x) for t, x in reader.texts(chunk)]
        for r, s in zip(chunk, model.encode_documents(texts)):
            out[r] = s.numpy()
    return out


def parse_spec(spec: str) -> tuple[str, dict]:
    """'pq:M=96;nbits=8' -> ('pq', {'M': 96, 'nbits': 8}); a bare name has no options."""
    name, _, opts = spec.partition(":")
    options = {}
    for item in filter(None, opts.split(";")):
        key, _, value = item.partition("=")
        options[key] = int(value) if value.lstrip("-").isdigit() else value
    return name, options


def roundtrip(spec: str, ref: dict[int, np.ndarray], fit_tokens: int) -> tuple[dict[int, np.ndarray], int]:
    rows = sorted(ref)
    flat = np.concatenate([ref[r] for r in rows])
    rng = np.random.default_rng(0)
    sample = flat[rng.choice(len(flat), size=min(fit_tokens, len(flat)), replace=False)]
    name, options = parse_spec(spec)
    codec = make_codec(name, dim=flat.shape[1], **options).fit(sample, seed=0)
    step = BuildConfig.window_tokens  # encode in build-sized windows: faiss's code tables grow with n
    decoded = np.concatenate([codec.decode(codec.encode(flat[i:i + step])) for i in range(0, len(flat), step)])
    bounds = np.cumsum([0] + [ref[r].shape[0] for r in rows])
    return {r: decoded[a:b] for r, a, b in zip(rows, bounds[:-1], bounds[1:])}, codec.bytes_per_token


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", type=Path, default=Path("../shared/datasets/scifact"))
    p.add_argument("--work", type=Path, default=Path("out/beir/indexes"), help="index root (shared with beir_eval)")
    p.add_argument("--model", default=None)
    p.add_argument("--codecs", default=CODECS, help="comma list of codec names or name:key=value;key=value")
    p.add_argument("--candidates", default="hybrid")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--fit-tokens", type=int, default=BuildConfig.fit_tokens)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="write the report as JSON here too")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    idx = ensure_index(args.collection, args.work / f"{args.collection.name}-fp16", "fp16", model)
    searcher = Searcher.open(idx, model=model, config=SearchConfig(candidates=args.candidates, rerank="none",
                                                                  depth=args.depth, remove_query_id=True))
    queries = list(read_queries(args.collection))
    first = searcher.search_many(queries, k=args.depth)
    rows = {qid: [searcher.reader.row_of(d.doc_id) for d in docs] for qid, docs in first.items()}
    t = time.perf_counter()
    ref = reference_states(model, searcher.reader, sorted({r for rs in rows.values() for r in rs}))
    print(f"fp32 reference states of {len(ref)} documents in {time.perf_counter() - t:.0f}s", flush=True)

    qrels = args.collection
    report = {"collection": args.collection.name, "candidates": args.candidates, "depth": args.depth,
              "queries": len(queries), "first_stage_ndcg10": evaluate(first, qrels, ["nDCG@10"])["nDCG@10"],
              "codecs": {}}
    qids = list(rows)
    texts = {q.query_id: q.text for q in queries}

    def rerank(states: dict[int, np.ndarray]) -> tuple[float, np.ndarray]:
        """nDCG@10 of MICE over the candidates from `states`, and the flat scores."""
        scorer = MiceScorer(model, MemoryStates(states), ScorerConfig(dtype="fp32"))
        scores = scorer.score([texts[q] for q in qids], [rows[q] for q in qids])
        run = {q: [ScoredDoc(q, searcher.reader.doc_id(r), float(s)) for r, s in zip(rows[q], sc)]
               for q, sc in zip(qids, scores)}
        return evaluate(run, qrels, ["nDCG@10"])["nDCG@10"], np.concatenate(scores)

    fp32_scores = None
    for name in ["fp32", *args.codecs.split(",")]:
        t = time.perf_counter()
        states, bpt = (ref, 4 * next(iter(ref.values())).shape[1]) if name == "fp32" else \
            roundtrip(name, ref, args.fit_tokens)
        ndcg, flat = rerank(states)
        if fp32_scores is None:  # the first row is fp32: the reference of every score change
            fp32_scores = flat
        report["codecs"][name] = {"bytes_per_token": bpt, "nDCG@10": ndcg,
                                  "mean_abs_score_diff": float(np.abs(flat - fp32_scores).mean())}
        print(f"{name:9s} {bpt:5d} B/token  nDCG@10 {ndcg:.4f}  ({time.perf_counter() - t:.0f}s)", flush=True)

    base = report["codecs"]["fp32"]["nDCG@10"]
    lines = [f"{args.collection.name}, {args.candidates} top-{args.depth} → MICE, {len(queries)} queries "
             f"(first stage alone: nDCG@10 {report['first_stage_ndcg10']:.3f})", "",
             "| states | bytes/token | nDCG@10 | Δ vs fp32 (points) | mean abs. score change |", "|---|---:|---:|---:|---:|"]
    for name, r in report["codecs"].items():
        lines.append(f"| {name} | {r['bytes_per_token']} | {r['nDCG@10']:.4f} | {100 * (r['nDCG@10'] - base):+.2f} "
                     f"| {r['mean_abs_score_diff']:.4f} |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
