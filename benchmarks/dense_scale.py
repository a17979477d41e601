"""Dense index at scale: flat vs ivfpq (what `--dense-kind auto` picks above 50k documents) on
10k / 100k / 1M synthetic sentence-embedding-like vectors.

    nice -n 10 .venv/bin/python benchmarks/dense_scale.py --sizes 10000 100000 1000000 \
        --out benchmarks/results/dense_scale.json

Vectors: 384-d unit vectors from a mixture of 2,048 Gaussian clusters (64 topics x 32
sub-clusters) with a decaying spectrum and a common mean, written chunkwise into one .npy per
8,192 rows (as an index's build shards store them). Calibrated on the 12,362 real all-MiniLM-L6-v2
document vectors of the dev sets (scifact, cacm, cisi, cranfield, medline): median cosine to the
nearest / 10th / 100th neighbour 0.75 / 0.53 / 0.37 here vs 0.68 / 0.53 / 0.40 real; IVF256 coarse
recall@100 at nprobe 16 / 32: 0.92 / 0.96 here vs 0.92 / 0.98 real (so not easier than real).

Each build runs in a fresh subprocess (`rss_base_mib`: its RSS after imports; `build_peak_rss_mib`:
its peak RSS (VmHWM, reset just before the build) while building and saving), as `mice-index build` does it:
DenseIndex.build(StoredVectors.open(per-shard files)) then recall@100 vs flat on 200 stored
vectors (in-distribution). Search runs in another fresh subprocess that opens the saved index
memory-mapped and times 200 single held-out queries (new vectors from the same mixture), k=100,
with 1 and 2 faiss threads (p50 / p95 ms); it also reports recall@100 of those held-out queries
against an exact scan and, for ivfpq, a sweep over nprobe and the refine factor (1 thread).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mice_index, also in children

SHARD_ROWS = 8192
DIM = 384
K = 100


class ClusteredVectors:
    """Deterministic mixture; chunk(n, i) is the i-th block of rows (the same for every corpus size)."""

    def __init__(self, dim=DIM, topics=64, sub=32, alpha=0.45, alpha_noise=0.6, tau=1.1, mean_norm=0.3, seed=0):
        rng = np.random.default_rng(seed)
        spec = (1.0 + np.arange(dim)) ** -alpha
        spec /= np.sqrt((spec ** 2).sum())
        noise = (1.0 + np.arange(dim)) ** -alpha_noise
        noise /= np.sqrt((noise ** 2).sum())
        self.basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        mean = rng.normal(size=dim)
        self.mean = mean * mean_norm / np.linalg.norm(mean)
        topic = rng.normal(size=(topics, dim)) * spec
        self.leaf = np.repeat(topic, sub, axis=0) + rng.normal(size=(topics * sub, dim)) * spec
        self.noise = tau * noise[rng.permutation(dim)]
        self.seed, self.dim = seed, dim

    def chunk(self, n: int, chunk_id: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, chunk_id))
        z = self.leaf[rng.integers(0, len(self.leaf), size=n)] + rng.normal(size=(n, self.dim)) * self.noise
        x = z @ self.basis.T + self.mean
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_vectors(n: int, folder: Path) -> list[Path]:
    """n rows as ceil(n / 8192) .npy files (reused when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    gen, paths = ClusteredVectors(), []
    for i, start in enumerate(range(0, n, SHARD_ROWS)):
        path = folder / f"{i:05d}.npy"
        rows = min(SHARD_ROWS, n - start)
        if not path.exists() or np.load(path, mmap_mode="r").shape[0] != rows:
            np.save(path, gen.chunk(rows, i))
        paths.append(path)
    return paths


def _status_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak since the last _reset_peak) of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS


def child_build(args) -> dict:
    import faiss

    from mice_index.candidates import DenseConfig, DenseIndex, StoredVectors

    faiss.omp_set_num_threads(args.threads)
    paths = sorted(Path(args.vectors).glob("*.npy"))
    out = Path(args.index)
    shutil.rmtree(out, ignore_errors=True)
    base = _status_mib("VmRSS")
    _reset_peak()
    t = time.perf_counter()
    vectors = StoredVectors.open(paths)
    extra = {"train_max_rows": args.train_max_rows} if args.train_max_rows else {}
    DenseIndex.build(vectors, DenseConfig(kind=args.kind, **extra)).save(out)
    build_s = time.perf_counter() - t
    build_peak = _status_mib("VmHWM")
    t = time.perf_counter()
    index = DenseIndex.load(out)
    recall = index.recall_vs_flat(vectors)
    recall_s = time.perf_counter() - t
    return {"describe": index.describe(), "build_s": round(build_s, 1), "recall_s": round(recall_s, 1),
            "recall_at_100": recall["recall_at_100"], "rss_base_mib": round(base, 1),
            "build_peak_rss_mib": round(build_peak, 1), "with_recall_peak_rss_mib": round(_status_mib("VmHWM"), 1),
            "index_bytes": sum(f.stat().st_size for f in out.iterdir()),
            "stored_vectors_bytes": sum(p.stat().st_size for p in paths)}


def child_search(args) -> dict:
    from dataclasses import replace

    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    from mice_index.candidates import DenseIndex, StoredVectors

    base = _status_mib("VmRSS")
    _reset_peak()
    index = DenseIndex.load(args.index)
    queries = ClusteredVectors().chunk(args.queries, 10**6)  # held out: a chunk no corpus uses
    vectors = StoredVectors.open(sorted(Path(args.vectors).glob("*.npy")))
    _, exact = knn_ground_truth(queries, vectors.chunks(65536), K, metric_type=faiss.METRIC_INNER_PRODUCT)

    def timed(ix, threads):
        faiss.omp_set_num_threads(threads)
        ix.search(queries[:5], K)  # warm-up (page cache, lazily built tables)
        ms, found = [], []
        for q in queries:
            t = time.perf_counter()
            rows = ix.search(q[None], K).rows[0]
            ms.append(1000 * (time.perf_counter() - t))
            found.append(rows)
        hits = [np.intersect1d(a, e).size / K for a, e in zip(found, exact)]
        return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p95_ms": round(float(np.percentile(ms, 95)), 2),
                "recall_at_100_heldout": round(float(np.mean(hits)), 4)}

    out = {f"threads{t}": timed(index, t) for t in (1, 2)}
    out["rss_after_mapped_mib"] = round(_status_mib("VmRSS"), 1)  # incl. the map's pages of rows read
    out["rss_file_after_mapped_mib"] = round(_status_mib("RssFile"), 1)
    if index.config.kind == "ivfpq":  # the same index re-scoring with file reads instead of the map
        out["threads1_file_reads"] = timed(DenseIndex.load(args.index, mmap=False), 1)
    if index.config.kind == "ivfpq":
        sweep = []
        for nprobe in (16, 32, 64):
            for refine in (2, 4, 8):
                ix = DenseIndex(index.index, replace(index.config, nprobe=nprobe, refine_factor=refine), index.vectors)
                sweep.append({"nprobe": nprobe, "refine_factor": refine, **timed(ix, 1)})
        out["sweep_threads1"] = sweep
    out["search_rss_base_mib"] = round(base, 1)
    out["search_peak_rss_mib"] = round(_status_mib("VmHWM"), 1)  # incl. the exact scan for the held-out truth
    return out


def flat_timing(sizes: list[int], queries: int = 50) -> list[dict]:
    """p50 ms of one k=100 query on IndexFlatIP over N random unit vectors, 1 and 2 faiss threads
    (what `auto`'s flat threshold is chosen from)."""
    import faiss

    x = np.random.default_rng(0).normal(size=(max(sizes), DIM)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    out = []
    for n in sizes:
        index = faiss.IndexFlatIP(DIM)
        index.add(x[:n])
        row = {"docs": n}
        for threads in (1, 2):
            faiss.omp_set_num_threads(threads)
            ms = []
            for q in x[:queries]:
                t = time.perf_counter()
                index.search(q[None], K)
                ms.append(1000 * (time.perf_counter() - t))
            row[f"p50_ms_threads{threads}"] = round(float(np.median(ms)), 2)
        out.append(row)
        print(json.dumps(row), flush=True)
    return out


def _child(*argv: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, __file__, *argv], env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"child {argv[:2]} failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.rsplit("RESULT ", 1)[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--kinds", nargs="*", default=["flat", "ivfpq"])
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/mice-dense-scale"))
    ap.add_argument("--threads", type=int, default=2, help="faiss threads while building")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--train-max-rows", type=int, default=None, help="ivfpq training sample cap (default: the library's)")
    ap.add_argument("--tag", default="", help="suffix of the index folders (to keep variants apart)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--flat-timing", type=int, nargs="*", default=None, metavar="N",
                    help="only time flat search at these sizes (random vectors, 50 queries) and exit")
    ap.add_argument("--real", nargs="*", default=[], help="also: real dense.npy files (e.g. built indexes' shards); "
                    "builds each --kinds over them and reports the build-time (in-distribution) recall@100")
    ap.add_argument("--child", choices=["build", "search"], default=None, help=argparse.SUPPRESS)
    ap.add_argument("--vectors", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--index", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--kind", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        result = (child_build if args.child == "build" else child_search)(args)
        print("RESULT " + json.dumps(result), flush=True)
        return
    from mice_index.candidates import DenseConfig

    if args.flat_timing:
        rows = flat_timing(args.flat_timing)
        if args.out:
            args.out.write_text(json.dumps({"command": " ".join(sys.argv), "load_avg": os.getloadavg(),
                                            "flat_timing": rows}, indent=2))
        return
    results = []
    if args.real:
        folder = args.workdir / "real"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for i, path in enumerate(args.real):
            (folder / f"{i:05d}.npy").symlink_to(Path(path).resolve())
        n = sum(np.load(p, mmap_mode="r").shape[0] for p in args.real)
        for kind in args.kinds:
            row = {"docs": n, "kind": kind, "vectors": "real", "files": args.real}
            row.update(_child("--child", "build", "--vectors", str(folder), "--index",
                              str(args.workdir / f"dense-real-{kind}"), "--kind", kind, "--threads", str(args.threads)))
            results.append(row)
            print(json.dumps(row), flush=True)
            if args.out:
                args.out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))
    for n in args.sizes:
        t = time.perf_counter()
        folder = args.workdir / f"vectors-{n}"
        write_vectors(n, folder)
        gen_s = round(time.perf_counter() - t, 1)
        auto = DenseConfig(kind="auto").resolved(n, DIM).kind
        for kind in args.kinds:
            index = args.workdir / f"dense-{n}-{kind}{args.tag}"
            row = {"docs": n, "kind": kind, "auto_picks": auto, "generate_s": gen_s}
            more = ["--train-max-rows", str(args.train_max_rows)] if args.train_max_rows else []
            row.update(_child("--child", "build", "--vectors", str(folder), "--index", str(index), "--kind", kind,
                              "--threads", str(args.threads), *more))
            row.update(_child("--child", "search", "--vectors", str(folder), "--index", str(index),
                              "--queries", str(args.queries)))
            results.append(row)
            print(json.dumps(row), flush=True)
            if args.out:  # after every row: a long run leaves what it measured
                args.out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2))


if __name__ == "__main__":
    main()
