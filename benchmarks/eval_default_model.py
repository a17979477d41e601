"""Evaluate a MICE model as a re-ranker on the shared collections' real queries.

    .venv/bin/python benchmarks/eval_default_model.py [--model default] \
        [--collections scifact,cranfield,cisi,medline,cacm,adi] [--cache /tmp/mice-train-cache] \
        [--out /tmp/eval_default_model.json]

Runs per collection: BM25, dense (all-MiniLM-L6-v2, exhaustive), hybrid (z-score fusion), and MICE
re-ranking the top-100 of BM25 and of hybrid; nDCG@10 and R@100 with ir_measures. As in the
reference table (/work/shared/datasets/README.md), a document whose id equals the query id is
skipped. Document layer-ℓ* states (and dense embeddings) come from the training state cache
(`mice_index.train.states`), so nothing here depends on the index/search engines being built.

MICE scoring is document-major: a document's cross-attention keys/values depend only on its frozen
states, so they are computed once per document and shared by every query that retrieved it
(checked against `MiceModel.score_states` at start-up).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from mice_index.candidates import Candidates, fuse  # noqa: E402
from mice_index.defaults import load_dense_tower, load_model  # noqa: E402
from mice_index.model import key_padding_mask, pad_states, query_self_mask  # noqa: E402
from mice_index.runs import ScoredDoc, evaluate  # noqa: E402
from mice_index.sources import read_documents, read_queries  # noqa: E402
from mice_index.train.states import load_or_encode  # noqa: E402
from mice_index.train.teachers import HybridTeacher, dense_query_embeddings  # noqa: E402

DATA = Path("/work/shared/datasets")
ALL = ["scifact", "cranfield", "cisi", "medline", "cacm", "adi"]
METRICS = ["nDCG@10", "R@100"]
RUNS = ["bm25", "dense", "hybrid", "bm25>mice", "hybrid>mice"]


def drop_self(c: Candidates, qids: list[str], doc_ids: list[str], depth: int) -> Candidates:
    out = Candidates.empty(len(qids), depth)
    for q, qid in enumerate(qids):
        keep = [(r, s) for r, s in zip(c.rows[q], c.scores[q]) if r >= 0 and doc_ids[r] != qid][:depth]
        for j, (r, s) in enumerate(keep):
            out.rows[q, j], out.scores[q, j] = r, s
    return out


@torch.inference_mode()
def doc_kv(model, states: list[torch.Tensor]):
    """Per interaction layer, cross-attention K and V [B,H,Td,dh] of a padded document batch."""
    docs, mask = pad_states(states)
    out = []
    for layer in model.interaction.layers[:-1]:  # the last layer's cross-attention never reaches the score
        a = layer.cross_attn
        out.append((a._heads(a.key(docs)), a._heads(a.value(docs))))
    return out, mask


@torch.inference_mode()
def score_with_kv(model, q, q_mask, kv, d_mask):
    """Interaction forward with precomputed document K/V (same function as Interaction.forward)."""
    inter = model.interaction
    self_mask, cross_mask = query_self_mask(q_mask, q.dtype), key_padding_mask(d_mask, q.dtype)
    is_token = torch.ones_like(q[:1, :, :1])
    is_token[:, 0] = 0
    *full, last = inter.layers
    for layer, (K, V) in zip(full, kv):
        q = layer.self_attn(q, q, self_mask)
        a = layer.cross_attn
        ctx = F.scaled_dot_product_attention(a._heads(a.query(q)), K, V, attn_mask=cross_mask)
        crossed = a.norm(q + a.out(ctx.transpose(1, 2).reshape(q.shape)))
        q = layer.ffn(torch.where(is_token.bool(), crossed, q))
    # last layer: only the [CLS] row reaches the score (as in mice_index.model.Interaction.forward)
    cls = last.ffn(last.self_attn(q[:, :1], q, self_mask[:, :, :1, :]))[:, 0]
    if inter.pooler is not None:
        cls = torch.tanh(inter.pooler(cls))
    return inter.head(cls).squeeze(-1)


@torch.inference_mode()
def mice_scores(model, states, query_texts: list[str], pairs: list[tuple[int, int]], docs_per_batch: int = 16):
    """{(query index, row): score} for all pairs, document-major."""
    q_all, qm_all = model.encode_queries(query_texts)
    by_doc: dict[int, list[int]] = defaultdict(list)
    for qi, r in pairs:
        by_doc[r].append(qi)
    rows = sorted(by_doc, key=lambda r: states.offsets[r + 1] - states.offsets[r])
    out = {}
    for i in range(0, len(rows), docs_per_batch):
        chunk = rows[i : i + docs_per_batch]
        kv, d_mask = doc_kv(model, states.tensors(chunk))
        pair_doc = torch.tensor([j for j, r in enumerate(chunk) for _ in by_doc[r]])
        pair_q = torch.tensor([qi for r in chunk for qi in by_doc[r]])
        qm = qm_all[pair_q]
        T = int(qm.sum(1).max())
        s = score_with_kv(model, q_all[pair_q, :T], qm[:, :T],
                          [(K[pair_doc], V[pair_doc]) for K, V in kv], d_mask[pair_doc])
        for qi, j, v in zip(pair_q.tolist(), pair_doc.tolist(), s.float().tolist()):
            out[(qi, chunk[j])] = v
    return out


def check_kv_path(model, states, query: str) -> float:
    rows = list(range(min(4, len(states))))
    with torch.inference_mode():
        ref = model.score_states(*model.encode_queries([query]), *pad_states(states.tensors(rows)))
    got = mice_scores(model, states, [query], [(0, r) for r in rows])
    return float(max(abs(float(ref[i]) - got[(0, r)]) for i, r in enumerate(rows)))


def to_run(c: Candidates, qids, doc_ids, rescore=None) -> list[ScoredDoc]:
    run = []
    for q, qid in enumerate(qids):
        for r, s in zip(c.rows[q], c.scores[q]):
            if r >= 0:
                run.append(ScoredDoc(qid, doc_ids[r], rescore[(q, int(r))] if rescore else float(s)))
    return run


def run_collection(model, tower, name: str, cache: Path, depth: int, max_queries: int | None) -> dict:
    t0 = time.time()
    docs = list(read_documents(DATA / name))
    doc_ids = [d.doc_id for d in docs]
    texts = [model.format_document(d.title, d.text) for d in docs]
    states = load_or_encode(model, doc_ids, texts, cache / model.fingerprint(), name, tower)
    queries = list(read_queries(DATA / name))[:max_queries]
    qids, qtexts = [q.query_id for q in queries], [q.text for q in queries]
    teacher = HybridTeacher(texts, states.dense, depth=min(depth + 1, len(docs)))
    bm25, dense, _ = teacher.mine(qtexts, dense_query_embeddings(model, tower, qtexts))
    lists = {"bm25": drop_self(bm25, qids, doc_ids, depth), "dense": drop_self(dense, qids, doc_ids, depth)}
    lists["hybrid"] = fuse(lists["bm25"], lists["dense"], "zscore", k=depth)
    pairs = {(q, int(r)) for key in ("bm25", "hybrid") for q, row in enumerate(lists[key].rows) for r in row if r >= 0}
    kv_err = check_kv_path(model, states, qtexts[0])
    assert kv_err < 1e-3, f"document-major K/V path differs from score_states by {kv_err}"
    t1 = time.time()
    scores = mice_scores(model, states, qtexts, sorted(pairs))
    mice_s = time.time() - t1
    runs = {k: to_run(c, qids, doc_ids) for k, c in lists.items()}
    runs["bm25>mice"] = to_run(lists["bm25"], qids, doc_ids, scores)
    runs["hybrid>mice"] = to_run(lists["hybrid"], qids, doc_ids, scores)
    res = {k: evaluate(run, DATA / name, METRICS) for k, run in runs.items()}
    return {"metrics": res, "pairs": len(pairs), "kv_check_max_abs_diff": kv_err, "mice_seconds": mice_s, "seconds": time.time() - t0,
            "queries": len(qids)}


def markdown(results: dict) -> str:
    lines = []
    for metric in METRICS:
        lines += [f"**{metric}**", "", "| collection | " + " | ".join(RUNS) + " |", "|---" * (len(RUNS) + 1) + "|"]
        for name, res in results.items():
            lines.append(f"| {name} | " + " | ".join(f"{res['metrics'][r][metric]:.3f}" for r in RUNS) + " |")
        avg = [np.mean([res["metrics"][r][metric] for res in results.values()]) for r in RUNS]
        lines += ["| **avg** | " + " | ".join(f"**{v:.3f}**" for v in avg) + " |", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--collections", default=",".join(ALL))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mice-train-cache"))
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--max-queries", type=int, default=None, help="first N queries per collection (smoke runs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("/tmp/eval_default_model.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model).eval()
    tower = load_dense_tower(model)
    if tower is None:
        raise SystemExit("this script needs a model whose bottom is all-MiniLM-L6-v2's (dense tower)")
    results = {}
    for name in args.collections.split(","):
        results[name] = res = run_collection(model, tower, name, args.cache, args.depth, args.max_queries)
        print(name, json.dumps(res["metrics"]), f"{res['pairs']} pairs in {res['mice_seconds']:.0f}s", flush=True)
    md = markdown(results)
    print(md)
    args.out.write_text(json.dumps(results, indent=1))
    args.out.with_suffix(".md").write_text(md)


if __name__ == "__main__":
    main()
