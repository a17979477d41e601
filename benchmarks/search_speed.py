"""Search-side speed, measured side by side in one run (ratios matter; these machines are noisy).

1. pairs/s: MICE from stored states (per codec) vs the full cross-encoder of the same backbone on
   the same (query, candidate) pairs (hybrid top-`depth` of the first `--queries` queries).
2. end-to-end latency p50/p95 of one query (hybrid top-100 → MICE) on the original corpus and on a
   corpus `--scale` times larger (documents repeated with new ids).

    python benchmarks/search_speed.py --collection ../shared/datasets/scifact --work out/beir/indexes
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from mice_index.build import BuildConfig, build_index
from mice_index.crossencoder import CrossEncoder
from mice_index.defaults import DEFAULT_BACKBONE, load_model
from mice_index.scorer import MiceScorer, ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import read_documents, read_queries
from mice_index.store import IndexReader, index_info


def ensure_index(corpus, idx: Path, codec: str, model) -> Path:
    """Reuses INDEX_ROOT/<collection>-<codec> (the naming of pipelines/beir_eval.py) when complete;
    builds it otherwise (build_index resumes an interrupted build)."""
    if not ((idx / "manifest.json").exists() and index_info(idx)["complete"]):
        build_index(corpus, idx, BuildConfig(codec=codec), model=model)
    return idx


def scaled_corpus(folder: Path, out: Path, scale: int) -> Path:
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("w") as f:
            for rep in range(scale):
                for d in read_documents(folder):
                    doc_id = d.doc_id if rep == 0 else f"{d.doc_id}#r{rep}"
                    f.write(json.dumps({"_id": doc_id, "title": d.title, "text": d.text}) + "\n")
    return out


def pairs_per_second(args, model, queries) -> dict:
    name = args.collection.name
    base = Searcher.open(ensure_index(args.collection, args.work / f"{name}-fp16", "fp16", model), model=model,
                         config=SearchConfig(rerank="none", depth=args.depth, remove_query_id=True))
    cands = [[r for r, _ in base._search_batch([q], args.depth)[q.query_id]] for q in queries]
    n_pairs = sum(map(len, cands))
    texts = [[model.format_document(*base.reader.texts([r])[0]) for r in rows] for rows in cands]
    out = {"pairs": n_pairs}
    scorers = {}
    for codec in args.codecs.split(","):
        reader = IndexReader.open(ensure_index(args.collection, args.work / f"{name}-{codec}", codec, model))
        for dtype in ("fp32", "bf16"):
            scorers[f"mice[{codec},{dtype}]"] = MiceScorer(load_model(args.model), reader, ScorerConfig(dtype=dtype))
    texts_q = [q.text for q in queries]
    for scorer in scorers.values():  # warm-up: every state read once (page cache), every kernel run
        scorer.score(texts_q, cands)
    times = {k: [] for k in scorers}
    for _ in range(args.repeats):  # interleaved, so drifting machine load hits every variant alike
        for k, scorer in scorers.items():
            t = time.perf_counter()
            scorer.score(texts_q, cands)
            times[k].append(time.perf_counter() - t)
    out |= {k: n_pairs / statistics.median(v) for k, v in times.items()}
    for dtype, torch_dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ce = CrossEncoder(DEFAULT_BACKBONE, max_length=args.ce_max_length, dtype=torch_dtype)
        ce.score(queries[0].text, texts[0][:8])
        t = time.perf_counter()
        for q, docs in zip(queries, texts):
            ce.score(q.text, docs, batch_size=32)
        out[f"cross-encoder[{dtype}]"] = n_pairs / (time.perf_counter() - t)
    return out


def latency(idx: Path, model, queries, depth: int, codec: str) -> dict:
    searcher = Searcher.open(idx, model=model, config=SearchConfig(candidates="hybrid", depth=depth))
    searcher.search(queries[0].text, k=10)  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        searcher.search(q.text, k=10)
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {"docs": searcher.reader.num_docs, "codec": codec, "p50_ms": statistics.median(times),
            "p95_ms": times[int(0.95 * (len(times) - 1))], "queries": len(times)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--collection", type=Path, default=Path("../shared/datasets/scifact"))
    p.add_argument("--work", type=Path, default=Path("out/beir/indexes"), help="index root (shared with beir_eval)")
    p.add_argument("--model", default=None)
    p.add_argument("--codecs", default="fp16,compact")
    p.add_argument("--queries", type=int, default=20, help="queries for the pairs/s comparison")
    p.add_argument("--latency-queries", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3, help="timed MICE passes per variant (median)")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--ce-max-length", type=int, default=288, help="32 query + 256 document tokens")
    p.add_argument("--scale", type=int, default=10, help="1: skip the larger-corpus comparison")
    p.add_argument("--latency-collection", type=Path, default=Path("../shared/datasets/cranfield"),
                   help="collection repeated --scale times for the latency-vs-size comparison")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip", default="", help="comma list of parts to skip: pairs,latency")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    queries = list(read_queries(args.collection))
    report = {"collection": str(args.collection), "threads": args.threads, "depth": args.depth}
    if "pairs" not in args.skip:
        report["pairs_per_s"] = pairs_per_second(args, model, queries[: args.queries])
        pps = report["pairs_per_s"]
        ce = max(pps["cross-encoder[fp32]"], pps["cross-encoder[bf16]"])  # the faster cross-encoder
        report["speedup_vs_fastest_cross_encoder"] = {k: v / ce for k, v in pps.items() if k.startswith("mice")}
    if "latency" not in args.skip:
        coll = args.latency_collection
        lq = list(read_queries(coll))[: args.latency_queries]
        small = ensure_index(coll, args.work / f"{coll.name}-fp16", "fp16", model)
        report["latency"] = [latency(small, model, lq, args.depth, "fp16")]
        if args.scale > 1:  # the same collection repeated --scale times with new ids
            big_corpus = scaled_corpus(coll, args.work / f"{coll.name}-x{args.scale}" / "corpus.jsonl", args.scale)
            big = ensure_index(big_corpus, args.work / f"{coll.name}-x{args.scale}-fp16", "fp16", model)
            report["latency"].append(latency(big, model, lq, args.depth, "fp16"))
            report["latency_ratio_big_vs_small_p50"] = report["latency"][1]["p50_ms"] / report["latency"][0]["p50_ms"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
