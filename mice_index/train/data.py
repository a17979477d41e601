"""Training examples: queries, candidate lists and teacher scores.

Every route ends in the same `TrainingSet`: corpora (ids + texts, rows 0..N-1) and examples
(query text, corpus, candidate rows, teacher scores; position 0 is the positive / teacher's best).

Routes (see `build_training_set`):
- pseudo-queries generated from each corpus's documents (`pseudo.py`), candidates mined and
  labelled by the ensemble teacher (`ensemble.py`: retrievers over the whole corpus, z-score
  fused; kind "hybrid" = BM25 + dense, the first stage itself) or re-labelled by a cross-encoder;
  the source document is the known positive; optionally some hard negatives are the student's own
  top-ranked documents (`data.student_negatives`);
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
               rng: np.random.Generator, student_top: list[int] = ()) -> tuple[list[int], list[float]] | None:
    """Candidate list: positive (or the best) first, `hard` hard negatives (first the rows of
    `student_top` -- the student's own best-ranked documents, in its order --, then the teacher's
    top-ranked ones), then random others; each with its teacher score."""
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
    at = {int(rows[i]): i for i in others}
    top = list(dict.fromkeys([at[r] for r in student_top if r in at][:hard]))
    top += [i for i in others if i not in set(top)][: hard - len(top)]
    rest = [i for i in others if i not in set(top)]
    n_rand = min(len(rest), size - 1 - len(top))
    rand = sorted(rng.choice(len(rest), size=n_rand, replace=False).tolist()) if n_rand > 0 else []
    picked = [int(where[0]), *top, *(rest[i] for i in rand)]
    return [int(rows[i]) for i in picked], [float(scores[i]) for i in picked]


def teacher_for(cfg: TrainConfig, corpus: Corpus, dense, depth: int, cache_root=None):
    """The configured ensemble (kind 'hybrid': members bm25 + dense) over `corpus`."""
    from mice_index.train.ensemble import FIRST_STAGE, EnsembleTeacher

    t = cfg.teacher
    members, weights = (t.members, t.weights) if t.kind == "ensemble" else (FIRST_STAGE, ())
    return EnsembleTeacher(corpus.texts, members, weights, depth=depth, doc_ids=corpus.doc_ids,
                           doc_embeddings=corpus.states.dense,
                           embed_queries=lambda qs: T.dense_query_embeddings(*dense, qs),
                           cache_root=cache_root, key=corpus.name)


def student_rankings(model, corpus: Corpus, queries: list[str], rows: np.ndarray, batch_pairs: int = 512,
                     block: int = 64) -> list[list[int]]:
    """The student's (the model being trained, before training) ranking of each query's `rows`
    [Q, k] (-1 padded), best first: MICE scores through the inference path (`scorer.fast`)."""
    import torch

    from mice_index.model import pad_states
    from mice_index.scorer.fast import score_pairs

    out: list[list[int]] = []
    was = model.training
    model.eval()
    with torch.inference_mode():
        for a in range(0, len(queries), block):
            q_states, q_mask = model.encode_queries(queries[a:a + block])
            pairs = [(q, int(r)) for q in range(q_states.shape[0]) for r in rows[a + q] if r >= 0]
            scores = []
            for b in range(0, len(pairs), batch_pairs):
                part = pairs[b:b + batch_pairs]
                docs, d_mask = pad_states(corpus.states.tensors([r for _, r in part]))
                scores += score_pairs(model.interaction, q_states, q_mask, torch.tensor([q for q, _ in part]),
                                      docs.to(q_states.dtype), d_mask).float().tolist()
            ranked: list[list[tuple[float, int]]] = [[] for _ in range(q_states.shape[0])]
            for (q, r), v in zip(pairs, scores):
                ranked[q].append((-v, r))
            out += [[r for _, r in sorted(x)] for x in ranked]
    model.train(was)
    return out


def _mine_and_label(cfg: TrainConfig, corpus: Corpus, queries: list[str], positives: list[int | None],
                    kinds: list[str], dense, cross, ci: int, dev_mask: list[bool], student=None,
                    cache_root=None) -> tuple[list, list]:
    d = cfg.data
    teacher = teacher_for(cfg, corpus, dense, min(d.depth, len(corpus.doc_ids)), cache_root)
    fused = teacher.label(queries)
    mine = student is not None and d.student_negatives > 0
    ranked = (student_rankings(student, corpus, queries, fused.rows[:, : d.student_depth]) if mine
              else [[] for _ in queries])
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
            hard = d.hard_negatives
            student_top = [r for r in ranked[qi] if r != pos][: d.student_negatives]
            picked = _pick_list(rows, scores, pos, d.list_size, hard, rng, student_top)
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


def build_training_set(cfg: TrainConfig, model, dense, attach_states, cache_root=None) -> TrainingSet:
    """Build the examples of the configured route. `dense` = (bottom model, DenseTower) giving
    all-MiniLM-L6-v2 query embeddings; `attach_states(corpus)` sets corpus.states (bottom states +
    dense document embeddings), needed for mining before labelling; `cache_root`: where ensemble
    members cache their document representations (None: not cached). With
    `data.student_negatives`, `model` (before training) ranks the teacher's top candidates."""
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
        a, b = _mine_and_label(cfg, corpus, texts, pos, kinds, dense, cross, len(corpora), dev_mask,
                               student=model, cache_root=cache_root)
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
