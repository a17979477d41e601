"""Cost of a metadata-filtered search vs an unfiltered one, side by side in one run.

The collection (default: cranfield, 1,400 documents) gets one synthetic field derived from the row
number only, `bucket:int` = row % 100 (no dataset text is copied anywhere but the work folder), so
`bucket < P` keeps P % of the documents. For each selectivity the same queries are searched
unfiltered and filtered, interleaved (per query: unfiltered, then each filter), with the
default pipeline (hybrid top-100 → MICE) and with the first stage alone (--rerank none), and the
dense first stage alone for each dense kind (flat, hnsw, ivfpq built from the stored vectors), and
on `--synthetic-docs` random vectors (where a filter keeping more than 20,000 rows goes through the
faiss ID selector, with its recall of the exact filtered top 100).
Reported: median and p95 latency per query (ms), the ratio to unfiltered, the hits per query
(exactly min(k, matching documents)) and the one-off cost of a filter's mask (compiled and
evaluated once per filter text, then cached by the Searcher).

    nice -n 10 python benchmarks/filter_cost.py --collection ../shared/datasets/cranfield \\
        --work out/filter_cost --queries 30
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from mice_index.build import BuildConfig, build_index
from mice_index.candidates import DenseConfig, DenseIndex
from mice_index.defaults import load_model
from mice_index.filters import FilterMasks
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import read_documents, read_queries
from mice_index.store import index_info

PERCENTS = (100, 50, 10, 1)


def corpus_with_field(collection: Path, out: Path) -> Path:
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as f:
            for row, d in enumerate(read_documents(collection)):
                f.write(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text, "bucket": row % 100}) + "\n")
    return out


def ms(values: list[float]) -> dict:
    v = sorted(values)
    p95 = v[min(len(v) - 1, int(0.95 * len(v)))]
    return {"p50": round(statistics.median(v) * 1000, 2), "p95": round(p95 * 1000, 2)}


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def pipeline_rows(searcher: Searcher, queries: list[str], k: int) -> dict:
    filters = {p: None if p == 100 else f"bucket < {p}" for p in PERCENTS}
    mask_ms = {}
    for p, text in filters.items():  # the one-off cost of each mask (then cached)
        if text is not None:
            masks = FilterMasks(searcher.reader)
            mask_ms[p] = round(timed(lambda: masks.mask(text)) * 1000, 2)
            searcher.allowed(text)
    times = {p: [] for p in filters}
    hits = {p: set() for p in filters}
    searcher.search(queries[0], k=k)  # warm-up
    for q in queries:
        for p, text in filters.items():
            t = time.perf_counter()
            res = searcher.search(q, k=k, filter=text)
            times[p].append(time.perf_counter() - t)
            hits[p].add(len(res))
    base = statistics.median(times[100])
    return {f"{p}%": {**ms(times[p]), "ratio_p50": round(statistics.median(times[p]) / base, 3),
                      "hits_per_query": sorted(hits[p]), "mask_ms": mask_ms.get(p)} for p in filters}


def dense_rows(searcher: Searcher, queries: list[str], k: int, depth: int) -> dict:
    vectors = searcher.reader.dense_vectors()
    emb = searcher._embed(queries)  # the queries' embeddings, computed once (not part of the timing)
    n = vectors.shape[0]
    out = {}
    for kind in ("flat", "hnsw", "ivfpq"):
        index = DenseIndex.build(vectors, DenseConfig(kind=kind))
        row = {}
        masks = {p: None if p == 100 else (np.arange(n) % 100) < p for p in PERCENTS}
        times = {p: [] for p in PERCENTS}
        for q in emb:
            for p, m in masks.items():
                t = time.perf_counter()
                got = index.search(q[None], depth, allowed=m)
                times[p].append(time.perf_counter() - t)
                assert (got.rows >= 0).sum() == min(depth, n if m is None else int(m.sum()))
        base = statistics.median(times[100])
        for p in PERCENTS:
            row[f"{p}%"] = {**ms(times[p]), "ratio_p50": round(statistics.median(times[p]) / base, 3)}
        out[kind] = row
    return out


def synthetic_dense_rows(num_docs: int, num_queries: int, depth: int, seed: int = 0) -> dict:
    """Dense candidates alone over `num_docs` clustered random unit vectors (D=384): filtered vs unfiltered
    latency per kind, and the filtered lists' recall of the exact top-`depth` of the allowed rows
    (a filter keeping more than EXACT_FILTER_ROWS rows goes through the faiss ID selector)."""
    from mice_index.candidates.dense import EXACT_FILTER_ROWS

    rng = np.random.default_rng(seed)

    def unit(v):
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    # clustered like text embeddings (pure noise in 384-d has no neighbourhoods an ANN index can use):
    # 200 topic centres, a document = normalise(centre + 0.35 * its own direction)
    centres = unit(rng.standard_normal((200, 384)))
    x = unit(centres[rng.integers(0, 200, num_docs)] + 0.35 * unit(rng.standard_normal((num_docs, 384))))
    q = unit(x[rng.choice(num_docs, num_queries, replace=False)] + 0.35 * unit(rng.standard_normal((num_queries, 384))))
    percents = (100, 50, 25, 10, 1)
    masks = {p: None if p == 100 else rng.random(num_docs) < p / 100 for p in percents}
    exact = {}
    for p, m in masks.items():
        rows = np.arange(num_docs) if m is None else np.flatnonzero(m)
        s = q @ x[rows].T
        exact[p] = [set(rows[np.argsort(-si)[:depth]].tolist()) for si in s]
    out = {"documents": num_docs, "queries": num_queries, "depth": depth, "exact_filter_rows": EXACT_FILTER_ROWS}
    for kind in ("flat", "hnsw", "ivfpq"):
        t = time.perf_counter()
        index = DenseIndex.build(x, DenseConfig(kind=kind))
        row = {"build_s": round(time.perf_counter() - t, 1)}
        times = {p: [] for p in percents}
        recall = {p: [] for p in percents}
        for i in range(num_queries):
            for p, m in masks.items():
                t = time.perf_counter()
                got = index.search(q[i : i + 1], depth, allowed=m)
                times[p].append(time.perf_counter() - t)
                assert (got.rows >= 0).sum() == depth
                recall[p].append(len(exact[p][i] & set(got.rows[0].tolist())) / depth)
        base = statistics.median(times[100])
        for p in percents:
            row[f"{p}%"] = {**ms(times[p]), "ratio_p50": round(statistics.median(times[p]) / base, 3),
                            "recall": round(float(np.mean(recall[p])), 4)}
        out[kind] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collection", type=Path, required=True)
    ap.add_argument("--work", type=Path, default=Path("out/filter_cost"))
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--synthetic-docs", type=int, default=100_000,
                    help="random vectors for the dense-only part (0: skip it)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/filter_cost.json"))
    args = ap.parse_args()
    name = args.collection.name
    corpus = corpus_with_field(args.collection, args.work / f"{name}-bucket.jsonl")
    idx = args.work / f"{name}-bucket-fp16"
    model = load_model(None)
    if not ((idx / "manifest.json").exists() and index_info(idx)["complete"]):
        build_index(corpus, idx, BuildConfig(codec="fp16", fields=("bucket:int",)), model=model)
    queries = [q.text for q in read_queries(args.collection)][: args.queries]
    searcher = Searcher.open(idx, model=model, config=SearchConfig())
    result = {
        "collection": name, "documents": searcher.reader.num_docs, "queries": len(queries), "k": args.k,
        "field": "bucket = row % 100; filter 'bucket < P' keeps P% of the documents",
        "hybrid_mice": pipeline_rows(searcher, queries, args.k),
        "hybrid_first_stage": pipeline_rows(searcher.with_config(rerank="none"), queries, args.k),
        "dense_candidates_top100": dense_rows(searcher, queries, args.k, min(100, searcher.reader.num_docs)),
    }
    if args.synthetic_docs:
        result["dense_synthetic_top100"] = synthetic_dense_rows(args.synthetic_docs, len(queries), 100)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
