"""Cost of the reference code's layer options at scoring time, on the same weights.

The paper's form (the [CLS] skips cross-attention) lets `scorer/fast.py` share the first layer's
query-side work across a query's candidates and absorb the cross-attention projections. With
`cls_cross_attention = "attend"` (the reference code's mask_cls_to_doc = false, its default) or
`cross_attn_first`, the model is scored by `Interaction.forward` on each pair. This script times
both on the shipped model's weights (only the options change), over the same stored states,
interleaved query by query so machine load hits all variants alike: compare the ratios.

    nice -n 10 python benchmarks/layer_options.py --corpus ../shared/datasets/adi --n-queries 10 --depth 100
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from mice_index.defaults import load_model
from mice_index.model import MiceModel, pad_states
from mice_index.scorer.fast import score_pairs
from mice_index.sources import read_queries

VARIANTS = {
    "paper (fast path)": {},
    "cls attends (mask_cls_to_doc=false)": {"cls_cross_attention": "attend"},
    "cls attends + cross_attn_first (reference default)": {"cls_cross_attention": "attend", "cross_attn_first": True},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, required=True, help="BEIR folder (corpus.jsonl, queries.jsonl)")
    ap.add_argument("--n-queries", type=int, default=10)
    ap.add_argument("--depth", type=int, default=100, help="candidates per query")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = load_model(None)
    models = {}
    for name, change in VARIANTS.items():
        m = MiceModel(replace(base.config, **change), base.tokenizer)
        m.load_state_dict(base.state_dict())
        models[name] = m.eval()
    docs = [json.loads(line) for line in (args.corpus / "corpus.jsonl").open()][: args.depth]
    texts = [base.format_document(d.get("title", ""), d["text"]) for d in docs]
    states = [s for i in range(0, len(texts), 32) for s in base.encode_documents(texts[i:i + 32])]
    d, d_mask = pad_states(states)
    queries = [q.text for q in read_queries(args.corpus)][: args.n_queries]
    times = {name: [] for name in VARIANTS}
    scores = {}
    with torch.inference_mode():
        for text in queries:
            q, q_mask = base.encode_queries([text])
            for name, m in models.items():
                t0 = time.perf_counter()
                scores[name] = score_pairs(m.interaction, q, q_mask, torch.zeros(len(states), dtype=torch.long), d, d_mask)
                times[name].append((time.perf_counter() - t0) * 1000)
    ref = statistics.median(times["paper (fast path)"])
    print(f"{len(queries)} queries x {len(states)} candidates, {args.threads} thread(s), fp32, median ms/query:")
    for name, t in times.items():
        print(f"  {name:55s} {statistics.median(t):8.1f} ms  x{statistics.median(t) / ref:.2f}")


if __name__ == "__main__":
    main()
