"""Small-budget training ablation: the same recipe with different MICE architectures.

    .venv/bin/python benchmarks/train_ablation.py [--config configs/ablation-small.toml] \
        [--variants "n3=model.num_interaction_layers=3" "n2=model.num_interaction_layers=2"] \
        [--out /tmp/train_ablation.json]

Each variant trains into <config output>/<name> (resuming if already there) and is compared on the
held-out dev pseudo-queries: nDCG@10 of the source document among the hybrid top-20, pair agreement
with the hybrid teacher, and training wall time. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mice_index.train import Trainer, load_config  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/ablation-small.toml")
    ap.add_argument("--variants", nargs="+",
                    default=["n3=model.num_interaction_layers=3", "n2=model.num_interaction_layers=2"])
    ap.add_argument("--out", type=Path, default=Path("/tmp/train_ablation.json"))
    args = ap.parse_args()
    results = {}
    for spec in args.variants:
        name, _, override = spec.partition("=")
        base = load_config(args.config)
        cfg = load_config(args.config, [override, f"output={str(Path(base.output) / name)!r}"])
        t0 = time.time()
        res = Trainer(cfg).train()
        first = res.history[0] if res.history else {}
        results[name] = {"override": override, "wall_s": time.time() - t0, "start": first, "final": res.dev}
        print(name, json.dumps(results[name]), flush=True)
    lines = ["| variant | dev nDCG@10 (start → end) | pair agreement (start → end) | teacher nDCG@10 | wall s |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        s, f = r["start"], r["final"]
        lines.append(f"| {name} ({r['override']}) | {s.get('nDCG@10', float('nan')):.3f} → {f.get('nDCG@10', float('nan')):.3f} | "
                     f"{s.get('pair_agreement', float('nan')):.3f} → {f.get('pair_agreement', float('nan')):.3f} | "
                     f"{f.get('teacher_nDCG@10', float('nan')):.3f} | {r['wall_s']:.0f} |")
    print("\n".join(lines))
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
