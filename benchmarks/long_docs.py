"""Long documents: truncation vs passages (maxp / firstp / sump) on long documents made from scifact.

    nice -n 10 .venv/bin/python benchmarks/long_docs.py [--data ../shared/datasets/scifact] \
        [--queries 100] [--fillers 3] [--distractors 40] [--passages 254,127] [--depth 30] [--alphas model,0] \
        [--work /tmp/mice-long-docs] [--out benchmarks/results/long_docs.json]

The shared collections hold short documents, so a long-document collection is made at run time
(written under --work, never committed): `--queries` scifact test queries are drawn (seeded); each
document judged relevant to one of them becomes a long document by concatenating it with
`--fillers` other scifact documents (drawn at random among those relevant to none of the drawn
queries) in a random order, so the relevant text sits at a random position; `--distractors` more
long documents are made of fillers only. Each part is written "title. text", parts separated by a
blank line; the long document has no title. Its qrels: the long document holding a judged
document gets that judgement.

Two indexes are built with the shipped default model (fp16 codec, BM25 + dense, the defaults):
(a) one row per document, truncated at the model's 256 tokens, and (b) `--passages W,S`. Each is
searched with the default pipeline (hybrid top `--depth` → MICE; for (b) `--depth` counts
documents) at each of `--alphas` ("model": the model's recommended alpha, the default; 0: pure
MICE, which shows the aggregation alone) and with the first stage alone (`--rerank none`; for (b)
a document's first-stage score is its best passage's); nDCG@10 through the project's eval
(ir_measures). Reported: nDCG@10, search seconds per query, build seconds, index size.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mice_index.build import BuildConfig, build_index  # noqa: E402
from mice_index.runs import evaluate  # noqa: E402
from mice_index.search import SearchConfig, Searcher  # noqa: E402
from mice_index.sources import read_documents, read_qrels, read_queries  # noqa: E402
from mice_index.sources.passages import parse_passages  # noqa: E402


def make_collection(data: Path, out: Path, n_queries: int, fillers: int, distractors: int, seed: int) -> dict:
    """Write corpus.jsonl, queries.jsonl and qrels/test.tsv of the long-document collection to `out`."""
    rng = random.Random(seed)
    docs = {d.doc_id: d for d in read_documents(data)}
    qrels: dict[str, dict[str, int]] = {}
    for q in read_qrels(data):
        qrels.setdefault(q.query_id, {})[q.doc_id] = q.relevance
    queries = {q.query_id: q for q in read_queries(data) if q.query_id in qrels}
    chosen = sorted(rng.sample(sorted(queries), min(n_queries, len(queries))))
    relevant = sorted({d for q in chosen for d, rel in qrels[q].items() if rel > 0 and d in docs})
    pool = sorted(set(docs) - {d for rels in qrels.values() for d in rels})  # judged for no query at all
    rng.shuffle(pool)
    take = iter(pool)

    def part(doc_id: str) -> str:
        d = docs[doc_id]
        return f"{d.title}. {d.text}" if d.title else d.text

    long_docs, holder = [], {}
    for i, r in enumerate(relevant):
        parts = [r] + [next(take) for _ in range(fillers)]
        rng.shuffle(parts)
        long_docs.append((f"L{i:04d}", parts))
        holder[r] = f"L{i:04d}"
    for j in range(distractors):
        long_docs.append((f"X{j:04d}", [next(take) for _ in range(fillers + 1)]))
    rng.shuffle(long_docs)
    if out.exists():
        shutil.rmtree(out)
    (out / "qrels").mkdir(parents=True)
    with open(out / "corpus.jsonl", "w") as f:
        for doc_id, parts in long_docs:
            f.write(json.dumps({"_id": doc_id, "title": "", "text": "\n\n".join(part(p) for p in parts)}) + "\n")
    with open(out / "queries.jsonl", "w") as f:
        for q in chosen:
            f.write(json.dumps({"_id": q, "text": queries[q].text}) + "\n")
    with open(out / "qrels" / "test.tsv", "w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for q in chosen:
            for d, rel in sorted(qrels[q].items()):
                if d in holder:
                    f.write(f"{q}\t{holder[d]}\t{rel}\n")
    positions = [parts.index(r) for _, parts in long_docs for r in parts if r in holder]
    return {"queries": len(chosen), "long_docs": len(long_docs), "relevant_parts": len(relevant),
            "parts_per_doc": fillers + 1, "relevant_in_first_part": sum(p == 0 for p in positions)}


def search(index: Path, queries, qrels_src: Path, **config) -> dict:
    searcher = Searcher.open(index, config=SearchConfig(**config))
    t = time.perf_counter()
    run = searcher.search_many(queries, k=10)
    seconds = time.perf_counter() - t
    return {"nDCG@10": round(evaluate(run, qrels_src, ["nDCG@10"])["nDCG@10"], 4),
            "s_per_query": round(seconds / len(queries), 3)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/datasets/scifact")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--fillers", type=int, default=3)
    p.add_argument("--distractors", type=int, default=40)
    p.add_argument("--passages", default="254,127")
    p.add_argument("--depth", type=int, default=30)
    p.add_argument("--alphas", default="model,0", help="comma-separated: 'model' (recommended) or a number")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/mice-long-docs"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(2)
    window, stride = parse_passages(args.passages)
    coll = args.work / "collection"
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()},
                    "collection": make_collection(args.data, coll, args.queries, args.fillers, args.distractors,
                                                  args.seed)}
    print(json.dumps(result["collection"]), flush=True)
    queries = list(read_queries(coll))
    builds = {"truncated": BuildConfig(), f"passages {window},{stride}": BuildConfig(passages=(window, stride))}
    rows = []
    for name, cfg in builds.items():
        idx = args.work / name.replace(" ", "-").replace(",", "-")
        if idx.exists():
            shutil.rmtree(idx)
        built = build_index(coll, idx, cfg)
        info = built.info
        entry = {"index": name, "build_s": round(built.seconds, 1), "disk_MiB": round(info["disk_bytes"] / 2**20, 1),
                 "rows": info["num_docs"], "tokens": info["num_tokens"], "truncated_rows": info["truncated_docs"]}
        print(json.dumps(entry), flush=True)
        aggs = ["maxp", "firstp", "sump"] if cfg.passages else ["maxp"]  # no effect without passages
        entry["first_stage"] = search(idx, queries, coll, candidates="hybrid", depth=args.depth, rerank="none")
        for a in args.alphas.split(","):
            alpha = None if a == "model" else float(a)
            for agg in aggs:
                key = f"{agg if cfg.passages else 'mice'} alpha={a}"
                entry[key] = search(idx, queries, coll, candidates="hybrid", depth=args.depth, aggregate=agg,
                                    alpha=alpha)
                print(key, entry[key], flush=True)
        print(json.dumps(entry), flush=True)
        rows.append(entry)
    result["indexes"] = rows
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
