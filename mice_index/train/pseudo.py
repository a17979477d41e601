"""Pseudo-queries generated from documents (domain adaptation without any real query).

Kinds, mixed with the weights of `PseudoSpec` (deterministic given the seed and the document):
- title:    the document title (when it has at least 2 words; otherwise another kind);
- sentence: one sentence of the text, cropped to at most `max_words` words;
- span:     a random window of 5..max_words//2+5 contiguous words;
- keywords: 3..6 of the document's most distinctive words (tf * idf within its corpus), shuffled.
Only documents are read: evaluation queries and qrels are never touched.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

from mice_index.train.config import PseudoSpec

_WORD = re.compile(r"[A-Za-z][A-Za-z\-]+")
_SENT = re.compile(r"(?<=[.!?])\s+")
_STOP = frozenset("""a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from further had has
have having he her here hers herself him himself his how i if in into is it its itself just me more most my
myself no nor not now of off on once only or other our ours ourselves out over own same she should so some
such than that the their theirs them themselves then there these they this those through to too under until
up very was we were what when where which while who whom why will with would you your yours yourself
yourselves may might must shall upon using used use within without however thus therefore among per via""".split())

KINDS = ("title", "sentence", "span", "keywords")


def _words(text: str) -> list[str]:
    return text.split()


def document_frequencies(texts: list[str]) -> Counter:
    df: Counter = Counter()
    for t in texts:
        df.update({w.lower() for w in _WORD.findall(t)})
    return df


def _title(title: str, text: str, rng, spec, df, n) -> str | None:
    words = _words(title.strip().rstrip(" ."))
    return " ".join(words[: spec.max_words * 2]) if len(words) >= 2 else None


def _sentence(title: str, text: str, rng, spec, df, n) -> str | None:
    sents = [s for s in _SENT.split(text) if len(_words(s)) >= 4]
    if not sents:
        return None
    words = _words(sents[int(rng.integers(len(sents)))])
    if len(words) > spec.max_words:
        start = int(rng.integers(len(words) - spec.max_words + 1))
        words = words[start : start + spec.max_words]
    return " ".join(words).rstrip(" .")


def _span(title: str, text: str, rng, spec, df, n) -> str | None:
    words = _words(text)
    length = int(rng.integers(5, max(6, spec.max_words // 2 + 6)))
    if len(words) < length:
        return None
    start = int(rng.integers(len(words) - length + 1))
    return " ".join(words[start : start + length]).strip(" .,;:")


def _keywords(title: str, text: str, rng, spec, df, n) -> str | None:
    tf = Counter(w.lower() for w in _WORD.findall(f"{title} {text}") if len(w) >= 4 and w.lower() not in _STOP)
    if len(tf) < 3:
        return None
    weight = {w: c * math.log((n + 1) / (df.get(w, 0) + 1)) for w, c in tf.items()}
    top = sorted(weight, key=lambda w: (-weight[w], w))[:12]
    k = int(rng.integers(3, min(6, len(top)) + 1))
    picked = list(rng.choice(top, size=k, replace=False))
    return " ".join(picked)


_MAKERS = {"title": _title, "sentence": _sentence, "span": _span, "keywords": _keywords}


def pseudo_query(title: str, text: str, spec: PseudoSpec, rng: np.random.Generator, df: Counter,
                 num_docs: int) -> tuple[str, str] | None:
    """(kind, query text) for one document, or None if no kind applies (e.g. an empty document)."""
    weights = np.array([max(0.0, float(getattr(spec, k))) for k in KINDS])
    if weights.sum() <= 0:
        return None
    live = np.flatnonzero(weights > 0)
    order = list(rng.choice(live, size=live.size, replace=False, p=weights[live] / weights[live].sum()))
    for i in order:
        q = _MAKERS[KINDS[i]](title, text, rng, spec, df, num_docs)
        if q and len(q) >= 3:
            return KINDS[i], q
    return None
