"""Docs/s of the single-process build vs `--engine ray` with 1 and 2 actors, measured in one run.

    .venv/bin/python benchmarks/distributed_build.py --collection ../shared/datasets/scifact --docs 1000

The first N documents of the collection are written to a temporary corpus; the model is loaded once
and handed to every build (so model loading is not timed); the local Ray cluster is started once
before the Ray builds (its start-up is reported separately) but actor start-up (process, imports,
model shipped through the object store) is inside the Ray timings. Every build includes the
candidate indexes (BM25 + dense). All indexes are checked to be identical to the local one.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collection", default="../shared/datasets/scifact")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--codec", default="fp16")
    ap.add_argument("--shard-docs", type=int, default=128)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import numpy as np
    import ray
    import torch

    from mice_index.build import BuildConfig, build_index
    from mice_index.defaults import load_model
    from mice_index.distributed import build_index_ray
    from mice_index.store.reader import IndexReader

    torch.set_num_threads(args.cpus)
    work = Path(tempfile.mkdtemp(prefix="mice-dist-bench-"))
    corpus = work / "corpus.jsonl"
    src = Path(args.collection) / "corpus.jsonl"
    with open(src) as fin, open(corpus, "w") as fout:
        fout.writelines(itertools.islice(fin, args.docs))
    model = load_model(None)
    cfg = BuildConfig(codec=args.codec, shard_docs=args.shard_docs)
    results: dict[str, dict] = {"load_avg_start": os.getloadavg()[0]}

    t = time.perf_counter()
    r = build_index(corpus, work / "local", cfg, model=model)
    results["local"] = {"seconds": time.perf_counter() - t, "threads": args.cpus}

    t = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    results["ray_init_seconds"] = time.perf_counter() - t
    for n in [int(x) for x in args.workers.split(",")]:
        t = time.perf_counter()
        build_index_ray(corpus, work / f"ray{n}", cfg, model=model, num_workers=n)
        results[f"ray_{n}_workers"] = {"seconds": time.perf_counter() - t, "threads_per_worker": max(1, args.cpus // n)}
    ray.shutdown()
    results["load_avg_end"] = os.getloadavg()[0]

    ref = IndexReader.open(work / "local")
    for key in [k for k in results if k.startswith("ray_") and k.endswith("workers")]:
        other = IndexReader.open(work / key.replace("ray_", "ray").replace("_workers", ""))
        same = ref.doc_ids == other.doc_ids and ref.manifest.shards == other.manifest.shards
        results[key]["identical_to_local"] = bool(same and all(
            np.array_equal(a, b) for a, b in zip(ref.get_states(range(50)), other.get_states(range(50)))))
    n_docs = r.info["num_docs"]
    base = results["local"]["seconds"]
    for key, v in results.items():
        if isinstance(v, dict):
            v["docs_per_s"] = round(n_docs / v["seconds"], 1)
            v["speed_vs_local"] = round(base / v["seconds"], 2)
            v["seconds"] = round(v["seconds"], 2)
    results.update(docs=n_docs, tokens=r.info["num_tokens"], codec=args.codec, shard_docs=args.shard_docs,
                   cpus=args.cpus)
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
