"""Peak RSS and time of the BM25 build for N synthetic documents: bm25s's in-memory ``BM25.index``
("old", the pre-#12 path) vs the streamed ``BM25Index.build_into`` ("new"), each in a fresh
subprocess that reports its own resource.getrusage(RUSAGE_SELF).ru_maxrss.

    .venv/bin/python benchmarks/bm25_build_memory.py --docs 10000 100000 --old-max 100000

A third mode, "tok", only runs bm25s's tokenizer over the same stream: its peak is the baseline plus
the tokenizer's vocabulary dicts, so new - tok is the builder's own memory. Every child first imports
what a build process holds (numpy, pyarrow, zarr, faiss, bm25s) and reports that RSS as
``baseline_mib``. Documents: 40-120 words (uniform) drawn from a Zipf(s) law over a finite
vocabulary of ``--vocab`` random 5-letter words, so the number of distinct terms grows sublinearly
with N, as in text (Heaps' law). Where old and new both ran, their files are compared byte for byte.
Results go to benchmarks/results/bm25_build_memory.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
import numpy, pyarrow, zarr, faiss, bm25s  # what a build process holds anyway
sys.path.insert(0, {root!r})
from benchmarks.bm25_build_memory import synthetic_texts
from mice_index.candidates import BM25Config, BM25Index
from mice_index.candidates.bm25 import _tokenizer
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
mode, n, vocab, s, out = {mode!r}, {n}, {vocab}, {s}, {out!r}
texts = synthetic_texts(n, vocab, s)
base = rss()
t = time.perf_counter()
info = {{}}
if mode == "new":
    BM25Index.build_into(out, texts, num_docs=n)
elif mode == "tok":
    tok = _tokenizer(BM25Config())
    for ids in tok.streaming_tokenize(texts, update_vocab=True, allow_empty=False):
        pass
    info["terms"] = len(tok.get_vocab_dict())
else:  # the pre-#12 BM25Index.build: token ids of every document in memory, then bm25s's index
    import numpy as np
    from dataclasses import asdict
    from mice_index.candidates.base import write_meta
    config = BM25Config()
    tok = _tokenizer(config)
    ids = [np.asarray(x, dtype=np.int32) for x in tok.streaming_tokenize(texts, update_vocab=True, allow_empty=False)]
    model = bm25s.BM25(k1=config.k1, b=config.b, method=config.method)
    model.index((ids, tok.get_vocab_dict() or {{"": 0}}), show_progress=False, create_empty_token=False)
    model.save(out, show_progress=False)
    write_meta(__import__("pathlib").Path(out), {{"name": "bm25", "config": asdict(config), "num_docs": len(ids)}})
info.update(mode=mode, docs=n, seconds=round(time.perf_counter() - t, 1), baseline_mib=round(base, 1),
            peak_rss_mib=round(rss(), 1))
print("RESULT", json.dumps(info))
"""


def synthetic_texts(n: int, vocab: int, s: float, seed: int = 0, chunk: int = 2000):
    """`n` documents of 40-120 Zipf(s)-distributed words over `vocab` 5-letter words, generated lazily."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cdf = np.cumsum(1.0 / np.arange(1, vocab + 1) ** s)
    cdf /= cdf[-1]
    if not 0 < vocab <= 26**5:
        raise ValueError(f"vocab must be in 1..{26**5}")
    powers = 26 ** np.arange(5)
    for start in range(0, n, chunk):
        lens = rng.integers(40, 121, size=min(chunk, n - start))
        ranks = np.minimum(np.searchsorted(cdf, rng.random(int(lens.sum()))), vocab - 1)
        ids = ranks * 1_000_003 % 26**5  # a bijection: scattered spellings, no table
        letters = np.empty((ids.size, 6), dtype=np.uint8)
        letters[:, :5] = (ids[:, None] // powers) % 26 + ord("a")
        letters[:, 5] = ord(" ")
        buf = letters.tobytes()
        ends = 6 * np.cumsum(lens)
        for a, b in zip((ends - 6 * lens).tolist(), ends.tolist()):
            yield buf[a : b - 1].decode()


def run_child(root: Path, mode: str, n: int, vocab: int, s: float, out: Path) -> dict:
    code = CHILD.format(root=str(root), mode=mode, n=n, vocab=vocab, s=s, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "DISABLE_TQDM": "1"})
    if proc.returncode:
        return {"mode": mode, "docs": n, "error": proc.stderr.strip().splitlines()[-1][:300]}
    return json.loads(proc.stdout.rsplit("RESULT", 1)[1])


def same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir())
    return names == sorted(p.name for p in b.iterdir()) and all(
        (a / x).read_bytes() == (b / x).read_bytes() for x in names)


def main() -> None:
    import numpy as np

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--modes", nargs="+", default=["tok", "new", "old"], choices=["tok", "new", "old"])
    ap.add_argument("--old-max", type=int, default=100_000, help="skip the old path above this many documents")
    ap.add_argument("--vocab", type=int, default=300_000, help="distinct words the documents draw from")
    ap.add_argument("--zipf", type=float, default=1.0, help="Zipf exponent s of the word frequencies")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/bm25_build_memory.json"))
    args = ap.parse_args()
    command = "benchmarks/bm25_build_memory.py " + " ".join(sys.argv[1:])
    root = Path(__file__).resolve().parents[1]
    previous = json.loads(args.out.read_text())["results"] if args.out.is_file() else []
    results = []
    with tempfile.TemporaryDirectory(prefix="mice-bm25-mem-") as tmp:
        for n in args.docs:
            outs = {}
            for mode in args.modes:
                if mode == "old" and n > args.old_max:
                    continue
                outs[mode] = Path(tmp) / f"{mode}-{n}"
                row = run_child(root, mode, n, args.vocab, args.zipf, outs[mode])
                if mode == "new" and "error" not in row:
                    p = json.loads((outs[mode] / "params.index.json").read_text())
                    row["terms"] = len(json.loads((outs[mode] / "vocab.index.json").read_text()))
                    row["postings"] = int(np.load(outs[mode] / "data.csc.index.npy", mmap_mode="r").shape[0])
                    row["index_mib"] = round(sum(f.stat().st_size for f in outs[mode].iterdir()) / 2**20, 1)
                    assert p["num_docs"] == n
                if mode == "old" and "new" in outs and "error" not in row:
                    row["identical_to_new"] = same_files(outs["old"], outs["new"])
                row.update(vocab=args.vocab, zipf=args.zipf, command=command)
                results.append(row)
                print(json.dumps(row), flush=True)
            for p in outs.values():
                subprocess.run(["rm", "-rf", str(p)])
    key = lambda r: (r["docs"], r["mode"], r["vocab"], r["zipf"])  # noqa: E731
    merged = {key(r): r for r in previous} | {key(r): r for r in results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"results": sorted(merged.values(), key=key)}, indent=2) + "\n")


if __name__ == "__main__":
    main()
