"""Choose a model's recommended interpolation weight on real dev queries, at the search depth.

    .venv/bin/python benchmarks/choose_alpha.py --config configs/minilm-l6.toml \
        --model runs/curve/best --dev ../shared/datasets --depth 100 [--write]

Scores every dev query's BM25 and hybrid top-`depth` with the model (`mice_index.train.realdev`,
the corpora and document states of `--config`'s training data), evaluates hybrid→MICE for each
alpha of the grid, averaged over the collections (one alpha for all of them), and prints the table.
`--write` stores the best alpha and how it was chosen in the model's mice_config.json
(`recommended_alpha`, `recommended_alpha_note`): the default of `search --alpha`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mice_index.model import CONFIG_NAME, MiceModel  # noqa: E402
from mice_index.train import Trainer, load_config  # noqa: E402
from mice_index.train.realdev import RealDev  # noqa: E402
from mice_index.train.trainer import dense_encoder  # noqa: E402

GRID = (0.0, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config whose corpora hold the dev collections")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--dev", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--collections", default="scifact,cranfield,cisi,medline,cacm,adi")
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--write", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="JSON with every number")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("bm25s").setLevel(logging.WARNING)
    cfg = load_config(args.config, ["output='/tmp/choose-alpha'"])
    model = MiceModel.load(args.model)
    trainer = Trainer(cfg)
    _, data = trainer.prepare()
    names = args.collections.split(",")
    dev = RealDev([args.dev / n for n in names], {c.name: c for c in data.corpora}, dense_encoder(model),
                  depth=args.depth, alphas=GRID)
    r = dev.evaluate(model)
    print(f"| system | {' | '.join(names)} | avg |")
    for system in ["bm25", "hybrid", "bm25>mice"] + [f"hybrid>mice@{a:g}" for a in GRID]:
        print(f"| {system} | " + " | ".join(f"{r[f'{system}/{n}']:.4f}" for n in names) + f" | {r[system]:.4f} |")
    alpha, best = dev.best_alpha(r)
    print(f"best alpha {alpha} ({best:.4f} vs hybrid {r['hybrid']:.4f})")
    if args.out:
        args.out.write_text(json.dumps({"alpha": alpha, "results": r}, indent=1))
    if args.write:
        path = args.model / CONFIG_NAME
        conf = json.loads(path.read_text())
        conf["recommended_alpha"] = alpha
        conf["recommended_alpha_note"] = (
            f"chosen on the real queries of {', '.join(names)} (read-only dev set, all judged queries): the alpha "
            f"in {{{', '.join(f'{a:g}' for a in GRID)}}} with the best average nDCG@10 of hybrid top-{args.depth} "
            f"-> MICE, one alpha for all collections (benchmarks/choose_alpha.py)")
        path.write_text(json.dumps(conf, indent=2))
        print(f"wrote recommended_alpha={alpha} to {path}")


if __name__ == "__main__":
    main()
