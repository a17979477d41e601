"""A synthetic corpus for benchmarks/scale.py: texts with a realistic word distribution and an
encoder that produces codec columns and dense vectors of the right shape without the model.

Vocabulary (`Vocab`, deterministic in `seed`): the 33 bm25s English stopwords as the most frequent
words, then `vocab_size` pronounceable pseudo-words (shorter ones more frequent), Zipf-Mandelbrot
frequencies p(r) ~ 1/(r + 2.7)^1.07 over the global rank r. Each word has a home topic (one of
`topics`); a document draws one topic and takes `topic_frac` of its words from that topic's own
Zipf over its home words, the rest from the global Zipf. A further `rare_frac` of the tokens are
rare alphanumeric words (`q<hex>`, drawn uniformly from `rare_space`): they make the BM25
vocabulary grow with the corpus as real vocabularies do (Heaps' law; ~0.8M distinct terms at 1M
documents with the defaults, MS MARCO's 8.8M passages have ~2.7M).

Lengths: words per document ~ log-normal (sigma 0.5) with mean `mean_tokens - 2`, clipped to
1..max_doc_length-2: one word = one token ([CLS] and [SEP] added), so nothing is truncated.

States: every word w has a unit vector v_w = normalise(0.6·c_topic(w) + 0.8·g_w) (c: topic
centres, g: random); its layer-ℓ* state is 4·v_w + N(0, 0.25²) noise (the same at every
occurrence: 384-d states like the model's), encoded ONCE per word with the index's codec and
gathered per token. Dense vector of a document = normalise(mean of its words' v_w): clusters by
topic, so an approximate index's recall@100 against flat is measured on realistic structure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import scipy.sparse as sp

from mice_index.encoder import EncodedWindow
from mice_index.sources import Document

DIM = 384
STOPWORDS = ("a an and are as at be but by for if in into is it no not of on or such that the their then there "
             "these they this to was will with").split()
_CONS, _VOWELS = "bcdfghjklmnprstvz", "aeiou"


class Vocab:
    """Words, their sampling distributions and vectors (all derived from `seed`)."""

    def __init__(self, vocab_size: int = 50_000, topics: int = 100, topic_frac: float = 0.4,
                 rare_frac: float = 0.01, rare_space: int = 5_000_000, seed: int = 0, dim: int = DIM):
        rng = np.random.default_rng([seed, 1])
        self.dim = dim
        self.topics, self.topic_frac, self.rare_frac, self.rare_space = topics, topic_frac, rare_frac, rare_space
        syl = [c + v for c in _CONS for v in _VOWELS]
        words: set[str] = set()
        while len(words) < vocab_size:  # shorter words first (more frequent, as in real text)
            n = 1 + min(3, int(rng.exponential(1.3)))
            w = "".join(syl[i] for i in rng.integers(len(syl), size=n))
            if w not in STOPWORDS:
                words.add(w)
        pseudo = sorted(words, key=lambda w: (len(w), w))
        rng.shuffle(stops := list(STOPWORDS))
        self.words = np.array(stops + pseudo, dtype=object)  # index = global rank = word id
        self.index = {w: i for i, w in enumerate(self.words)}
        V = self.size = len(self.words)
        p = 1.0 / (np.arange(V) + 2.7) ** 1.07
        self.global_cdf = np.cumsum(p / p.sum())
        home = rng.integers(topics, size=V)
        home[: len(STOPWORDS)] = -1  # stopwords belong to no topic
        self.topic_words = [np.flatnonzero(home == t) for t in range(topics)]  # in global-rank order
        width = min(len(t) for t in self.topic_words)
        self.topic_words = np.stack([t[:width] for t in self.topic_words])  # [topics, width]
        q = 1.0 / (np.arange(width) + 2.7) ** 1.07
        self.topic_cdf = np.cumsum(q / q.sum())
        centres = _unit(rng.standard_normal((topics, dim)))
        g = _unit(rng.standard_normal((V + 2, dim)))  # + [CLS], [SEP]
        c = np.zeros((V + 2, dim))
        c[:V][home >= 0] = centres[home[home >= 0]]
        self.vectors = _unit(0.6 * c + 0.8 * g).astype(np.float32)  # [V + 2, D]
        self.states = (4 * self.vectors + 0.25 * rng.standard_normal(self.vectors.shape)).astype(np.float32)
        self.cls, self.sep = V, V + 1

    def table_bytes(self) -> int:
        return int(self.vectors.nbytes + self.states.nbytes + self.global_cdf.nbytes + self.topic_words.nbytes)

    def draw(self, rng: np.random.Generator, topic: np.ndarray) -> np.ndarray:
        """Word ids (global vocabulary) for tokens whose documents have topic `topic` [n] -> [n];
        rare words are returned as -1 - r (r: index in the rare space)."""
        u = rng.random(topic.size)
        ids = np.searchsorted(self.global_cdf, rng.random(topic.size)).clip(0, self.size - 1)
        t = u < self.topic_frac
        ranks = np.searchsorted(self.topic_cdf, rng.random(int(t.sum()))).clip(0, self.topic_cdf.size - 1)
        ids[t] = self.topic_words[topic[t], ranks]
        rare = u > 1 - self.rare_frac
        ids[rare] = -1 - rng.integers(self.rare_space, size=int(rare.sum()))
        return ids

    def text(self, ids: np.ndarray) -> str:
        return " ".join(self.words[i] if i >= 0 else f"q{-1 - i:x}" for i in ids.tolist())

    def word_ids(self, text: str) -> list[int]:
        """The state row of each word of `text` (rare words share the rows of ordinary ones)."""
        get = self.index.get
        return [i if (i := get(w)) is not None else int(w[1:], 16) % self.size for w in text.split()]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def documents(vocab: Vocab, n: int, mean_tokens: float, max_len: int, seed: int = 0,
              chunk: int = 10_000) -> Iterator[tuple[str, str, int]]:
    """(doc_id, text, topic) for rows 0..n-1, generated `chunk` documents at a time."""
    mean_words = max(1.0, mean_tokens - 2)
    sigma = 0.5
    mu = np.log(mean_words) - sigma**2 / 2  # log-normal with mean `mean_words`
    for c0 in range(0, n, chunk):
        rng = np.random.default_rng([seed, 2, c0])
        m = min(chunk, n - c0)
        lengths = np.clip(np.rint(rng.lognormal(mu, sigma, m)), 1, max_len - 2).astype(np.int64)
        topic = rng.integers(vocab.topics, size=m)
        ids = vocab.draw(rng, np.repeat(topic, lengths))
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        for j in range(m):
            yield f"d{c0 + j}", vocab.text(ids[bounds[j]: bounds[j + 1]]), int(topic[j])


def queries(vocab: Vocab, n: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """n queries of 2-5 words from a random topic (topic-only draws, no stopwords): (text, dense
    vector from the same word vectors as the documents' [D])."""
    rng = np.random.default_rng([seed, 3])
    out = []
    for _ in range(n):
        t = int(rng.integers(vocab.topics))
        ranks = np.searchsorted(vocab.topic_cdf, rng.random(int(rng.integers(2, 6)))).clip(0, vocab.topic_cdf.size - 1)
        ids = vocab.topic_words[t, ranks]
        out.append((vocab.text(ids), _unit(vocab.vectors[ids].mean(0)).astype(np.float32)))
    return out


class SyntheticEncoder:
    """Stands in for `DocumentEncoder` in `build_index(..., encoder_factory=...)`: windows of
    `window_docs` documents (never crossing a shard boundary). Before `bind_codec` it yields float32
    states (for the codec fit); after, the codec columns of each word, encoded once per word."""

    def __init__(self, vocab: Vocab, config, dense: bool = True):
        self.vocab, self.config = vocab, config
        self.dense_dim = vocab.dim if dense else None
        self.parts: dict[str, np.ndarray] | None = None

    def bind_codec(self, codec) -> None:
        self.parts = codec.encode(self.vocab.states)  # {column: [V + 2, width]}

    def _window(self, start: int, docs: list[Document]) -> EncodedWindow:
        v, L = self.vocab, self.config.max_doc_length
        rows = [[v.cls, *v.word_ids(d.text)[: L - 2], v.sep] for d in docs]
        lengths = np.array([len(r) for r in rows], np.int32)
        tok = np.fromiter((i for r in rows for i in r), np.int64, int(lengths.sum()))
        dense = None
        if self.dense_dim:
            indptr = np.concatenate([[0], np.cumsum(lengths)])
            words = (tok < v.size).astype(np.float32)  # [CLS] / [SEP] left out of the mean
            counts = sp.csr_matrix((words, tok, indptr), shape=(len(docs), v.size + 2))
            dense = _unit(np.asarray(counts @ v.vectors)).astype(np.float32)
        truncated = np.zeros(len(docs), bool)
        if self.parts is None:
            return EncodedWindow(start, docs, lengths, v.states[tok], dense, truncated)
        return EncodedWindow(start, docs, lengths, None, dense, truncated, {k: a[tok] for k, a in self.parts.items()})

    def windows(self, docs: Iterable[Document], start_row: int = 0, boundary: int | None = None,
                stop_row: int | None = None) -> Iterator[EncodedWindow]:
        docs, row = iter(docs), start_row
        while stop_row is None or row < stop_row:
            n = self.config.window_docs
            if boundary:
                n = min(n, boundary - row % boundary)
            if stop_row is not None:
                n = min(n, stop_row - row)
            batch = [d for _, d in zip(range(n), docs)]
            if not batch:
                return
            yield self._window(row, batch)
            row += len(batch)
