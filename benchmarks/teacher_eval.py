"""The teacher's own quality: nDCG@10 of each ensemble member and of their fusions on real queries.

    .venv/bin/python benchmarks/teacher_eval.py [--collections scifact,cranfield,...] \
        [--cache /tmp/mice-train-cache] [--depth 100] [--out benchmarks/results/teacher_eval.json]

Per collection of the shared dev set (read-only: its real queries and qrels are only *evaluated*
here, never trained on), every member of `mice_index.train.ensemble` retrieves its top `--depth`
over the whole corpus, and the fusions below rank the union (weighted z-scores, as the teacher
does). A fusion's nDCG@10 is the ceiling of what distillation from it can reach. Member document
representations and the MiniLM states come from the same caches the trainer uses
(`<cache>/teacher/`, `<cache>/<fingerprint>/`), so a later training run does not encode again.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mice_index.defaults import load_model  # noqa: E402
from mice_index.runs import ScoredDoc, evaluate  # noqa: E402
from mice_index.sources import read_qrels, read_queries  # noqa: E402
from mice_index.train.data import load_corpus  # noqa: E402
from mice_index.train.ensemble import EnsembleTeacher  # noqa: E402
from mice_index.train.states import load_or_encode  # noqa: E402
from mice_index.train.teachers import dense_query_embeddings  # noqa: E402
from mice_index.train.trainer import dense_encoder  # noqa: E402

ALL = ["scifact", "cranfield", "cisi", "medline", "cacm", "adi"]
MEMBERS = ("bm25", "dense", "splade", "e5")
FUSIONS = {
    "bm25": ("bm25",), "dense": ("dense",), "splade": ("splade",), "e5": ("e5",),
    "hybrid (bm25+dense)": ("bm25", "dense"),
    "bm25+dense+splade": ("bm25", "dense", "splade"),
    "bm25+dense+e5": ("bm25", "dense", "e5"),
    "dense+splade+e5": ("dense", "splade", "e5"),
    "all four": MEMBERS,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--collections", default=",".join(ALL))
    p.add_argument("--cache", type=Path, default=Path("/tmp/mice-train-cache"))
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--members", default=",".join(MEMBERS))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/teacher_eval.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    members = tuple(args.members.split(","))
    fusions = {k: v for k, v in FUSIONS.items() if set(v) <= set(members)}
    model = load_model("default")
    dense = dense_encoder(model)
    results: dict[str, dict[str, float]] = {k: {} for k in fusions}
    for name in args.collections.split(","):
        t0 = time.time()
        folder = args.data / name
        corpus = load_corpus(str(folder), model)
        corpus.states = load_or_encode(model, corpus.doc_ids, corpus.texts, args.cache / model.fingerprint(),
                                       corpus.name, dense[1])
        teacher = EnsembleTeacher(corpus.texts, members, depth=args.depth, doc_ids=corpus.doc_ids,
                                  doc_embeddings=corpus.states.dense,
                                  embed_queries=lambda qs: dense_query_embeddings(*dense, qs),
                                  cache_root=args.cache / "teacher", key=corpus.name)
        queries = list(read_queries(folder))
        qids = [q.query_id for q in queries]
        qrels = list(read_qrels(folder))
        lists = teacher.member_lists([q.text for q in queries])
        for label, names in fusions.items():
            fused = teacher.fuse(lists, names, k=args.depth)
            run = {qid: [ScoredDoc(qid, corpus.doc_ids[r], float(s)) for r, s in zip(fused.rows[i], fused.scores[i])
                         if r >= 0] for i, qid in enumerate(qids)}
            results[label][name] = evaluate(run, qrels, ["nDCG@10"])["nDCG@10"]
        print(f"{name}: " + ", ".join(f"{k} {v[name]:.4f}" for k, v in results.items())
              + f" ({time.time() - t0:.0f}s)", flush=True)
    names = args.collections.split(",")
    print("\n| teacher | " + " | ".join(names) + " | avg |\n|---|" + "---:|" * (len(names) + 1))
    for label, per in results.items():
        per["avg"] = float(np.mean([per[n] for n in names]))
        print(f"| {label} | " + " | ".join(f"{per[n]:.3f}" for n in names) + f" | **{per['avg']:.3f}** |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"depth": args.depth, "collections": names, "nDCG@10": results}, indent=1))


if __name__ == "__main__":
    main()
