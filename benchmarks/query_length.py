"""Query length: nDCG@10 and query-side cost of `max_query_length` 32 vs 64 vs 128 on real queries.

    .venv/bin/python benchmarks/query_length.py [--model default] [--lengths 32,64,128] \
        [--depth 100] [--max-queries N] [--cache /tmp/mice-train-cache] [--out benchmarks/results/query_length.json]

The same model is evaluated with its queries cut at each length (`MiceModel.with_config`; the
positional embeddings cover 512 tokens), through `mice_index.train.realdev.RealDev` (pure MICE over
BM25's top `--depth`, hybrid top-`--depth` → MICE at the model's recommended alpha), on every judged
query of the six shared collections (read-only dev set). Also reported per collection: the share
of queries longer than each length (in tokens, with [CLS]/[SEP]) and the MICE scoring time per
query (query bottom + interaction over its candidates, median over queries, one thread so that
runs side by side stay comparable).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mice_index.defaults import load_model  # noqa: E402
from mice_index.model import pad_states  # noqa: E402
from mice_index.scorer.fast import score_pairs  # noqa: E402
from mice_index.train.data import load_corpus  # noqa: E402
from mice_index.train.realdev import RealDev  # noqa: E402
from mice_index.train.states import load_or_encode  # noqa: E402
from mice_index.train.trainer import dense_encoder  # noqa: E402

ALL = ["scifact", "cranfield", "cisi", "medline", "cacm", "adi"]


@torch.inference_mode()
def per_query_ms(model, c, depth: int, limit: int = 40) -> float:
    """Median ms to score one query against its BM25 top-`depth` (states already in memory)."""
    rows_all = c.lists["bm25"][0]
    times = []
    for q, text in enumerate(c.query_texts[:limit]):
        rows = [int(r) for r in rows_all[q][:depth] if r >= 0]
        if not rows:
            continue
        docs, d_mask = pad_states(c.tensors(rows))
        t = time.perf_counter()
        q_states, q_mask = model.encode_queries([text])
        score_pairs(model.interaction, q_states, q_mask, torch.zeros(len(rows), dtype=torch.long), docs, d_mask)
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times) if times else float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default")
    p.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--collections", default=",".join(ALL))
    p.add_argument("--lengths", default="32,64,128")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--max-queries", type=int, default=None, help="judged queries per collection (None: all)")
    p.add_argument("--cache", type=Path, default=Path("/tmp/mice-train-cache"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/query_length.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    model = load_model(args.model)
    alpha = model.config.recommended_alpha or 0.0
    dense = dense_encoder(model)
    names = args.collections.split(",")
    corpora = {}
    for n in names:
        corpus = load_corpus(str(args.data / n), model)
        corpus.states = load_or_encode(model, corpus.doc_ids, corpus.texts, args.cache / model.fingerprint(),
                                       corpus.name, dense[1])
        corpora[n] = corpus
    dev = RealDev([args.data / n for n in names], corpora, dense, depth=args.depth, alphas=(alpha,),
                  max_queries=args.max_queries)
    lengths = {c.name: [len(model.tokenizer(t)["input_ids"]) for t in c.query_texts] for c in dev.collections}
    out = {"model": args.model, "alpha": alpha, "depth": args.depth,
           "query_tokens_median": {n: float(np.median(v)) for n, v in lengths.items()}, "by_length": {}}
    for L in map(int, args.lengths.split(",")):
        m = model.with_config(max_query_length=L).eval()
        r = dev.evaluate(m)
        row = {"pure": r["bm25>mice"], "pipeline": r[f"hybrid>mice@{alpha:g}"],
               "per_collection": {c.name: {"pure": r[f"bm25>mice/{c.name}"], "pipeline": r[f"hybrid>mice@{alpha:g}/{c.name}"],
                                           "longer": float(np.mean(np.array(lengths[c.name]) > L)),
                                           "ms_per_query": per_query_ms(m, c, args.depth)}
                                  for c in dev.collections}}
        row["ms_per_query"] = float(np.mean([v["ms_per_query"] for v in row["per_collection"].values()]))
        out["by_length"][L] = row
        print(f"max_query_length {L}: pure MICE {row['pure']:.4f}, pipeline {row['pipeline']:.4f}, "
              f"{row['ms_per_query']:.1f} ms/query; " + ", ".join(
                  f"{n} {v['pure']:.3f}/{v['pipeline']:.3f} ({v['longer']:.0%} longer)" for n, v in row["per_collection"].items()),
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
