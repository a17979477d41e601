"""Document-token pruning, decided at build time: which layer-ℓ* states of a document are stored.

    keep = TokenPruner(tokenizer, "stopwords").keep(ids)   # bool [T], ids = [CLS] ... [SEP]

Rules (`BuildConfig.prune`, recorded in the manifest's settings):
    "none"       every token's state is stored: the paper's form, and scores equal the text path.
    "stopwords"  the states of punctuation tokens and of English stopwords (Lucene's list, as
                 shipped by bm25s: "a", "the", "of", ...) are dropped after the bottom layers.

Pruning happens *after* the bottom, so the kept tokens' states are exactly the unpruned ones: the
document still reads its stopwords in the bottom layers; only the interaction layers (cross-
attention keys/values, MaxSim) no longer see them. That cuts stored bytes, reads and the
cross-attention cost in proportion; the quality effect is measured on the dev collections
(BENCHMARKS.md, Latency). The same idea for late interaction: Lassance et al., "A Study on Token
Pruning for ColBERT" (2021); ColBERT itself masks punctuation in documents (Khattab & Zaharia,
SIGIR 2020, §3.2).

[CLS] (first) and [SEP] (last) are always kept (MaxSim and the masks rely on them), and so is a
stopword-looking piece that starts a longer word (WordPiece: the next token is a "##" piece).
Only WordPiece vocabularies (the BERT family) are supported.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence

import numpy as np

from mice_index.errors import MiceIndexError

__all__ = ["PRUNE_RULES", "TokenPruner"]

PRUNE_RULES = ("none", "stopwords")


def _punctuation(token: str) -> bool:
    return bool(token) and all(unicodedata.category(c)[0] in "PS" for c in token)


class TokenPruner:
    """Keep-masks of token id sequences under one rule (see the module docstring)."""

    def __init__(self, tokenizer, rule: str = "none"):
        if rule not in PRUNE_RULES:
            raise MiceIndexError(f"--prune must be one of {', '.join(PRUNE_RULES)}, got {rule!r}")
        self.rule = rule
        self.drop = np.zeros(0, dtype=bool)
        self.piece = np.zeros(0, dtype=bool)
        if rule == "stopwords":
            from bm25s.stopwords import STOPWORDS_EN

            vocab = tokenizer.get_vocab()
            size = max(vocab.values()) + 1
            self.drop = np.zeros(size, dtype=bool)
            self.piece = np.zeros(size, dtype=bool)
            stop = set(STOPWORDS_EN)
            for token, i in vocab.items():
                self.piece[i] = token.startswith("##")
                self.drop[i] = _punctuation(token) or token in stop
            for special in tokenizer.all_special_ids:
                self.drop[special] = False

    @property
    def active(self) -> bool:
        return self.rule != "none"

    def keep(self, ids: Sequence[int]) -> np.ndarray:
        """Token ids [T] ([CLS] ... [SEP]) -> bool [T], True for the states to store."""
        ids = np.asarray(ids, dtype=np.int64)
        if not self.active or ids.size <= 2:
            return np.ones(ids.size, dtype=bool)
        keep = ~self.drop[ids]
        keep[:-1] |= self.piece[ids[1:]]  # the first piece of a longer word stays
        keep[0] = keep[-1] = True
        return keep
