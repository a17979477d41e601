"""Evaluation of runs against qrels with ir_measures."""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Iterable, Mapping, Sequence

import ir_measures

from mice_index.errors import MiceIndexError
from mice_index.runs.trec import Results, RunError, ScoredDoc, _group, ranked, read_run

log = logging.getLogger(__name__)

METRIC_EXAMPLES = "nDCG@10, R@100, RR@10, AP, P@5, Judged@10"


class MetricError(MiceIndexError):
    """An evaluation measure name that ir_measures does not understand."""


def parse_metrics(names: Sequence[str]) -> list[ir_measures.Measure]:
    if isinstance(names, str):
        names = [names]
    if not names:
        raise MetricError(f"no metrics given (examples: {METRIC_EXAMPLES})")
    measures = []
    for name in names:
        try:
            measures.append(ir_measures.parse_measure(name.strip()))
        except Exception as exc:  # noqa: BLE001 - NameError / ValueError / TypeError from the parser
            raise MetricError(f"unknown metric {name!r} ({exc}); examples: {METRIC_EXAMPLES}") from None
    return measures


def _examples(ids: Iterable[str], n: int = 3) -> str:
    return ", ".join(repr(i) for i in sorted(ids)[:n])


def evaluate(
    run: str | os.PathLike[str] | Results,
    qrels: str | os.PathLike[str] | Iterable[ir_measures.Qrel],
    metrics: Sequence[str],
    *,
    known_doc_ids: Collection[str] | None = None,
) -> dict[str, float]:
    """Aggregate `metrics` (ir_measures names such as "nDCG@10") of `run` against `qrels`.

    `run` is a run file path, a Mapping query_id -> results or an iterable of ScoredDoc; `qrels` a
    source accepted by read_qrels or an iterable of ir_measures.Qrel. Returns {name: value} in the
    order given. Each query's results are ranked by the project's one rule (score descending, equal
    scores by doc id ascending) and handed to ir_measures with scores that state exactly those
    ranks, so every measure (whichever ir_measures backend computes it) reads the same ranking.
    Averages follow ir_measures: over all judged queries, a judged query without results counting
    as 0 (logged as a warning); run queries without judgements are ignored. Raises MetricError for
    an unknown name, RunError if run and qrels share no query id, or if `known_doc_ids` is given
    and the run names documents outside it.
    """
    names = [metrics] if isinstance(metrics, str) else [str(m).strip() for m in metrics]
    measures = parse_metrics(names)
    if isinstance(run, (str, os.PathLike)):
        run = read_run(run)
    grouped: Mapping[str, list[ScoredDoc]] = _group(run)
    if isinstance(qrels, (str, os.PathLike)):
        from mice_index.sources import read_qrels

        qrels = read_qrels(qrels)
    qrels = list(qrels)

    if not grouped:
        raise RunError("run has no results")
    if known_doc_ids is not None:
        unknown = sorted({sd.doc_id for docs in grouped.values() for sd in docs} - set(known_doc_ids))
        if unknown:
            raise RunError(
                f"run names {len(unknown)} document id(s) not in the corpus, e.g. {_examples(unknown, 5)}"
            )
    run_qids = set(grouped)
    qrel_qids = {q.query_id for q in qrels}
    shared = run_qids & qrel_qids
    if not shared:
        raise RunError(
            f"run and qrels share no query ids (run has {len(run_qids)} queries e.g. "
            f"{_examples(run_qids)}, qrels has {len(qrel_qids)} e.g. {_examples(qrel_qids)})"
        )
    if len(shared) < len(qrel_qids):
        log.warning("%d of %d judged queries have no results in the run; they count as 0",
                    len(qrel_qids - shared), len(qrel_qids))
    if len(shared) < len(run_qids):
        log.info("%d run queries have no judgements and are ignored", len(run_qids - shared))

    # rank-derived scores (n, n-1, ..., 1): no ties left for a backend to break its own way
    flat = [ScoredDoc(sd.query_id, sd.doc_id, float(len(docs) - i))
            for docs in grouped.values() for i, sd in enumerate(ranked(docs))]
    values = ir_measures.calc_aggregate(measures, qrels, flat)
    return {name: float(values[m]) for name, m in zip(names, measures, strict=True)}
