"""BEIR-style evaluation: build (or reuse) an index per collection, run BM25 / dense / hybrid, each
with and without MICE re-ranking, and write a table (nDCG@10, R@100 per collection + average).

    python pipelines/beir_eval.py --datasets ../shared/datasets --collections scifact,cranfield \
        --work out/beir --out out/beir/results

Writes RESULTS.md and RESULTS.json under --out; runs and indexes stay under --work for reuse.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from mice_index.build import BuildConfig, build_index
from mice_index.defaults import load_model
from mice_index.runs import evaluate, write_run
from mice_index.scorer import ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import read_queries
from mice_index.store import index_info

METRICS = ["nDCG@10", "R@100"]
SYSTEMS = [(c, r) for c in ("bm25", "dense", "hybrid") for r in ("none", "mice")]


def system_name(candidates: str, rerank: str) -> str:
    return candidates if rerank == "none" else f"{candidates}→MICE"


def parse_systems(text: str) -> list[tuple[str, str]]:
    """"bm25,hybrid,hybrid>mice" -> [("bm25", "none"), ("hybrid", "none"), ("hybrid", "mice")]."""
    out = []
    for item in text.split(","):
        cand, _, rerank = item.strip().partition(">")
        out.append((cand, rerank or "none"))
    return out


def evaluate_collection(folder: Path, work: Path, model_name: str | None, codec: str, depth: int,
                        dtype: str, systems=SYSTEMS, log=print) -> dict[str, dict[str, float]]:
    idx = work / "indexes" / f"{folder.name}-{codec}"
    model = load_model(model_name)
    info = index_info(idx) if (idx / "manifest.json").exists() else {}
    if not info.get("complete"):
        t = time.perf_counter()
        build_index(folder, idx, BuildConfig(model=model_name, codec=codec), model=model)
        log(f"[{folder.name}] built {idx} in {time.perf_counter() - t:.1f}s")
    queries = list(read_queries(folder))
    depth = min(depth, index_info(idx)["num_docs"])  # adi has 82 documents
    results = {}
    for candidates, rerank in systems:
        t = time.perf_counter()
        cfg = SearchConfig(candidates=candidates, rerank=rerank, depth=depth, scorer=ScorerConfig(dtype=dtype))
        searcher = Searcher.open(idx, model=model, config=cfg)
        run = searcher.search_many(queries, k=min(depth, searcher.reader.num_docs))
        run_path = work / "runs" / f"{folder.name}-{codec}-{candidates}-{rerank}.run"
        run_path.parent.mkdir(parents=True, exist_ok=True)
        write_run(run_path, run, tag=system_name(candidates, rerank))
        results[system_name(candidates, rerank)] = evaluate(run_path, folder, METRICS)
        log(f"[{folder.name}] {system_name(candidates, rerank):14s} "
            + "  ".join(f"{m} {v:.4f}" for m, v in results[system_name(candidates, rerank)].items())
            + f"  ({time.perf_counter() - t:.1f}s, {len(queries)} queries)")
    return results


def to_markdown(table: dict[str, dict[str, dict[str, float]]]) -> str:
    names = list(table)
    systems = list(next(iter(table.values())))
    lines = []
    for metric in METRICS:
        lines += [f"**{metric}**", "", "| system | " + " | ".join(names) + " | avg |",
                  "|---|" + "---:|" * (len(names) + 1)]
        for s in systems:
            vals = [table[n][s][metric] for n in names]
            lines.append(f"| {s} | " + " | ".join(f"{v:.3f}" for v in vals) + f" | **{sum(vals) / len(vals):.3f}** |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--collections", default="scifact,cranfield,cisi,medline,cacm,adi")
    p.add_argument("--model", default=None, help="MICE model (default: the shipped default model)")
    p.add_argument("--codec", default="fp16")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--dtype", default="auto")
    p.add_argument("--systems", default="bm25,dense,hybrid,bm25>mice,dense>mice,hybrid>mice",
                   help="comma list of CANDIDATES or CANDIDATES>mice")
    p.add_argument("--work", type=Path, default=Path("out/beir"))
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    table = {}
    for name in args.collections.split(","):
        table[name] = evaluate_collection(args.datasets / name, args.work, args.model, args.codec, args.depth,
                                          args.dtype, parse_systems(args.systems))
    out = args.out or args.work
    out.mkdir(parents=True, exist_ok=True)
    md = to_markdown(table)
    (out / "RESULTS.md").write_text(md + "\n")
    (out / "RESULTS.json").write_text(json.dumps({"model": args.model or "default", "codec": args.codec,
                                                  "depth": args.depth, "results": table}, indent=2))
    print(md)


if __name__ == "__main__":
    main()
