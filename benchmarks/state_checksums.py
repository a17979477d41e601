"""What the per-chunk crc32c checks cost a query: time to read the stored states of 100 candidates
with and without checking, side by side in one run (interleaved repetitions, medians).

The index is synthetic (no model needed): `--docs` documents of 64..256 tokens (uniform), hidden
size 384, written by the real ShardWriter with each codec; every query reads `--candidates` random
rows, as the MICE scorer does for one query's re-ranking depth.

    python benchmarks/state_checksums.py --work /tmp/crc-bench [--docs 4000] [--codecs fp16,int8-dim] \
        [--chunk-tokens 256,64]

`--chunk-tokens` writes one index per inner chunk size (the writer's ZARR_CHUNK_TOKENS): a read
hashes whole chunks, so smaller chunks hash fewer bytes that the query does not need.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from mice_index.codec import make_codec
from mice_index.encoder import EncodedWindow
from mice_index.sources import Document
from mice_index.store import IndexReader, ShardWriter
from mice_index.store import layout as L
from mice_index.store import writer as W

D = 384


def write_index(root: Path, codec_name: str, docs: int, shard_docs: int, seed: int = 0) -> Path:
    """A complete-enough index (manifest + shards) of random states; reused when present."""
    if (root / L.MANIFEST).exists():
        return root
    rng = np.random.default_rng(seed)
    codec = make_codec(codec_name, D)
    lengths = rng.integers(64, 257, size=docs).astype(np.int32)
    if codec.needs_fit:
        codec.fit(rng.standard_normal((50_000, D)).astype(np.float32), seed=seed)
    config, arrays = codec.to_params()
    (root / L.CODEC_DIR).mkdir(parents=True)
    for k, a in arrays.items():
        np.save(root / L.CODEC_DIR / f"{k}.npy", a)
    shards = []
    for i, start in enumerate(range(0, docs, shard_docs)):
        lens = lengths[start:start + shard_docs]
        w = ShardWriter(root, i, start, codec)
        for a in range(0, len(lens), 256):  # windows of 256 documents
            part = lens[a:a + 256]
            states = rng.standard_normal((int(part.sum()), D)).astype(np.float32)
            w.add(EncodedWindow(start + a, [Document(f"d{start + a + j}", "", "") for j in range(len(part))],
                                part, states, None, np.zeros(len(part), bool)))
        meta = w.commit()
        shards.append({"name": L.shard_name(i), "sha256": L.sha256_file(w.final / L.SHARD_META),
                       **{k: meta[k] for k in ("start_row", "num_docs", "num_tokens", "truncated_docs",
                                               "empty_docs")}})
    L.write_json_atomic(root / L.MANIFEST, {
        "format_version": L.FORMAT_VERSION, "complete": True, "shards": shards, "corpus": "synthetic",
        "model": {"hidden_size": D, "fusion_layer": 3, "name": "synthetic", "fingerprint": "-"},
        "settings": {"max_doc_length": 256}, "dense": None,
        "codec": {"name": codec.name, "config": config, "arrays": sorted(arrays), "columns": sorted(codec.columns()),
                  "bytes_per_token": codec.bytes_per_token, "fingerprint": codec.fingerprint()}})
    return root


def measure(roots: dict[str, Path], candidates: int, queries: int, reps: int, seed: int = 1) -> dict:
    """Per index: median ms per query to read `candidates` random rows' encoded states with and
    without the crc32c checks, and checked read + decode (what the scorer calls). All variants and
    indexes are interleaved in each repetition, so machine load hits them alike."""
    readers = {k: IndexReader.open(r) for k, r in roots.items()}
    n = min(r.num_docs for r in readers.values())
    rng = np.random.default_rng(seed)
    batches = [rng.choice(n, size=candidates, replace=False).tolist() for _ in range(queries)]
    times = {(k, v): [] for k in readers for v in ("read_checked", "read_unchecked", "read_checked_and_decode")}
    for reader in readers.values():
        for rows in batches:  # warm the page cache and the memory maps
            reader.get_encoded(rows)
    for _ in range(reps):
        for k, reader in readers.items():
            for variant in ("read_checked", "read_unchecked", "read_checked_and_decode"):
                reader.verify_chunks = variant != "read_unchecked"
                read = reader.get_states if variant.endswith("decode") else reader.get_encoded
                t0 = time.perf_counter()
                for rows in batches:
                    read(rows)
                times[k, variant].append((time.perf_counter() - t0) / queries * 1e3)
            reader.verify_chunks = True
    out = {}
    for k, reader in readers.items():
        med = {v: round(statistics.median(times[k, v]), 2) for _, v in times if _ == k}
        out[k] = {**{f"ms_{v}": t for v, t in med.items()},
                  "ms_checks": round(med["read_checked"] - med["read_unchecked"], 2),
                  "tokens_per_query": round(float(np.mean([reader.lengths(r).sum() for r in batches]))),
                  "chunk_checksums": reader.chunk_checksums}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--shard-docs", type=int, default=1024)
    ap.add_argument("--codecs", default="fp16,int8-dim")
    ap.add_argument("--chunk-tokens", default=str(W.ZARR_CHUNK_TOKENS))
    ap.add_argument("--candidates", type=int, default=100)
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--reps", type=int, default=7)
    args = ap.parse_args()
    roots = {}
    for chunk in map(int, args.chunk_tokens.split(",")):
        W.ZARR_CHUNK_TOKENS = chunk
        for name in args.codecs.split(","):
            key = f"{name}-chunk{chunk}"
            roots[key] = write_index(args.work / f"{name}-{args.docs}-chunk{chunk}", name, args.docs, args.shard_docs)
    for key, row in measure(roots, args.candidates, args.queries, args.reps).items():
        print(key, json.dumps(row), flush=True)

if __name__ == "__main__":
    main()
