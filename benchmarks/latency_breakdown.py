"""Where one query's time goes: hybrid top-100 → MICE, stage by stage, on one index.

Each stage runs on its own (no overlap with the prefetch thread), so the stage times add up to
the sequential cost; the end-to-end `Searcher.search` time (with the scorer's real pipeline) is
measured in the same run. Variants (every index × every --scorer setting) run interleaved query
by query, so machine load hits them alike: compare them by their ratios.

    python benchmarks/latency_breakdown.py --index /work/lat/cranfield-fp16 \
        --queries ../shared/datasets/cranfield --n 50 --scorer quantize=none quantize=int8,prefetch=0
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from mice_index.scorer import ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import read_queries


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


@torch.inference_mode()
def stages(searcher: Searcher, text: str) -> dict[str, float]:
    """Milliseconds per stage of one query, run one after the other."""
    scorer, out = searcher._scorer, {}
    t = time.perf_counter()
    shared = searcher._shared_query_states([text])  # None where the dense stage has its own bottom
    q, qm = shared if shared is not None else scorer.model.encode_queries([text])
    q = q.to(scorer.dtype)
    out["query bottom"] = _ms(t)
    t = time.perf_counter()
    cands = searcher.candidates([text], searcher.config.depth, shared)
    out["first stage"] = _ms(t)
    rows = cands.rows[0][cands.rows[0] >= 0]
    t = time.perf_counter()
    batches = scorer.prepare(rows)
    out["read + decode + pad"] = _ms(t)
    t = time.perf_counter()
    for b in batches:
        scorer._score_batch(q, qm, np.zeros(len(b.pairs), np.int64), b)
        scorer.release(b)
    out["MICE compute"] = _ms(t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", type=Path, nargs="+", required=True)
    p.add_argument("--queries", type=Path, required=True, help="a BEIR folder or queries file")
    p.add_argument("--n", type=int, default=50, help="first N queries")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scorer", nargs="+", default=["quantize=none"],
                   help="ScorerConfig settings per variant, e.g. quantize=int8,prefetch=0")
    p.add_argument("--no-stages", dest="stages", action="store_false",
                   help="end-to-end only (e.g. for an older mice-index on PYTHONPATH)")
    p.add_argument("--out", type=Path, default=None, help="also write the JSON report here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    texts = [q.text for q in read_queries(args.queries)][: args.n]
    variants = {}
    for index in args.index:
        for setting in args.scorer:
            scorer = ScorerConfig(**{k: (int(v) if v.isdigit() else v)
                                     for k, v in (kv.split("=") for kv in setting.split(",") if kv)})
            cfg = SearchConfig(candidates="hybrid", depth=args.depth, scorer=scorer)
            searcher = variants[f"{index.name} {setting}"] = Searcher.open(index, config=cfg)
            searcher.search(texts[0], k=10)  # warm-up: page cache, kernels
            if args.stages:
                stages(searcher, texts[0])
    per_stage = {v: {} for v in variants}
    total = {v: [] for v in variants}
    for text in texts:
        for name, searcher in variants.items():
            for k, v in (stages(searcher, text) if args.stages else {}).items():
                per_stage[name].setdefault(k, []).append(v)
            t = time.perf_counter()
            searcher.search(text, k=10)
            total[name].append(_ms(t))
    report = {"queries": len(texts), "depth": args.depth, "threads": args.threads, "variants": {}}
    for name, times in total.items():
        times.sort()
        report["variants"][name] = {
            "stages_p50_ms": {k: round(statistics.median(v), 1) for k, v in per_stage[name].items()},
            "sum_of_stage_p50_ms": round(sum(statistics.median(v) for v in per_stage[name].values()), 1),
            "search_p50_ms": round(statistics.median(times), 1),
            "search_p95_ms": round(times[int(0.95 * (len(times) - 1))], 1),
        }
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
