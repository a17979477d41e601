"""Domain adaptation without labels, measured: adapt a MICE model to each dev corpus in turn.

    .venv/bin/python benchmarks/adapt.py [--init default] [--collections cranfield,...] \
        [--steps 150] [--queries 400] [--members bm25,dense] [--threads 1] \
        [--cache /tmp/mice-train-cache] [--work runs/adapt] [--out benchmarks/results/adapt.json]

For each collection: the trainer of `mice-index train --teacher ensemble --corpus <collection>
--init <init>` (pseudo-queries from that corpus's documents only; the ensemble teacher; the
options below), then the real queries of that collection (read-only dev set: evaluated, never
trained on) score the model before and after: pure MICE over BM25's top-100 (alpha 0) and the
default pipeline (hybrid top-100 -> MICE at the model's recommended alpha). Reports per-collection
gains, the seconds spent preparing (pseudo-queries, teacher lists; encodings come from the cache
when present) and training, and writes everything to --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mice_index.train import Trainer, load_config  # noqa: E402
from mice_index.train.realdev import RealDev  # noqa: E402
from mice_index.train.trainer import dense_encoder, init_model  # noqa: E402

ALL = ["adi", "medline", "cranfield", "cisi", "cacm", "scifact"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default="default")
    p.add_argument("--data", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--collections", default=",".join(ALL))
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--queries", type=int, default=400, help="pseudo-queries (documents sampled) per corpus")
    p.add_argument("--members", default="bm25,dense")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="further section.key=value overrides")
    p.add_argument("--cache", type=Path, default=Path("/tmp/mice-train-cache"))
    p.add_argument("--work", type=Path, default=Path("runs/adapt"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/adapt.json"))
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    from mice_index.defaults import DEFAULT_MODEL_DIR

    init_dir = DEFAULT_MODEL_DIR if args.init == "default" else Path(args.init)
    init_sha = hashlib.sha256((init_dir / "model.safetensors").read_bytes()).hexdigest()[:16]
    for name in args.collections.split(","):
        if name in results:
            continue
        folder = args.data / name
        cfg = load_config(None, [
            f"output={str(args.work / name)!r}", f"cache_dir={str(args.cache)!r}", f"model.init={args.init!r}",
            f"data.corpora=[{str(folder)!r}]", f"data.max_queries_per_corpus={args.queries}",
            "data.dev_queries_per_corpus=8", "data.ict=0.9", "data.list_size=12", "data.hard_negatives=6",
            "data.student_negatives=3", "data.student_depth=100", "teacher.kind='ensemble'", f"teacher.members={args.members.split(',')!r}",
            "teacher.temperature=1.5", "teacher.positive_bonus=3.0", f"train.steps={args.steps}",
            "train.eval_every=100000", f"train.checkpoint_every={args.steps}", f"train.threads={args.threads}",
            "train.lr=1e-4", "train.head_lr=5e-4", "train.late_lr=5e-4", "train.warmup=20", *args.set])
        trainer = Trainer(cfg)
        t0 = time.time()
        model, data = trainer.prepare()
        t1 = time.time()
        before = init_model(cfg)
        dev = RealDev([folder], {c.name: c for c in data.corpora}, dense_encoder(model), depth=100,
                      alphas=(before.config.recommended_alpha or 0.0,))
        r0 = dev.evaluate(before)
        t2 = time.time()
        result = trainer.train(model, data)
        t3 = time.time()
        r1 = dev.evaluate(model)
        a = f"hybrid>mice@{(before.config.recommended_alpha or 0.0):g}"
        results[name] = {
            "docs": len(data.corpora[0].doc_ids), "train_queries": len(data.train), "steps": result.steps,
            "prepare_s": round(t1 - t0, 1), "train_s": round(t3 - t2, 1),
            "init": args.init, "init_sha256": init_sha,
            "pure_before": r0["bm25>mice"], "pure_after": r1["bm25>mice"],
            "pipeline_before": r0[a], "pipeline_after": r1[a], "bm25": r0["bm25"], "hybrid": r0["hybrid"]}
        print(f"{name}: pure MICE {r0['bm25>mice']:.4f} -> {r1['bm25>mice']:.4f}, pipeline {r0[a]:.4f} -> {r1[a]:.4f} "
              f"(BM25 {r0['bm25']:.4f}, hybrid {r0['hybrid']:.4f}); prepare {t1 - t0:.0f}s, train {t3 - t2:.0f}s",
              flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))
    names = [n for n in args.collections.split(",") if n in results]
    if names:
        gain = sum(results[n]["pure_after"] - results[n]["pure_before"] for n in names) / len(names)
        pgain = sum(results[n]["pipeline_after"] - results[n]["pipeline_before"] for n in names) / len(names)
        print(f"average gain over {len(names)} collections: pure MICE {gain * 100:+.2f} points, pipeline {pgain * 100:+.2f}")


if __name__ == "__main__":
    main()
