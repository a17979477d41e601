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
DEFAULT_SYSTEMS = "bm25,dense,hybrid,bm25>maxsim@0,hybrid>maxsim@0,bm25>mice@0,hybrid>mice@0,hybrid>mice"


def system_name(candidates: str, rerank: str, alpha: float | None = None) -> str:
    if rerank == "none":
        return candidates
    name = f"{candidates}→{'MICE' if rerank == 'mice' else 'MaxSim'}"
    return name + (" (default α)" if alpha is None else f" (α={alpha:g})")


def parse_systems(text: str) -> list[tuple[str, str, float | None]]:
    """"bm25,hybrid>mice@0,hybrid>mice" -> [("bm25", "none", None), ("hybrid", "mice", 0.0),
    ("hybrid", "mice", None)]: CANDIDATES[>mice|maxsim[@ALPHA]], no @ = the model's recommended alpha.
    `maxsim` is the parameter-free MaxSim floor over the same stored states (a "cls+maxsim" model
    at initialisation)."""
    out = []
    for item in text.split(","):
        cand, _, rest = item.strip().partition(">")
        rerank, _, alpha = rest.partition("@")
        out.append((cand, rerank or "none", float(alpha) if alpha else None))
    return out


def maxsim_model(model):
    """The MaxSim floor: a "cls+maxsim" model at initialisation over `model`'s bottom."""
    from mice_index.defaults import DEFAULT_BACKBONE
    from mice_index.model import MiceModel

    # Searcher.open refuses it (fingerprint check) if its bottom is not the index's
    return MiceModel.from_pretrained(model.config.base_model or DEFAULT_BACKBONE, fusion_layer=model.config.fusion_layer,
                                     num_interaction_layers=1, score_head="cls+maxsim")


def evaluate_collection(folder: Path, work: Path, model_name: str | None, codec: str, depth: int,
                        dtype: str, systems=parse_systems(DEFAULT_SYSTEMS), log=print) -> dict[str, dict[str, float]]:
    idx = work / "indexes" / f"{folder.name}-{codec}"
    model = load_model(model_name)
    floor = None
    info = index_info(idx) if (idx / "manifest.json").exists() else {}
    if not info.get("complete"):
        t = time.perf_counter()
        build_index(folder, idx, BuildConfig(model=model_name, codec=codec), model=model)
        log(f"[{folder.name}] built {idx} in {time.perf_counter() - t:.1f}s")
    queries = list(read_queries(folder))
    depth = min(depth, index_info(idx)["num_docs"])  # adi has 82 documents
    results = {}
    for candidates, rerank, alpha in systems:
        t = time.perf_counter()
        if rerank == "maxsim" and floor is None:
            floor = maxsim_model(model)
        # documents whose id equals the query id are kept (remove_query_id is off: several of these
        # collections number queries and documents independently); see README, Evaluation
        cfg = SearchConfig(candidates=candidates, rerank="none" if rerank == "none" else "mice", depth=depth,
                           alpha=alpha, scorer=ScorerConfig(dtype=dtype))
        searcher = Searcher.open(idx, model=floor if rerank == "maxsim" else model, config=cfg)
        name = system_name(candidates, rerank, alpha)
        run = searcher.search_many(queries, k=min(depth, searcher.reader.num_docs))
        run_path = work / "runs" / f"{folder.name}-{codec}-{candidates}-{rerank}-{alpha}.run"
        run_path.parent.mkdir(parents=True, exist_ok=True)
        write_run(run_path, run, tag="".join(name.split()))
        results[name] = evaluate(run_path, folder, METRICS)
        log(f"[{folder.name}] {name:28s} "
            + "  ".join(f"{m} {v:.4f}" for m, v in results[name].items())
            + f"  ({time.perf_counter() - t:.1f}s, {len(queries)} queries, α in use {searcher.alpha:g})")
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
    p.add_argument("--systems", default=DEFAULT_SYSTEMS,
                   help="comma list of CANDIDATES or CANDIDATES>mice|maxsim[@ALPHA] (no @: the model's alpha)")
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
