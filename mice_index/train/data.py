"""Training examples: queries, candidate lists and teacher scores.

Every route ends in the same `TrainingSet`: corpora (ids + texts, rows 0..N-1) and examples
(query text, corpus, candidate rows, teacher scores; position 0 is the positive / teacher's best).

Routes (see `build_training_set`):
- pseudo-queries generated from each corpus's documents (`pseudo.py`), candidates mined with the
  project's own first stage (BM25 + dense, z-score fused), labelled by the hybrid teacher (the
  fused scores) or a cross-encoder; the source document is the known positive;
- real queries from a queries file, mined and labelled the same way (no known positive);
- a teacher-scores file (MS MARCO ensemble TSV or JSONL) with query and document texts read from
  local files or irds:.
Dev examples are held out explicitly: for pseudo-queries, whole source documents (their queries
never train); otherwise a seeded fraction of the query ids.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import numpy as np

from mice_index.errors import MiceIndexError
from mice_index.sources import read_documents, read_queries
from mice_index.train import pseudo as pseudo_mod
from mice_index.train import teachers as T
from mice_index.train.config import TrainConfig

log = logging.getLogger(__name__)


class EmptyTrainingSetError(MiceIndexError):
    """No training example could be built from the given inputs."""


@dataclass(frozen=True)
class Example:
    query: str
    corpus: int
    rows: tuple[int, ...]  # candidate rows in that corpus; rows[0] = positive / teacher's best
    teacher: tuple[float, ...]
    relevant: frozenset[int] = frozenset()  # known relevant rows (pseudo-query source), for dev nDCG
    kind: str = ""


@dataclass
class Corpus:
    name: str
    doc_ids: list[str]
    texts: list[str]
    titles: list[str] = field(default_factory=list)
    bodies: list[str] = field(default_factory=list)
    states: object = None  # CorpusStates, attached by the trainer


@dataclass
class TrainingSet:
    corpora: list[Corpus]
    train: list[Example]
    dev: list[Example]

    def summary(self) -> str:
        kinds: dict[str, int] = {}
        for e in self.train:
            kinds[e.kind or "-"] = kinds.get(e.kind or "-", 0) + 1
        return (f"{len(self.train)} training / {len(self.dev)} dev queries over "
                f"{sum(len(c.doc_ids) for c in self.corpora)} documents in {len(self.corpora)} corpora; "
                f"kinds {kinds}")


def _seed(*parts) -> int:
    return zlib.crc32("\0".join(map(str, parts)).encode())


def load_corpus(src: str, model, only: set[str] | None = None) -> Corpus:
    ids, texts, titles, bodies = [], [], [], []
    for d in read_documents(src):
        if only is not None and d.doc_id not in only:
            continue
        ids.append(d.doc_id)
        texts.append(model.format_document(d.title, d.text))
        titles.append(d.title)
        bodies.append(d.text)
    name = str(src).rstrip("/").rsplit("/", 1)[-1].replace(":", "_")
    return Corpus(name, ids, texts, titles, bodies)


def _pick_list(rows: np.ndarray, scores: np.ndarray, positive: int | None, size: int, hard: int,
               rng: np.random.Generator) -> tuple[list[int], list[float]] | None:
    """Candidate list: positive (or the best) first, `hard` top-ranked negatives, random others."""
    ok = rows >= 0
    rows, scores = rows[ok], scores[ok]
    if positive is None:
        if rows.size < 2:
            return None
        positive = int(rows[0])
    where = np.flatnonzero(rows == positive)
    if where.size == 0:
        return None
    others = [i for i in range(rows.size) if rows[i] != positive]
    if len(others) < 1:
        return None
    top = others[:hard]
    rest = others[hard:]
    n_rand = min(len(rest), size - 1 - len(top))
    rand = sorted(rng.choice(len(rest), size=n_rand, replace=False).tolist()) if n_rand > 0 else []
    picked = [int(where[0]), *top, *(rest[i] for i in rand)]
    return [int(rows[i]) for i in picked], [float(scores[i]) for i in picked]


def _mine_and_label(cfg: TrainConfig, corpus: Corpus, queries: list[str], positives: list[int | None],
                    kinds: list[str], dense, cross, ci: int, dev_mask: list[bool]) -> tuple[list, list]:
    d = cfg.data
    teacher = T.HybridTeacher(corpus.texts, corpus.states.dense, depth=min(d.depth, len(corpus.doc_ids)))
    emb = T.dense_query_embeddings(*dense, queries)
    _, _, fused = teacher.mine(queries, emb)
    train, dev = [], []
    for qi, (query, pos) in enumerate(zip(queries, positives)):
        rng = np.random.default_rng(_seed(cfg.train.seed, corpus.name, qi, "list"))
        rows, scores = fused.rows[qi], fused.scores[qi].astype(np.float64)
        if pos is not None and cfg.data.require_source_in_candidates and pos not in rows:
            continue
        if dev_mask[qi]:
            ok = rows >= 0
            r = [int(x) for x in rows[ok][: d.dev_candidates]]
            s = [float(x) for x in scores[ok][: d.dev_candidates]]
            picked = (r, s) if len(r) >= 2 else None
        else:
            picked = _pick_list(rows, scores, pos, d.list_size, d.hard_negatives, rng)
        if picked is None:
            continue
        r, s = picked
        if cross is not None:
            s = cross.score([(query, corpus.texts[x]) for x in r]).tolist()
        if pos is not None and cfg.teacher.positive_bonus:
            s = [v + cfg.teacher.positive_bonus if x == pos else v for x, v in zip(r, s)]
        if pos is None or dev_mask[qi]:  # position 0 = teacher's best
            order = np.argsort(-np.asarray(s), kind="stable")
            r, s = [r[i] for i in order], [s[i] for i in order]
        ex = Example(query, ci, tuple(r), tuple(s), frozenset([pos]) if pos is not None else frozenset(), kinds[qi])
        (dev if dev_mask[qi] else train).append(ex)
    return train, dev


def pseudo_queries(cfg: TrainConfig, corpus: Corpus) -> tuple[list[str], list[int], list[str], list[bool]]:
    """Seeded sample of documents -> one pseudo-query each; the first `dev_queries_per_corpus`
    sampled documents form the dev split."""
    d = cfg.data
    rng = np.random.default_rng(_seed(cfg.train.seed, corpus.name, "sample"))
    n = len(corpus.doc_ids)
    order = rng.permutation(n)
    df = pseudo_mod.document_frequencies(corpus.texts)
    queries, rows, kinds, dev = [], [], [], []
    n_dev = min(d.dev_queries_per_corpus, n // 5)
    for rank, row in enumerate(order[: n_dev + d.max_queries_per_corpus]):
        qrng = np.random.default_rng(_seed(cfg.train.seed, corpus.name, corpus.doc_ids[row], "q"))
        made = pseudo_mod.pseudo_query(corpus.titles[row], corpus.bodies[row], d.pseudo, qrng, df, n)
        if made is None:
            continue
        kinds.append(made[0])
        queries.append(made[1])
        rows.append(int(row))
        dev.append(rank < n_dev)
    return queries, rows, kinds, dev


def _split(ids: list[str], fraction: float, seed: int) -> list[bool]:
    return [(_seed(seed, q, "dev") % 10_000) < fraction * 10_000 for q in ids]


def build_training_set(cfg: TrainConfig, model, dense, attach_states) -> TrainingSet:
    """Build the examples of the configured route. `dense` = (bottom model, DenseTower) giving
    all-MiniLM-L6-v2 query embeddings; `attach_states(corpus)` sets corpus.states (bottom states +
    dense document embeddings), needed for mining before labelling."""
    d, t = cfg.data, cfg.teacher
    if not d.corpora:
        raise EmptyTrainingSetError("no corpora given (data.corpora / --corpus)")
    if t.kind == "file":
        return _from_teacher_file(cfg, model, attach_states)
    cross = T.CrossEncoderTeacher(t.path, t.batch_size) if t.kind == "cross-encoder" else None
    corpora, train, dev = [], [], []
    sources = d.corpora[:1] if d.queries else d.corpora
    for ci, src in enumerate(sources):
        corpus = load_corpus(src, model)
        if not corpus.doc_ids:
            continue
        attach_states(corpus)
        if d.queries:
            qs = list(read_queries(d.queries))
            texts, pos, kinds = [q.text for q in qs], [None] * len(qs), ["query"] * len(qs)
            dev_mask = _split([q.query_id for q in qs], d.dev_fraction, cfg.train.seed)
        else:
            texts, pos, kinds, dev_mask = pseudo_queries(cfg, corpus)
        a, b = _mine_and_label(cfg, corpus, texts, pos, kinds, dense, cross, len(corpora), dev_mask)
        log.info("%s: %d training, %d dev queries", corpus.name, len(a), len(b))
        corpora.append(corpus)
        train += a
        dev += b
    if not train:
        raise EmptyTrainingSetError("the training set is empty: no query produced a candidate list "
                                    "(empty corpora, or queries without any retrieved document)")
    return TrainingSet(corpora, train, dev)


def _from_teacher_file(cfg: TrainConfig, model, attach_states) -> TrainingSet:
    d, t = cfg.data, cfg.teacher
    if not d.queries:
        raise EmptyTrainingSetError("teacher.kind='file' needs data.queries (the queries the file refers to)")
    qids, dids = T.referenced_ids(t.path, t.format)
    queries = {q.query_id: q.text for q in read_queries(d.queries) if q.query_id in qids}
    corpus = load_corpus(d.corpora[0], model, only=dids)
    row = {doc: i for i, doc in enumerate(corpus.doc_ids)}
    grouped: dict[str, list[tuple[list[int], list[float]]]] = {}
    if t.format == "msmarco-tsv":
        for lineno, tr in T.read_msmarco_triplets(t.path):
            T.check_known(t.path, lineno, tr.query_id, (tr.pos_id, tr.neg_id), queries, row)
            grouped.setdefault(tr.query_id, []).append(([row[tr.pos_id], row[tr.neg_id]], [tr.pos_score, tr.neg_score]))
    else:
        per_q: dict[str, dict[int, float]] = {}
        for lineno, q, doc, score in T.read_jsonl_scores(t.path):
            T.check_known(t.path, lineno, q, (doc,), queries, row)
            per_q.setdefault(q, {})[row[doc]] = score
        for q, scored in per_q.items():
            if len(scored) < 2:
                continue
            order = sorted(scored, key=lambda r: (-scored[r], r))
            rng = np.random.default_rng(_seed(cfg.train.seed, q, "list"))
            picked = _pick_list(np.array(order), np.array([scored[r] for r in order]), None,
                                d.list_size, d.hard_negatives, rng)
            if picked:
                grouped.setdefault(q, []).append(picked)
    dev_flags = dict(zip(grouped, _split(list(grouped), d.dev_fraction, cfg.train.seed)))
    train, dev = [], []
    for q, lists in grouped.items():
        for r, s in lists:
            (dev if dev_flags[q] else train).append(Example(queries[q], 0, tuple(r), tuple(s), kind="file"))
    if not train:
        raise EmptyTrainingSetError(f"{t.path}: the training set is empty (no usable query in the teacher file)")
    attach_states(corpus)
    return TrainingSet([corpus], train, dev)
