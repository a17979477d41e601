"""Names of the pipeline's choices, importable without numpy or torch (the CLI's help text uses
them; tests/test_serve.py checks they equal the registries they mirror), and the checks of the
search options that use nothing else, so that the CLI refuses a bad option before it imports torch."""

from mice_index.errors import SearchError

CANDIDATES = ("bm25", "dense", "hybrid")  # first-stage candidate generators (search.py)
RERANKERS = ("mice", "none")
QUANTIZE = ("auto", "none", "int8")
AGGREGATES = ("maxp", "firstp", "sump")  # = mice_index.aggregate.AGGREGATIONS (passage indexes)
DENSE_KINDS = ("auto", "flat", "hnsw", "ivf", "ivfpq")  # = candidates.dense.DenseKind  # MICE interaction layers (scorer.ScorerConfig.quantize)
CODEC_NAMES = ("fp16", "fp32", "int8", "int8-dim", "opq", "opq32", "pq", "pq32", "rq", "rq26", "rq32",
               "compact")  # = mice_index.codec.codec_names()


def check_search_options(candidates: str, rerank: str, depth: int | None = None, alpha: float | None = None,
                         aggregate: str = "maxp") -> None:
    """SearchError naming the option for an unknown candidate generator, re-ranker or passage
    aggregation, a depth below 1 or an alpha outside [0, 1] (SearchConfig runs the same checks)."""
    if candidates not in CANDIDATES:
        raise SearchError(f"unknown candidate generator {candidates!r}; choose one of {', '.join(CANDIDATES)}")
    if rerank not in RERANKERS:
        raise SearchError(f"unknown re-ranker {rerank!r}; choose one of {', '.join(RERANKERS)}")
    if aggregate not in AGGREGATES:
        raise SearchError(f"unknown --aggregate {aggregate!r}; choose one of {', '.join(AGGREGATES)}")
    if depth is not None:
        check_positive("--depth", depth)
    if alpha is not None and not 0.0 <= alpha <= 1.0:
        raise SearchError(f"--alpha must be in [0, 1], got {alpha}")


def check_positive(option: str, value) -> None:
    """SearchError "<option> must be positive, got <value>" for anything but an int >= 1."""
    if isinstance(value, bool) or not hasattr(value, "__index__") or value <= 0:
        raise SearchError(f"{option} must be positive, got {value!r}")
