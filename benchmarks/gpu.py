"""The GPU benchmark of issue 18, for a bare GPU machine: a checkout plus the 64 MiB `.gpu/` carry
made by `make gpu-carry` (benchmarks/gpu_prep.py: wheels, tokenizer files, a corpus of a few
thousand documents). Weights are random-init in the default backbone's shape (speed and CPU-vs-GPU
agreement do not depend on them; quality is measured on CPU). Prints one JSON line per step and
writes them all to OUT/gpu.json. Plan: under 8 minutes on an H100/H200.

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
    PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 python3 benchmarks/gpu.py .gpu $OUT [--quick]

Steps: build (cuda, fp16 and compact codecs: documents/s, encoder alone and whole build);
encoder states cuda vs cpu; MICE pairs/s (fp32, bf16 x fp16, compact index x no cache, --gpu-cache;
plus the per-query batching of the CPU path for comparison); the same-backbone cross-encoder
at batch 32..1024 (pre-tokenized, bf16: the kernels' ceiling, and with tokenization); scores
cuda fp32/bf16 vs cpu fp32; one query BM25 top-100 -> MICE p50/p95.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

carry, out = Path(sys.argv[1]), Path(sys.argv[2])
QUICK = "--quick" in sys.argv  # a CPU smoke run of this script (tiny sizes), not a measurement
dev = "cuda" if torch.cuda.is_available() and not QUICK else "cpu"
out.mkdir(parents=True, exist_ok=True)
R: dict = {}
T0 = time.perf_counter()


def say(step, **kw):
    R[step] = {**kw, "at_s": round(time.perf_counter() - T0, 1)}
    print(json.dumps({"step": step, **R[step]}), flush=True)
    (out / "gpu.json").write_text(json.dumps(R, indent=1))


def sync():
    if dev == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeat=1):
    fn()  # warm-up: plans, allocator, caches
    sync()
    a = time.perf_counter()
    for _ in range(repeat):
        fn()
    sync()
    return (time.perf_counter() - a) / repeat


from transformers import AutoTokenizer, BertConfig, BertModel  # noqa: E402

import mice_index  # noqa: E402,F401
from mice_index.build import BuildConfig, build_index  # noqa: E402
from mice_index.model import MiceModel  # noqa: E402

say("env", torch=torch.__version__, cuda=torch.cuda.is_available(), device=dev, cpus=os.cpu_count(),
    gpu=torch.cuda.get_device_name(0) if dev == "cuda" else None, quick=QUICK)

# random-init weights of the default backbone's shape + its real tokenizer
torch.manual_seed(0)
rand = Path("/tmp/mice-gpu-rand")
BertModel(BertConfig.from_pretrained(carry / "tok"), add_pooling_layer=True).save_pretrained(rand, safe_serialization=True)
AutoTokenizer.from_pretrained(carry / "tok").save_pretrained(rand)
corpus = carry / "corpus"
n_docs = sum(1 for _ in open(corpus / "corpus.jsonl"))
queries = [json.loads(line)["text"] for line in open(corpus / "queries.jsonl")]

# 1. build: whole build per codec, documents/s
idx = {}
for codec in ("fp16", "compact"):
    idx[codec] = Path(f"/tmp/mice-gpu-{codec}")
    cfg = BuildConfig(model=str(rand), codec=codec, device=dev, batch_tokens=65_536 if dev == "cuda" else 8192,
                      overwrite=True)
    if QUICK and (idx[codec] / "manifest.json").exists():  # smoke run: reuse the previous one's indexes
        continue
    a = time.perf_counter()
    build_index(corpus, idx[codec], cfg)
    s = time.perf_counter() - a
    say(f"build-{codec}", docs=n_docs, seconds=round(s, 2), docs_per_s=round(n_docs / s))

# encoder alone (forward passes + prefetch threads, no writing), and cuda-vs-cpu states
from mice_index.encoder import DocumentEncoder, EncoderConfig  # noqa: E402
from mice_index.sources import read_documents  # noqa: E402

model = MiceModel.from_pretrained(rand)
docs = list(read_documents(corpus))
enc = DocumentEncoder(model, EncoderConfig(device=dev, batch_tokens=65_536 if dev == "cuda" else 8192))
t = timed(lambda: sum(len(w.docs) for w in enc.windows(docs)))
say("encode", docs=len(docs), docs_per_s=round(len(docs) / t), dtype=enc.dtype, prefetch=enc.prefetch)
sample = [f"{d.title} {d.text}" for d in docs[:200]]
cpu_states = DocumentEncoder(MiceModel.from_pretrained(rand), EncoderConfig(device="cpu", dtype="fp32")).encode_texts(sample)
for dt in ("fp32", "bf16"):
    gpu_states = DocumentEncoder(MiceModel.from_pretrained(rand), EncoderConfig(device=dev, dtype=dt)).encode_texts(sample)
    say(f"states-{dev}-{dt}-vs-cpu-fp32", docs=len(sample),
        max_abs=max(float(np.abs(a - b).max()) for a, b in zip(cpu_states, gpu_states)))

# 2. MICE scorer pairs/s
from mice_index.scorer import MiceScorer, ScorerConfig  # noqa: E402
from mice_index.store import IndexReader  # noqa: E402

nq, depth = (8, 20) if QUICK else (256, 100)
rng = np.random.default_rng(0)
qs = [queries[i % len(queries)] for i in range(nq)]
readers = {c: IndexReader.open(idx[c]) for c in idx}
cands = [sorted(rng.choice(n_docs, depth, replace=False).tolist()) for _ in range(nq)]
pairs = nq * depth
scores = {}
settings = [("fp16", "fp32", "cross", 0), ("fp16", "bf16", "cross", 0), ("compact", "fp32", "cross", 0),
            ("compact", "bf16", "cross", 0), ("fp16", "bf16", "cross", 4096), ("compact", "bf16", "cross", 4096),
            ("fp16", "bf16", "query", 0), ("fp16", "fp32", "query", 0)]
for codec, dt, batching, cache in settings:
    sc = MiceScorer(model, readers[codec], ScorerConfig(device=dev, dtype=dt, quantize="none", batching=batching,
                                                         gpu_cache=cache, decode="device" if batching == "cross" else "host"))
    got = []
    t = timed(lambda: got.append(sc.score(qs, cands)), repeat=1 if QUICK else 3)
    scores[(codec, dt, batching, cache)] = got[-1]
    say(f"mice-{codec}-{dt}-{batching}-cache{cache}", pairs=pairs, pairs_per_s=round(pairs / t),
        feed=sc.feed.describe() if sc.feed else None)

# CPU-vs-GPU score agreement on the same pairs (cpu fp32, no int8)
sub = slice(0, 8 if QUICK else 32)
for codec in ("fp16", "compact"):
    ref = MiceScorer(model, readers[codec], ScorerConfig(device="cpu", dtype="fp32", quantize="none")).score(
        qs[sub], cands[sub])
    for dt in ("fp32", "bf16"):
        got = scores[(codec, dt, "cross", 0)][sub]
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
        say(f"agree-{codec}-{dev}-{dt}-vs-cpu-fp32", pairs=sum(len(r) for r in ref), max_abs=diff,
            median_query_score_std=float(statistics.median(float(np.std(r)) for r in ref)))

# 3. same-backbone cross-encoder: pre-tokenized pairs (kernel ceiling) and from text (CrossEncoder)
from mice_index.crossencoder import CrossEncoder  # noqa: E402

ce = CrossEncoder(rand, max_length=288, device=dev)
tok = AutoTokenizer.from_pretrained(rand)
texts = [f"{t} {x}" for t, x in readers["fp16"].texts(cands[0])]
enc_pairs = tok([qs[0]] * len(texts), texts, truncation=True, max_length=288, padding="max_length",
                return_tensors="pt")
bert = BertModel.from_pretrained(rand).to(dev).eval()
best = 0
for bs in ((32,) if QUICK else (32, 128, 512, 1024)):
    reps = -(-bs // len(texts))
    batch = {k: v.repeat(reps, 1)[:bs].to(dev) for k, v in enc_pairs.items()}

    def run():
        with torch.inference_mode(), torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
            bert(**batch).pooler_output.sum().item()

    t = timed(run, repeat=1 if QUICK else 5)
    best = max(best, round(bs / t))
    say(f"ce-pretokenized-bf16-bs{bs}", pairs_per_s=round(bs / t))
for bs in ((32,) if QUICK else (32, 128, 512)):
    n = len(texts)
    with torch.autocast(dev, dtype=torch.bfloat16, enabled=dev == "cuda"):
        t = timed(lambda: ce.score(qs[0], texts, batch_size=bs), repeat=1 if QUICK else 3)
    say(f"ce-text-bf16-bs{bs}", pairs_per_s=round(n / t))
mice_best = max(v["pairs_per_s"] for k, v in R.items() if k.startswith("mice-") and "cross" in k)
say("mice-vs-cross-encoder", mice_best_pairs_per_s=mice_best, ce_best_pairs_per_s=best, ratio=round(mice_best / best, 1))

# 4. one query: BM25 top-100 -> MICE (the search defaults on this device)
from mice_index.search import SearchConfig, Searcher  # noqa: E402

for codec in ("fp16", "compact"):
    s = Searcher.open(idx[codec], model=model, config=SearchConfig(candidates="bm25", depth=100,
                                                                   scorer=ScorerConfig(device=dev)))
    for q in queries[:5]:
        s.search(q, k=10)
    ts = []
    for q in queries[5: 25 if QUICK else 105]:
        sync()
        a = time.perf_counter()
        s.search(q, k=10)
        sync()
        ts.append(time.perf_counter() - a)
    ts.sort()
    say(f"latency-{codec}-bm25-100", n=len(ts), p50_ms=round(1000 * statistics.median(ts), 1),
        p95_ms=round(1000 * ts[max(0, int(0.95 * len(ts)) - 1)], 1))
say("done", seconds=round(time.perf_counter() - T0, 1))
