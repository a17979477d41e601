"""Scale: indexes of 10k / 100k / 1M documents without the encoder, each measured in fresh processes.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python benchmarks/scale.py --sizes 10000 100000 1000000 \
        --work /work/bench-scale --out benchmarks/results/scale.json

Per size: a synthetic corpus (benchmarks/synthetic.py: Zipf words with topics, log-normal lengths,
`--mean-tokens` tokens per document on average) is written as JSONL; `build` runs the real build
pipeline (`build_index`: source readers, shard writer, manifest, codec fit, BM25 and dense
candidate builders, lock) with a synthetic encoder in place of the model's bottom (per-word states
encoded once with the index's codec, dense vectors = mean word vectors) in its own process, which
reports its peak RSS (ru_maxrss) and seconds; `search` opens the index in another fresh process
and measures open time (IndexReader.open + Searcher, the model loaded beforehand and timed apart),
the bytes it read while opening (/proc/self/io rchar), RSS, and per-query latency of hybrid top-100
→ MICE with the default model and the real dense query encoder (the synthetic dense vectors are
not aligned with that encoder: right for timing, meaningless for quality), the first stage timed on
its own; finally the dense index's recall@100 against exact (flat) search, with query vectors
built like the documents' (aligned), computed here and read from the manifest when it has one.
All searches run after all builds, one size after the other, so their conditions are alike.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_HERE = Path(__file__).resolve().parent
# this checkout's mice_index (or, for a before/after comparison of search, the one in --search-src)
sys.path[:0] = [os.environ.get("MICE_SCALE_SRC") or str(_HERE.parent), str(_HERE)]

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _proc_status() -> dict[str, int]:
    """VmRSS / RssAnon / RssFile of this process in bytes."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, val = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) * 1024
    return out


def _rchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def _mib(b: float) -> float:
    return round(b / 2**20, 1)


def _vocab(args):
    from synthetic import Vocab

    return Vocab(seed=args.seed)


# ----------------------------------------------------------------------------------------- children
def child_corpus(args) -> dict:
    from synthetic import documents

    vocab, t = _vocab(args), time.perf_counter()
    n_words = 0
    with open(args.corpus, "w") as fh:
        for doc_id, text, _ in documents(vocab, args.n, args.mean_tokens, args.max_len, seed=args.seed):
            fh.write(f'{{"_id": "{doc_id}", "text": "{text}"}}\n')
            n_words += text.count(" ") + 1
    return {"docs": args.n, "words": n_words, "seconds": round(time.perf_counter() - t, 1)}


def _peak_and_reset() -> int:
    """This process's peak RSS (VmHWM) since the last reset, in bytes; then reset it (Linux >= 4.0)."""
    peak = int(next(ln for ln in Path("/proc/self/status").read_text().splitlines()
                    if ln.startswith("VmHWM:")).split()[1]) * 1024
    Path("/proc/self/clear_refs").write_text("5")
    return peak


def child_build(args) -> dict:
    """Build with the synthetic encoder; peak RSS per phase: codec fit (reading the first shard's
    documents, k-means on `fit_tokens` tokens: independent of the corpus size), encode (documents
    -> shards) and candidates (BM25 + dense index), found by resetting VmHWM between phases."""
    from synthetic import SyntheticEncoder

    from mice_index import build as B
    from mice_index.defaults import load_model

    vocab = _vocab(args)
    model = load_model(None)
    before = _proc_status()["VmRSS"]
    _peak_and_reset()
    peaks: dict[str, int] = {}
    times: dict[str, float] = {}
    t0 = time.perf_counter()

    class Encoder(SyntheticEncoder):
        def bind_codec(self, codec):  # the per-word codec columns count as part of the fit
            super().bind_codec(codec)
            peaks["fit"], times["fit"] = _peak_and_reset(), time.perf_counter() - t0

    build_candidates = B.build_candidates  # the store function build.py calls (mice_index.store.candidates_build)

    def timed_candidates(root, m, **kw):
        peaks["encode"], times["encode"] = _peak_and_reset(), time.perf_counter() - t0 - times["fit"]
        out = build_candidates(root, m, **kw)
        peaks["candidates"] = _peak_and_reset()
        times["candidates"] = time.perf_counter() - t0 - times["fit"] - times["encode"]
        return out

    B.build_candidates = timed_candidates
    cfg = B.BuildConfig(codec=args.codec, fit_tokens=args.fit_tokens,
                        **({"dense_kind": args.dense_kind} if args.dense_kind else {}))
    B.build_index(args.corpus, args.index, cfg, model=model,
                  encoder_factory=lambda _m, enc_cfg, tower, dmodel, _t: Encoder(
                      vocab, enc_cfg, dense=tower is not None or dmodel is not None))
    total = time.perf_counter() - t0
    return {"build_seconds": round(total, 1), "build_peak_rss_mib": _mib(max(peaks.values())),
            "build_peak_rss_by_phase_mib": {k: _mib(v) for k, v in peaks.items()},
            "build_seconds_by_phase": {k: round(v, 1) for k, v in times.items()},
            "rss_before_build_mib": _mib(before), "synthetic_tables_mib": _mib(vocab.table_bytes())}


def child_search(args) -> dict:
    import numpy as np
    import torch
    from synthetic import queries

    from mice_index.defaults import DEFAULT_BACKBONE, load_model
    from mice_index.search import DenseQueryEncoder, SearchConfig, Searcher, checked_model
    from mice_index.store import IndexReader

    t = time.perf_counter()
    model = load_model(None)
    embed = DenseQueryEncoder(DEFAULT_BACKBONE, 3)
    model_s = time.perf_counter() - t
    rss0, io0 = _proc_status(), _rchar()
    t, c = time.perf_counter(), time.process_time()
    reader = IndexReader.open(args.index)
    searcher = Searcher(reader, checked_model(reader, model), SearchConfig(candidates="hybrid", depth=100), embed)
    open_s, open_cpu = time.perf_counter() - t, time.process_time() - c
    rss1, io1 = _proc_status(), _rchar()
    qs = queries(_vocab(args), args.warmup + args.queries, seed=args.seed)
    warm, qs = [q for q, _ in qs[: args.warmup]], qs[args.warmup:]
    texts = [q for q, _ in qs]
    t = time.perf_counter()
    searcher.search(warm[0] if warm else texts[0], k=10)  # the first query after open (lazy loads)
    first_query_s = time.perf_counter() - t
    t = time.perf_counter()
    for q in warm[1:]:  # other queries: shards' maps opened as a long-running searcher has them
        searcher.search(q, k=10)
    warmup_s = time.perf_counter() - t
    stage1, total, stage1_cpu, total_cpu = [], [], [], []
    for q in texts:
        t, c = time.perf_counter(), time.process_time()
        searcher.candidates([q], 100)
        stage1.append(time.perf_counter() - t)
        stage1_cpu.append(time.process_time() - c)
    for q in texts:
        t, c = time.perf_counter(), time.process_time()
        searcher.search(q, k=10)
        total.append(time.perf_counter() - t)
        total_cpu.append(time.process_time() - c)
    rss2 = _proc_status()

    def pct(xs, p):
        return round(float(np.percentile(np.array(xs) * 1000, p)), 1)

    out = {"model_load_seconds": round(model_s, 2), "open_seconds": round(open_s, 3),
           "open_cpu_seconds": round(open_cpu, 3),
           "open_read_mib": _mib(io1 - io0), "rss_before_open_mib": _mib(rss0["VmRSS"]),
           "rss_after_open_mib": _mib(rss1["VmRSS"]), "rss_open_anon_delta_mib": _mib(rss1["RssAnon"] - rss0["RssAnon"]),
           "rss_after_search_mib": _mib(rss2["VmRSS"]), "rss_search_anon_delta_mib": _mib(rss2["RssAnon"] - rss1["RssAnon"]),
           "rss_search_file_delta_mib": _mib(rss2["RssFile"] - rss1["RssFile"]),
           "first_query_ms": round(first_query_s * 1000, 1), "queries": len(texts), "warmup_queries": len(warm),
           "warmup_mean_ms": round(warmup_s * 1000 / max(1, len(warm) - 1), 1),
           "search_p50_ms": pct(total, 50), "search_p95_ms": pct(total, 95),
           "first_stage_p50_ms": pct(stage1, 50), "first_stage_p95_ms": pct(stage1, 95),
           # CPU time of the process (all threads) per query: less sensitive to other processes
           # sharing the cores than wall time
           "search_cpu_p50_ms": pct(total_cpu, 50), "search_cpu_p95_ms": pct(total_cpu, 95),
           "first_stage_cpu_p50_ms": pct(stage1_cpu, 50),
           "torch_threads": torch.get_num_threads()}
    # dense recall@100 against exact search, with aligned (synthetic) query vectors
    qv = np.stack([v for _, v in qs])
    exact_s, exact_r = np.full((len(qs), 100), -np.inf, np.float32), np.zeros((len(qs), 100), np.int64)
    for s in reader._shards:
        mat = np.load(s.dir / "dense.npy", mmap_mode="r")
        for a in range(0, mat.shape[0], 65536):
            sc = qv @ np.asarray(mat[a:a + 65536]).T
            cat_s = np.concatenate([exact_s, sc], axis=1)
            cat_r = np.concatenate([exact_r, np.broadcast_to(np.arange(a, a + sc.shape[1]) + s.start, sc.shape)], axis=1)
            top = np.argsort(-cat_s, axis=1, kind="stable")[:, :100]
            exact_s, exact_r = np.take_along_axis(cat_s, top, 1), np.take_along_axis(cat_r, top, 1)
    approx = searcher._dense.search(qv, 100).rows
    out["dense_recall@100_vs_flat"] = round(float(np.mean([len(set(a) & set(e)) / 100
                                                           for a, e in zip(approx.tolist(), exact_r.tolist())])), 4)
    cand = reader.manifest.candidates
    out["dense_kind"] = cand.dense_kind
    out["manifest_dense"] = {"dense_kind": cand.dense_kind, "dense_nprobe": cand.dense_nprobe,
                             "dense_index": cand.dense_index}
    return out


# ----------------------------------------------------------------------------------------- driver
def _run_child(mode: str, args, **kw) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--seed", str(args.seed), "--codec", args.codec,
           "--mean-tokens", str(args.mean_tokens), "--queries", str(args.queries), "--max-len", str(args.max_len),
           "--fit-tokens", str(args.fit_tokens), "--warmup", str(args.warmup)]
    if args.dense_kind:
        cmd += ["--dense-kind", args.dense_kind]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    env = {**ENV, "MICE_SCALE_SRC": str(args.search_src)} if mode == "search" and args.search_src else ENV
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _disk(index: Path, docs: int, tokens: int) -> dict:
    from mice_index.store import layout as L

    parts = {"states": 0, "docs_parquet": 0, "dense_npy": 0}
    for shard in (index / L.SHARDS_DIR).iterdir():
        parts["states"] += L.dir_bytes(shard / L.STATES)
        parts["docs_parquet"] += (shard / L.DOCS).stat().st_size
        parts["dense_npy"] += (shard / L.DENSE).stat().st_size if (shard / L.DENSE).exists() else 0
    parts["bm25"] = L.dir_bytes(index / L.BM25_DIR) if (index / L.BM25_DIR).is_dir() else 0
    parts["dense_index"] = L.dir_bytes(index / L.DENSE_DIR) if (index / L.DENSE_DIR).is_dir() else 0
    total = L.dir_bytes(index)
    return {"disk_mib": _mib(total), "bytes_per_doc": round(total / docs), "bytes_per_token": round(total / tokens, 1),
            "bytes_per_doc_by_part": {k: round(v / docs) for k, v in parts.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--work", type=Path, default=Path("/work/bench-scale"))
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--codec", default="compact")
    ap.add_argument("--dense-kind", default=None, help="BuildConfig.dense_kind (default: BuildConfig's)")
    ap.add_argument("--mean-tokens", type=float, default=80.0,
                    help="mean tokens per document incl. [CLS]/[SEP] (log-normal; MS MARCO passages ~80)")
    ap.add_argument("--max-len", type=int, default=256, help="the model's max_doc_length (lengths are clipped)")
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=50, help="other queries searched first (untimed but their mean)")
    ap.add_argument("--fit-tokens", type=int, default=100_000, help="BuildConfig.fit_tokens (codec fit sample)")
    ap.add_argument("--search-src", type=Path, default=None,
                    help="run the search measurements with the mice_index of this checkout (e.g. main's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--search-only", action="store_true", help="re-measure search on the indexes already built")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--corpus", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--index", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps({"corpus": child_corpus, "build": child_build, "search": child_search}[args.child](args)))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    rows = {r["docs"]: r for r in previous.get("results", [])}
    for n in args.sizes:
        corpus, index = args.work / f"corpus-{n}.jsonl", args.work / f"index-{n}-{args.codec}"
        row = rows.get(n, {}) if args.search_only else {}
        if not args.search_only:
            if not corpus.exists():
                row["corpus"] = _run_child("corpus", args, n=n, corpus=corpus)
                print(f"{n}: corpus {row['corpus']}", flush=True)
            if index.exists():
                subprocess.run(["rm", "-rf", str(index)], check=True)
            row.update(_run_child("build", args, corpus=corpus, index=index))
            from mice_index.store.manifest import index_info

            info = index_info(index)
            row.update(docs=info["num_docs"], tokens=info["num_tokens"],
                       tokens_per_doc=round(info["num_tokens"] / info["num_docs"], 1),
                       **_disk(index, info["num_docs"], info["num_tokens"]))
            print(f"{n}: build {json.dumps(row)}", flush=True)
        rows[n] = {**row, "docs": row.get("docs", n)}
    for n in args.sizes:
        index = args.work / f"index-{n}-{args.codec}"
        rows[n].update(_run_child("search", args, index=index))
        print(f"{n}: search {json.dumps(rows[n])}", flush=True)
    result = {"command": " ".join(["benchmarks/scale.py", *sys.argv[1:]]), "codec": args.codec,
              "mean_tokens": args.mean_tokens, "cpu_count": os.cpu_count(),
              "results": [rows[n] for n in sorted(rows)]}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
