"""Training curve on REAL dev queries, with early stopping and the recommended alpha.

    .venv/bin/python benchmarks/train_curve.py --config configs/minilm-l6.toml \
        --dev ../shared/datasets --every 100 --out runs/curve [--set train.lr=1e-4 ...]

Trains `--config` in chunks of `--every` steps (the trainer's exact resume makes chunks equal to
one uninterrupted run) and after each chunk evaluates the model on the real queries of the `--dev`
collections (`mice_index.train.realdev`: read-only, never trained on; their *documents* may be
among the training corpora). Writes after every evaluation:

- <out>/curve.json       every evaluation (step, pure MICE over BM25, hybrid→MICE per alpha, ...)
- <out>/best/            the model of the best evaluation (criterion: `--select`, average over the
                         dev collections), with `recommended_alpha` set to that evaluation's best
                         alpha and how it was chosen in `recommended_alpha_note`
- <out>/curve.png        dev nDCG@10 against steps (matplotlib)

`--patience N` stops after N evaluations without improvement. Resumable: rerun the same command.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from mice_index.train import Trainer, load_config  # noqa: E402
from mice_index.train.realdev import RealDev  # noqa: E402
from mice_index.train.trainer import cast_weights, dense_encoder, drop_tokenizer_files  # noqa: E402

DEV = ["scifact", "cranfield", "cisi", "medline", "cacm", "adi"]


def select_score(result: dict, dev: RealDev, criterion: str) -> tuple[float, float]:
    """(selection score, alpha): 'pipeline' = best-alpha hybrid→MICE; 'pure' = BM25→MICE;
    'both' = their mean."""
    alpha, pipe = dev.best_alpha(result)
    pure = result["bm25>mice"]
    return {"pipeline": pipe, "pure": pure, "both": (pipe + pure) / 2}[criterion], alpha


def save_best(model, out: Path, alpha: float, step: int, criterion: str, dev_names: list[str], depth: int) -> None:
    note = (f"chosen on the real queries of {', '.join(dev_names)} (read-only dev set): the alpha in "
            f"{{0, 0.2..0.9}} with the best average nDCG@10 of hybrid top-{depth} -> MICE, at training "
            f"step {step} (selected by '{criterion}'; benchmarks/train_curve.py)")
    best = model.with_config(recommended_alpha=alpha, recommended_alpha_note=note)
    tmp = out / "best.tmp"
    best.save(tmp, delta=bool(best.config.base_model))
    drop_tokenizer_files(tmp)
    cast_weights(tmp / "model.safetensors", torch.float16)
    shutil.rmtree(out / "best", ignore_errors=True)
    tmp.rename(out / "best")


def plot(curve: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [c["step"] for c in curve]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [c["bm25>mice"] for c in curve], "o-", label="pure MICE over BM25 top-k")
    ax.plot(steps, [c["pipeline"] for c in curve], "s-", label="hybrid top-k → MICE (best alpha)")
    ax.axhline(curve[0]["bm25"], color="gray", ls=":", label="BM25 alone")
    ax.axhline(curve[0]["hybrid"], color="black", ls="--", label="hybrid alone")
    ax.set_xlabel("training step")
    ax.set_ylabel("dev nDCG@10 (avg of collections)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], help="section.key=value override")
    p.add_argument("--dev", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--collections", default=",".join(DEV))
    p.add_argument("--every", type=int, default=100)
    p.add_argument("--depth", type=int, default=30, help="candidates per first stage in dev evaluations")
    p.add_argument("--max-queries", type=int, default=None, help="dev queries per collection (None: all)")
    p.add_argument("--select", choices=["pipeline", "pure", "both"], default="pipeline")
    p.add_argument("--patience", type=int, default=0, help="stop after N evaluations without improvement")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)

    # a checkpoint at every evaluation, so that each chunk resumes exactly where the last one ended
    cfg = load_config(args.config, [*args.set, f"output={args.out / 'train'}", f"train.checkpoint_every={args.every}"])
    args.out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg)
    model, data = trainer.prepare()
    names = args.collections.split(",")
    dev = RealDev([args.dev / n for n in names], {c.name: c for c in data.corpora}, dense_encoder(model),
                  depth=args.depth, max_queries=args.max_queries)
    curve_path = args.out / "curve.json"
    curve = json.loads(curve_path.read_text()) if curve_path.exists() else []
    step = curve[-1]["step"] if curve else 0
    if step:  # resume: the trainer's checkpoint holds the weights of the last evaluation
        trainer.train(model, data, stop_after=0)
    best = max((c["select"] for c in curve), default=float("-inf"))
    stale = 0
    while True:
        if not curve or curve[-1]["step"] != step:
            t = time.perf_counter()
            r = dev.evaluate(model)
            score, alpha = select_score(r, dev, args.select)
            curve.append({"step": step, "select": score, "alpha": alpha, "pipeline": dev.best_alpha(r)[1],
                          **r, "eval_s": round(time.perf_counter() - t, 1)})
            print(f"step {step}: pure BM25>MICE {r['bm25>mice']:.4f}, pipeline {curve[-1]['pipeline']:.4f} "
                  f"(alpha {alpha}), hybrid {r['hybrid']:.4f}, BM25 {r['bm25']:.4f}", flush=True)
            if score > best:
                best, stale = score, 0
                save_best(model, args.out, alpha, step, args.select, names, args.depth)
            else:
                stale += 1
            curve_path.write_text(json.dumps(curve, indent=1))
            plot(curve, args.out / "curve.png", f"{args.config} {' '.join(args.set)}")
        if step >= cfg.train.steps or (args.patience and stale >= args.patience):
            break
        result = trainer.train(model, data, stop_after=args.every)
        step = result.steps
    print(f"best {args.select} {best:.4f} -> {args.out / 'best'}")


if __name__ == "__main__":
    main()
