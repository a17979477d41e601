"""Which document words each query word matched: MICE's cross-attention, made visible.

In MICE the query tokens attend to the stored layer-ℓ* document states, so the match between query
words and document words is part of the scoring itself. For one query and its top hits this module
recomputes, with the reference layers of `mice_index/model.py` (`Interaction`), the
cross-attention probabilities of every query token over the document tokens, averages them over
heads and over the interaction layers whose cross-attention reaches the score (all but the last:
the last layer's [CLS] never reads the document; a one-layer model has only that one), and maps
tokens back to words of the stored text:

    explainer = Explainer(searcher.model, searcher.reader)
    for hit, ex in zip(hits, explainer.explain(query, hits)):
        print(hit.doc_id, [(m.query_word, [w.word for w in m.words]) for m in ex.matches])

A document word's weight is the attention mass its word pieces received (all its occurrences,
case-folded, together), averaged over the query word's own pieces (0..1). Special tokens,
punctuation and stopwords (the BM25 stage's English list) take part in the softmax but are never
listed: much of the mass goes to such "no-op" targets, the document's [CLS] above all. Scores are not
touched: this runs after search, on its own copy of nothing but the model's weights.

A model with the "cls+maxsim" score head is explained by its late-interaction term instead: each
query token is matched to the document token of highest (learned) cosine, exactly the max that
enters its score (`maxsim_matches`); a document word's weight is then the share of the query
word's pieces whose best match it is. A best match whose cosine is below MIN_SIMILARITY (0.5) is
not shown: a query word that occurs nowhere in the document (or gibberish) then has no match
instead of a confident-looking one. Measured on 40 cranfield documents with the shipped model: a
query word's best cosine was 0.58-0.79 where the word occurs, at most 0.48 for unrelated words
and stopwords ("kittens playing piano", "the of and"). Its cross-attention feeds only the [CLS] head and, trained
next to a lexical MaxSim term, is rarely lexical itself (measured: an exact occurrence of a query
word was among that word's top-3 attended words in 3% of one-word probes, against 47% for the
paper-head model).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from bm25s.stopwords import STOPWORDS_EN

from mice_index.model import (Attention, Interaction, LateInteraction, MiceModel, inner_tokens,
                              pad_states)
from mice_index.prune import TokenPruner

STOPWORDS = frozenset(STOPWORDS_EN)  # the BM25 stage's English list (Lucene's)
HIGHLIGHT_BEST = 2  # document words highlighted per query word in snippets
MIN_SIMILARITY = 0.5  # cls+maxsim: best matches below this cosine are not shown (module docstring)

__all__ = ["Explainer", "Explanation", "QueryWordMatch", "WordMatch", "cross_attention", "highlight_snippet", "hit_record",
           "maxsim_matches"]


@dataclass(frozen=True)
class WordMatch:
    word: str  # as first written in the document
    weight: float  # attention mass (0..1) the query word gave all occurrences of this word
    spans: list[tuple[int, int]]  # character offsets of its occurrences in Explanation.text


@dataclass(frozen=True)
class QueryWordMatch:
    query_word: str
    words: list[WordMatch]  # the document words it attended to most, best first


@dataclass(frozen=True)
class Explanation:
    text: str  # the document as it was encoded: title + " " + text (untruncated)
    matches: list[QueryWordMatch]  # one per query content word, in query order

    def spans(self, best: int | None = None) -> list[tuple[int, int]]:
        """Sorted, merged character spans of the listed document words (each query word's `best`
        first ones; None: all), for highlighting."""
        return _merge(sorted({tuple(sp) for m in self.matches for w in m.words[:best] for sp in w.spans}))


def attention_probs(attn: Attention, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The softmax weights inside `attn(x, kv, mask)`: x [B,Tx,D], kv [B,Tkv,D], additive mask
    broadcastable to [B,H,Tx,Tkv] -> [B,H,Tx,Tkv]."""
    q, k = attn._heads(attn.query(x)), attn._heads(attn.key(kv))
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + mask, dim=-1)


@torch.inference_mode()
def cross_attention(inter: Interaction, q: torch.Tensor, q_mask: torch.Tensor, docs: torch.Tensor,
                    d_mask: torch.Tensor) -> torch.Tensor:
    """Query-token -> document-token cross-attention, averaged over heads and over the interaction
    layers whose cross-attention reaches the score: q [B,Tq,D] layer-ℓ* query states (mask
    [B,Tq]), docs [B,Td,D] (mask [B,Td]) -> float32 [B,Tq,Td]; each row sums to 1 over the
    document's tokens (row 0, the [CLS], takes no part in cross-attention and is meaningless)."""
    self_mask, cross_mask = inter.masks(q_mask, d_mask, q.dtype)
    docs = docs.to(q.dtype)
    cfg = inter.config
    if not cfg.is_paper_form:  # every layer's cross-attention reaches the score
        total = torch.zeros(q.shape[0], q.shape[1], docs.shape[1])
        for layer in inter.layers:
            total += layer.cross_probs(q, self_mask, docs, cross_mask, cfg.cross_attn_first).float().mean(1).cpu()
            q = layer(q, self_mask, docs, cross_mask, cfg.cls_cross_attention, cfg.cross_attn_first)
        return total / len(inter.layers)
    layers = list(inter.layers[:-1]) or list(inter.layers)
    total = torch.zeros(q.shape[0], q.shape[1], docs.shape[1])
    for layer in layers:
        x = layer.self_attn(q, q, self_mask)
        total += attention_probs(layer.cross_attn, x, docs, cross_mask).float().mean(1).cpu()
        q = layer(q, self_mask, docs, cross_mask)  # the layer as scoring runs it
    return total / len(layers)


@torch.inference_mode()
def maxsim_matches(late: LateInteraction, q: torch.Tensor, q_mask: torch.Tensor, docs: torch.Tensor,
                   d_mask: torch.Tensor, min_similarity: float = MIN_SIMILARITY) -> torch.Tensor:
    """The late-interaction term's choices: q [B,Tq,D] layer-ℓ* query states (mask [B,Tq]), docs
    [B,Td,D] (mask [B,Td]) -> float32 [B,Tq,Td], 1 at the document token (between [CLS] and [SEP])
    whose cosine with the projected query token is the max in the score, 0 elsewhere, and 0 for
    the whole row where that max cosine is below `min_similarity`."""
    qn, _ = late.query(q, q_mask)
    sim = qn @ torch.nn.functional.normalize(docs.to(qn.dtype), dim=-1).transpose(1, 2)
    inner = inner_tokens(d_mask)
    top, best = sim.masked_fill(~inner[:, None, :], -2.0).max(-1)  # [B,Tq]
    out = torch.zeros(sim.shape, dtype=torch.float32)
    out.scatter_(2, best[..., None].cpu(), (top >= min_similarity)[..., None].float().cpu())
    return out * inner.any(1)[:, None, None].float().cpu()


class Explainer:
    """Explains hits of one index with the model that scores it (`Searcher.model`)."""

    def __init__(self, model: MiceModel, reader, top: int = 3):
        self.model, self.reader, self.top = model, reader, top
        self.max_doc_length = int(reader.manifest.settings.max_doc_length)
        self.pruner = TokenPruner(model.tokenizer, reader.manifest.settings.prune)

    def explain(self, query: str, hits: Sequence) -> list[Explanation]:
        """One query and its hits (anything with `.row`, `.title`, `.text`, e.g. search.Hit) -> one
        Explanation per hit, from the index's stored states (what the scorer read)."""
        if not hits:
            return []
        m, tok = self.model, self.model.tokenizer
        q_enc = tok([query], truncation=True, max_length=m.config.max_query_length, return_offsets_mapping=True)
        q_words = [(w, pieces) for w, _, _, pieces in _words(q_enc, 0, query)]
        q_words = [(w, p) for w, p in q_words if _is_content(w)] or q_words  # only stopwords: keep them
        texts = [m.format_document(h.title, h.text) for h in hits]
        d_enc = tok(texts, truncation=True, max_length=self.max_doc_length, return_offsets_mapping=True)
        states = self.reader.get_states([h.row for h in hits])
        kept = [np.nonzero(self.pruner.keep(ids))[0] for ids in d_enc["input_ids"]]  # stored token positions
        for s, k in zip(states, kept):
            assert s.shape[0] == k.size, "stored states do not match the tokenised text"
        dtype = next(m.interaction.parameters()).dtype
        docs, d_mask = pad_states([torch.from_numpy(s).to(m.device, dtype) for s in states])
        q_states, q_mask = m.encode_queries([query])
        B = len(hits)
        q_states, q_mask = q_states.expand(B, -1, -1).to(dtype), q_mask.expand(B, -1)
        if m.interaction.late is not None:  # cls+maxsim: the MaxSim term carries the matching
            attn = maxsim_matches(m.interaction.late, q_states, q_mask, docs, d_mask).numpy()  # [B,Tq,Td]
        else:
            attn = cross_attention(m.interaction, q_states, q_mask, docs, d_mask).numpy()
        if self.pruner.active:  # map stored tokens back to text positions; pruned ones were never read
            full = np.zeros((*attn.shape[:2], max(len(ids) for ids in d_enc["input_ids"])), attn.dtype)
            for i, k in enumerate(kept):
                full[i][:, k] = attn[i, :, : k.size]
            attn = full
        out = []
        for i, text in enumerate(texts):
            forms = _content_words(_words(d_enc, i, text))  # {lowercase form: (surface, spans, pieces)}
            matches = []
            for q_word, q_pieces in q_words:
                rows = attn[i, q_pieces].mean(0)  # [Td] mass per document token
                mass = {f: float(rows[pieces].sum()) for f, (_, _, pieces) in forms.items()}
                best = [f for f in sorted(mass, key=lambda f: -mass[f])[: self.top] if mass[f] > 0]  # MaxSim: 0 = unmatched
                matches.append(QueryWordMatch(q_word, [
                    WordMatch(forms[f][0], round(mass[f], 4), forms[f][1]) for f in best]))
            out.append(Explanation(text, matches))
        return out


def _words(enc, i: int, text: str) -> list[tuple[str, int, int, list[int]]]:
    """Word pieces of encoding `i` grouped into words: [(word, start, end, token positions)],
    special tokens left out."""
    groups: dict[int, list[int]] = {}
    for t, w in enumerate(enc.word_ids(i)):
        if w is not None:
            groups.setdefault(w, []).append(t)
    offsets = enc["offset_mapping"][i]
    out = []
    for pieces in groups.values():
        start, end = offsets[pieces[0]][0], offsets[pieces[-1]][1]
        out.append((text[start:end], start, end, pieces))
    return out


def _is_content(word: str) -> bool:
    return any(c.isalnum() for c in word) and word.lower() not in STOPWORDS


def _content_words(words) -> dict[str, tuple[str, list[tuple[int, int]], list[int]]]:
    """Words that carry content (not punctuation, not a BM25 stopword), occurrences of one
    lowercase form together -> {form: (first surface form, spans, token positions)}."""
    forms: dict[str, tuple[str, list[tuple[int, int]], list[int]]] = {}
    for word, start, end, pieces in words:
        if _is_content(word):
            surface, spans, tokens = forms.setdefault(word.lower(), (word, [], []))
            spans.append((start, end))
            tokens.extend(pieces)
    return forms


def _merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in spans:
        if out and a <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out


def highlight_snippet(text: str, spans: Sequence[tuple[int, int]] = (), width: int = 200) -> tuple[str, list[tuple[int, int]]]:
    """A whitespace-normalised window of `text`, at most `width` characters with "…" marking cuts,
    that starts at the text's start or shortly before the first span -> (snippet, the spans inside
    it, mapped to snippet offsets)."""
    chars: list[str] = []
    where: list[int] = []  # offset in `text` of each kept character
    for j, c in enumerate(text):
        if not c.isspace():
            chars.append(c), where.append(j)
        elif chars and chars[-1] != " ":
            chars.append(" "), where.append(j)
    while chars and chars[-1] == " ":
        chars.pop(), where.pop()
    flat = "".join(chars)
    mapped = [(bisect_left(where, a), bisect_left(where, b)) for a, b in spans]
    mapped = [(a, b) for a, b in mapped if b > a]
    if len(flat) <= width:
        return flat, mapped
    start = 0
    if mapped and mapped[0][1] > width - 1:  # first span not in the opening window: move there
        start = min(mapped[0][0] - width // 4, len(flat) - (width - 1))
        space = flat.rfind(" ", 0, start + 1)  # begin at a word boundary when one is near
        start = space + 1 if 0 <= start - space < 20 else start
    lead = "…" if start > 0 else ""
    end = start + width - len(lead)
    tail = ""
    if end < len(flat):
        end, tail = end - 1, "…"
    shift = len(lead) - start
    inside = [(max(a, start) + shift, min(b, end) + shift) for a, b in mapped if b > start and a < end]
    return lead + flat[start:end] + tail, inside


def hit_record(hit, explanation: Explanation | None = None, width: int = 200) -> dict:
    """A search.Hit as a JSON-able record (`mice-index search --json` and the server share it):
    rank, doc_id, score, title, snippet (of the text, without the title); with an explanation also
    `highlights` ([start, end) offsets in the snippet of each query word's HIGHLIGHT_BEST best matches) and `matches` (query word -> the
    document words it attended to most, weights and their offsets in the document text)."""
    # the snippet is cut from the text alone (the title is its own field, shown apart): spans are
    # offsets in title + " " + text, so they move left by the title's length and those inside the
    # title are left out
    body = len(hit.title) + 1 if hit.title else 0
    spans = explanation.spans(best=HIGHLIGHT_BEST) if explanation is not None else []
    spans = [(a - body, b - body) for a, b in spans if a >= body]
    snippet, marks = highlight_snippet(hit.text, spans, width)
    record = {"rank": hit.rank, "doc_id": hit.doc_id, "score": round(float(hit.score), 6),
              "title": hit.title, "snippet": snippet}
    if explanation is not None:
        record["highlights"] = [list(m) for m in marks]
        record["matches"] = [{"query_word": m.query_word,
                              "words": [{"word": w.word, "weight": w.weight, "spans": [list(s) for s in w.spans]}
                                        for w in m.words]} for m in explanation.matches]
    return record
