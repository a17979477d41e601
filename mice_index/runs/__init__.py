"""Output stage: TREC run files and their evaluation with ir_measures."""

from __future__ import annotations

from mice_index.runs.metrics import MetricError, evaluate, parse_metrics
from mice_index.runs.trec import RunError, ScoredDoc, read_run, write_run

__all__ = ["MetricError", "RunError", "ScoredDoc", "evaluate", "parse_metrics", "read_run", "write_run"]
