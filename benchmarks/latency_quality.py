"""Quality cost of the latency options, on the real queries of the dev collections.

For each collection's fp16 index (built by pipelines/beir_eval.py), hybrid top-100 candidates are
re-ranked by MICE under each variant, and nDCG@10 is computed for pure MICE (α = 0) and for the
default pipeline (the model's recommended α), from the same MICE scores:

    base         fp32, every stored token (the exact path)
    int8         ScorerConfig(quantize="int8")
    bf16         ScorerConfig(dtype="bf16"): the interaction layers in bfloat16
    prune        document states of stopwords/punctuation dropped (`--prune stopwords`); simulated
                 on the unpruned index by re-tokenising each candidate exactly like `build` and
                 dropping the same rows, which is what a pruned build stores (pruning happens after
                 the bottom layers, so kept states are unchanged)
    prune+int8, prune+bf16   both

Also reported: the MICE scoring CPU time per variant (process CPU seconds, summed over threads:
less sensitive to other load than wall time) and the share of document tokens kept.

    python benchmarks/latency_quality.py --datasets ../shared/datasets --indexes out/beir/indexes
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from mice_index.candidates import interpolate
from mice_index.encoder import _Pass
from mice_index.prune import TokenPruner
from mice_index.runs import ScoredDoc, evaluate
from mice_index.scorer import MiceScorer, ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import read_queries

COLLECTIONS = "scifact,cranfield,cisi,medline,cacm,adi"


class PrunedReader:
    """An IndexReader seen through a pruning rule: lengths and states of the kept tokens only."""

    def __init__(self, reader, model, rule: str):
        self.reader, self.pruner = reader, TokenPruner(model.tokenizer, rule)
        self.tok = _Pass(model, None, reader.manifest.settings.max_doc_length, torch.device("cpu"))
        self.model, self._keep = model, {}
        self.kept = self.total = 0

    def __getattr__(self, name):
        if name == "read_padded":  # the unpruned reader's fast path would read every token
            raise AttributeError(name)
        return getattr(self.reader, name)

    def keep(self, rows) -> list[np.ndarray]:
        missing = [r for r in rows if r not in self._keep]
        if missing:
            texts = [self.model.format_document(t, x) for t, x in self.reader.texts(missing)]
            ids, _ = self.tok.tokenize(texts)
            stored = self.reader.lengths(missing)
            for r, x, n in zip(missing, ids, stored):
                assert len(x) == n, (r, len(x), n)  # same tokens as the build
                self._keep[r] = self.pruner.keep(x)
        return [self._keep[r] for r in rows]

    def lengths(self, rows) -> np.ndarray:
        return np.array([k.sum() for k in self.keep(rows)], dtype=np.int64)

    def get_states(self, rows) -> list[np.ndarray]:
        out = []
        for s, k in zip(self.reader.get_states(rows), self.keep(rows)):
            self.kept, self.total = self.kept + int(k.sum()), self.total + k.size
            out.append(np.ascontiguousarray(s[k]))
        return out


def run_collection(folder: Path, index: Path, depth: int, batch: int, names: list[str]) -> dict:
    searcher = Searcher.open(index, config=SearchConfig(candidates="hybrid", depth=depth))
    model, reader, alpha = searcher.model, searcher.reader, searcher.alpha
    queries = list(read_queries(folder))
    texts = [q.text for q in queries]
    cands = searcher.candidates(texts, min(depth, reader.num_docs))
    rows = [r[r >= 0] for r in cands.rows]
    firsts = [s[r >= 0] for r, s in zip(cands.rows, cands.scores)]
    pruned = PrunedReader(reader, model, "stopwords")
    pruned.keep(sorted({int(x) for r in rows for x in r}))  # tokenise outside the timed part
    out = {}
    for name in names:
        rd = pruned if name.startswith("prune") else reader
        quantize = "int8" if name.endswith("int8") else "none"
        scorer = MiceScorer(model, rd, ScorerConfig(quantize=quantize, dtype="bf16" if name.endswith("bf16") else "fp32"))
        scorer.score(texts[:batch], rows[:batch])  # warm-up: page cache, kernels
        t = time.process_time()
        mice = []
        for i in range(0, len(texts), batch):
            mice += scorer.score(texts[i:i + batch], rows[i:i + batch])
        cpu = time.process_time() - t
        res = {"cpu_s": round(cpu, 2)}
        for a in (0.0, alpha):
            run = {q.query_id: [ScoredDoc(q.query_id, reader.doc_id(int(d)), float(v))
                                for d, v in zip(r, interpolate(f, m, a))]
                   for q, r, f, m in zip(queries, rows, firsts, mice)}
            res[f"nDCG@10 α={a:g}"] = round(evaluate(run, folder, ["nDCG@10"])["nDCG@10"], 4)
        out[name] = res
    out["kept_token_share"] = round(pruned.kept / max(1, pruned.total), 3)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", type=Path, default=Path("../shared/datasets"))
    p.add_argument("--indexes", type=Path, default=Path("out/beir/indexes"))
    p.add_argument("--collections", default=COLLECTIONS)
    p.add_argument("--depth", type=int, default=100)
    p.add_argument("--batch", type=int, default=16, help="queries per scorer call (as search_many)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="base,int8,bf16,prune,prune+int8,prune+bf16")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/latency_quality.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = {}
    for name in args.collections.split(","):
        report[name] = run_collection(args.datasets / name, args.indexes / f"{name}-fp16", args.depth, args.batch,
                                      args.variants.split(","))
        print(name, json.dumps(report[name]), flush=True)
    variants = [k for k in report[next(iter(report))] if k != "kept_token_share"]
    report["average"] = {v: {m: round(float(np.mean([report[c][v][m] for c in args.collections.split(",")])), 4)
                             for m in report[next(iter(report))][v]} for v in variants}
    print("average", json.dumps(report["average"]))
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
