"""Cost of living-index operations vs a full rebuild (issue 19): add 1% of a corpus, delete 1%,
compact, side by side with a build of the whole corpus, in one process on the same machine.
Numbers go to BENCHMARKS.md ("Updating an index").

    nice -n 10 .venv/bin/python benchmarks/update_cost.py --corpus /work/shared/datasets/cranfield

1. build the corpus without its last `--fraction` of documents (the base index);
2. `add_documents` of those documents (encode them + re-derive BM25 / dense over all live rows);
3. `build_index` of the whole corpus (the rebuild an add replaces); its ranked lists are
   compared with the added-to index's (same row order: the added documents are the corpus tail);
4. `delete_documents` of `--fraction` of the documents, then `compact_index`.
With `--ivfpq` the same add is repeated on a base index whose dense index is ivfpq (quantizer
kept, vectors added) and its recall@100 vs flat is reported before and after.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mice_index.build import BuildConfig, build_index  # noqa: E402
from mice_index.defaults import load_model  # noqa: E402
from mice_index.search import SearchConfig, Searcher  # noqa: E402
from mice_index.sources import read_documents, read_queries  # noqa: E402
from mice_index.store import index_info  # noqa: E402
from mice_index.update import UpdateConfig, add_documents, compact_index, delete_documents  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def write(path: Path, docs) -> Path:
    path.write_text("".join(json.dumps({"_id": d.doc_id, "title": d.title, "text": d.text}) + "\n" for d in docs))
    return path


def same_lists(a: Path, b: Path, model, queries: list[str]) -> dict:
    """Per first stage (and MICE on hybrid): do the two indexes give the same top-10 ids, and the
    largest score difference."""
    out = {}
    base = SearchConfig(candidates="hybrid", depth=100)
    sa, sb = Searcher.open(a, model=model, config=base), Searcher.open(b, model=model, config=base)
    for cand, rerank in (("bm25", "none"), ("dense", "none"), ("hybrid", "mice")):
        ra = sa.with_config(candidates=cand, rerank=rerank).search_texts(queries, 10)
        rb = sb.with_config(candidates=cand, rerank=rerank).search_texts(queries, 10)
        ids = all([h.doc_id for h in x] == [h.doc_id for h in y] for x, y in zip(ra, rb))
        diff = max(abs(h.score - g.score) for x, y in zip(ra, rb) for h, g in zip(x, y))
        out[f"{cand}+{rerank}"] = {"same_top10_ids": ids, "max_score_diff": float(diff)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/work/shared/datasets/cranfield")
    ap.add_argument("--fraction", type=float, default=0.01)
    ap.add_argument("--codec", default="fp16", help="build codec (a trained one, e.g. compact, reports codec drift)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--queries", type=int, default=20, help="queries compared between add and rebuild")
    ap.add_argument("--ivfpq", action="store_true", help="also: add to an ivfpq dense index (recall vs flat)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="mice-update-cost-"))
    docs = list(read_documents(args.corpus))
    n_new = max(1, round(len(docs) * args.fraction))
    base_docs, new_docs = docs[:-n_new], docs[-n_new:]
    base_corpus, new_corpus = write(tmp / "base.jsonl", base_docs), write(tmp / "new.jsonl", new_docs)
    full_corpus = write(tmp / "full.jsonl", docs)
    model = load_model(None)
    cfg = BuildConfig(shard_docs=1024, codec=args.codec)
    res: dict = {"corpus": args.corpus, "docs": len(docs), "added": n_new, "codec": args.codec, "threads": args.threads,
                 "cpu": platform.processor(), "loadavg_start": os.getloadavg()}
    res["build_base_s"], _ = timed(lambda: build_index(base_corpus, tmp / "idx", cfg, model=model))
    res["add_s"], r = timed(lambda: add_documents(tmp / "idx", new_corpus, model=model,
                                                  config=UpdateConfig(auto_compact=False)))
    res["rebuild_s"], _ = timed(lambda: build_index(full_corpus, tmp / "ref", cfg, model=model))
    queries = [q.text for q in itertools.islice(read_queries(args.corpus), args.queries)]
    res["add_vs_rebuild"] = same_lists(tmp / "idx", tmp / "ref", model, queries)
    res["codec_drift"] = r.info["codec_drift"]
    rng = np.random.default_rng(0)
    gone = [docs[i].doc_id for i in rng.choice(len(docs), size=n_new, replace=False)]
    res["delete_s"], _ = timed(lambda: delete_documents(tmp / "idx", gone, config=UpdateConfig(auto_compact=False)))
    res["compact_s"], r = timed(lambda: compact_index(tmp / "idx"))
    res["after_compact"] = {k: r.info[k] for k in ("num_docs", "num_rows", "num_shards", "deleted_docs")}
    if args.ivfpq:
        pq = BuildConfig(shard_docs=1024, dense_kind="ivfpq", codec=args.codec)
        res["ivfpq_build_base_s"], _ = timed(lambda: build_index(base_corpus, tmp / "pq", pq, model=model))
        before = index_info(tmp / "pq")["dense_index"]
        res["ivfpq_add_s"], r = timed(lambda: add_documents(tmp / "pq", new_corpus, model=model))
        res["ivfpq_recall_at_100"] = {"build": before["recall_at_100"],
                                      "after_add": r.info["dense_index"]["recall_at_100"]}
    res["ratio_add_vs_rebuild"] = round(res["add_s"] / res["rebuild_s"], 4)
    res["ratio_delete_vs_rebuild"] = round(res["delete_s"] / res["rebuild_s"], 4)
    res["loadavg_end"] = os.getloadavg()
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
