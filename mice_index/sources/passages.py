"""Long documents as passages: sliding windows of W tokens with stride S (`build --passages W,S`).

A document longer than the model's document length is cut by the encoder, so anything past its
first page can never be found. With passages each document is split into overlapping windows of
its text's tokens and each window is indexed as its own store row (own states, BM25 and dense
entries), linked to its document by `doc_id` and numbered from 0; a search then ranks documents by
aggregating their passages' scores (`mice_index.aggregate`: MaxP, FirstP, SumP).

Following Dai & Callan (2019), "Deeper Text Understanding for IR with Contextual Neural Language
Modeling" (SIGIR), the document's title goes with every passage (`Passage.title` = the
document's title; the encoder formats each passage as `title text` like any document). W and S
count tokens of the text alone (the model's tokenizer, special tokens excluded); the title's
tokens come on top, so a long title can make a passage longer than the model's document length,
which the encoder then cuts like any document (counted in the index's `truncated_docs`).

Windows are cut at token boundaries with the tokenizer's character offsets, so a passage's text is
a substring of the document's (`text[char_start:char_end]`), and at *word* starts (the first token
of a pre-tokenizer word, BERT's split at whitespace and punctuation; not a continuation piece such
as "##ing"): a window starting at token i covers at most W tokens, ending before the last word
start that keeps it within W tokens; the next window starts at the last word start in (i, i + S],
or where there is none (a word longer than S) at the first word start after i + S (never after the
window's end, so no text is skipped). Tokenizing a passage's text again therefore gives exactly
its window's tokens (tested), which is what makes the stored states equal the model's text path. A single word longer than W tokens is the one case cut inside a word. Windows stop at
the first one that reaches the end of the text, so the last passage may be shorter than W; a text
of at most W tokens (and an empty text) is one passage, the whole text.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from mice_index.errors import MiceIndexError
from mice_index.sources.records import Document

__all__ = ["PASSAGE_CHUNK", "Passage", "check_passages", "parse_passages", "split_documents", "store_rows", "windows"]

PASSAGE_CHUNK = 64  # documents tokenized per tokenizer call while splitting


@dataclass(frozen=True, slots=True)
class Passage(Document):
    """One window of a document: `doc_id`, `title` and `fields` are the document's, `text` is
    `document.text[char_start:char_end]`; `passage` numbers the document's passages from 0."""

    passage: int = 0
    char_start: int = 0
    char_end: int = 0


def parse_passages(value: str, option: str = "--passages") -> tuple[int, int]:
    """"W,S" -> (W, S) checked by `check_passages` (without the model's limit); MiceIndexError
    naming the option for anything else (e.g. "128", "a,b", "128,64,1")."""
    parts = [p.strip() for p in str(value).split(",")]
    if len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts):
        raise MiceIndexError(f"{option} must be W,S (window and stride in tokens, e.g. 128,64), got {value!r}")
    window, stride = int(parts[0]), int(parts[1])
    check_passages(window, stride, option=option)
    return window, stride


def check_passages(window: int, stride: int, max_tokens: int | None = None, option: str = "--passages") -> None:
    """MiceIndexError naming the option unless 1 <= stride <= window (a larger stride would skip
    text) and, when `max_tokens` (the model's document length minus its two special tokens) is
    given, window <= max_tokens."""
    for name, v in (("window", window), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise MiceIndexError(f"{option}: the {name} must be an integer >= 1, got {v!r}")
    if stride > window:
        raise MiceIndexError(f"{option}: the stride ({stride}) is larger than the window ({window}); the text "
                             "between windows would never be indexed")
    if max_tokens is not None and window > max_tokens:
        raise MiceIndexError(f"{option}: the window ({window} tokens) is larger than this model allows "
                             f"({max_tokens} = its document length minus [CLS] and [SEP]); use a window <= "
                             f"{max_tokens} or a larger --max-doc-length")


def windows(starts: list[bool], window: int, stride: int) -> list[tuple[int, int]]:
    """Token windows [a, b) over a text whose tokens are flagged `starts[i]` (token i begins a
    word), cut at word starts as the module docstring says. [] for a text of no tokens."""
    n = len(starts)
    if n <= window:
        return [(0, n)] if n else []
    out = []
    a = 0
    while True:
        if n - a <= window:
            out.append((a, n))
            return out
        b = a + window
        while b > a + 1 and not starts[b]:  # end before the word that would not fit
            b -= 1
        if b == a + 1 and not starts[b]:
            b = a + window  # one word longer than the window: cut inside it
        out.append((a, b))
        nxt = a + stride
        while nxt > a and not starts[nxt]:  # the last word start within the stride ...
            nxt -= 1
        if nxt == a:  # ... else the first one after it (never past this window's end: no gap)
            nxt = a + stride
            while nxt < b and not starts[nxt]:
                nxt += 1
        a = nxt


def split_documents(docs: Iterable[Document], tokenizer, window: int, stride: int) -> Iterator[Passage]:
    """Each document as its passages (in order), documents in the order given. `tokenizer`: the
    model's (a `FastTokenizer` or a transformers fast tokenizer: offsets and word ids are needed).
    Texts are tokenized whole, without special tokens."""
    docs = iter(docs)
    while True:
        chunk = []
        for d in docs:
            chunk.append(d)
            if len(chunk) >= PASSAGE_CHUNK:
                break
        if not chunk:
            return
        enc = tokenizer([d.text for d in chunk], add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False, return_token_type_ids=False)
        for i, d in enumerate(chunk):
            offsets, words = enc["offset_mapping"][i], enc.word_ids(i)
            starts = [j == 0 or words[j] != words[j - 1] for j in range(len(words))]
            spans = windows(starts, window, stride)
            if not spans:  # no tokens (empty or whitespace-only text): the document as one passage
                spans, offsets = [(0, 1)], [(0, len(d.text))]
            for p, (a, b) in enumerate(spans):
                s, e = offsets[a][0], offsets[b - 1][1]
                yield Passage(doc_id=d.doc_id, text=d.text[s:e], title=d.title, fields=d.fields, passage=p,
                              char_start=s, char_end=e)
        if len(chunk) < PASSAGE_CHUNK:
            return


def store_rows(docs: Iterable[Document], tokenizer, passages: tuple[int, int] | None) -> Iterable[Document]:
    """What an index stores for `docs`: the documents themselves (`passages` None) or their
    passages (`split_documents` with (window, stride)). Every writer of store rows (build, and a
    later add to an index) goes through here, so the rows follow the index's recorded setting."""
    if passages is None:
        return docs
    return split_documents(docs, tokenizer, *passages)
