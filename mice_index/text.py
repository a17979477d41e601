"""Text checks shared by every entry point: Unicode validity and a bound on tokenizer work.

Policy for text that is not valid Unicode: it is **refused**, never repaired. Files are decoded
strictly as UTF-8 (`sources._files.iter_lines`), so what can still slip through is a lone
surrogate: a JSON `\\udc80` escape without its pair, or a command-line argument whose bytes are
not UTF-8 (Python decodes argv with `surrogateescape`, so byte 0xe9 arrives as U+DCE9). Readers
call `check_text` with the file and line; the CLI calls `check_argument` with the option name;
`bounded_texts` / `bounded_token_ids` (the path into every tokenizer) check again for texts built
through the Python API.

Work bound: tokenizing a 20 MB one-line document only to keep its first 256 tokens costs GBs of
memory. `bounded_token_ids` hands the tokenizer a prefix of each long text (cut at ASCII
whitespace, `char_budget(max_tokens)` characters) and widens the prefix (x4, up to MAX_WIDEN x the
budget) only when it gave fewer than `max_tokens` tokens, so the kept token ids are exactly those
of the whole text; the one exception is a text whose first 64 x budget characters (330k for 256
tokens) give fewer tokens than kept, i.e. a run of that many characters that make no tokens
(whitespace, control characters). BERT turns one huge word into one [UNK] however it is cut.
"""

from __future__ import annotations

import re
import unicodedata

from mice_index.errors import MiceIndexError, SourceError

CHARS_PER_TOKEN = 20  # a prefix of 20 characters per kept token; English averages 4-5 per token
MIN_CHARS = 1000  # never cut shorter (a cut inside a word of >= 1000 chars keeps BERT's [UNK])
MAX_WIDEN = 64  # a prefix grows to at most 64 x char_budget characters

_SURROGATE = re.compile("[\ud800-\udfff]")


def invalid_unicode(text: str) -> str | None:
    """None for valid Unicode, else what is wrong, e.g. "lone surrogate '\\udc80' at character 7"."""
    m = _SURROGATE.search(text)
    if m is None:
        return None
    return f"lone surrogate {ascii(m.group())} at character {m.start()}"


JSON_HINT = "; JSON \\ud800-\\udfff escapes must come in high-low pairs"


def check_text(text: str, where: str, error: type[MiceIndexError] = SourceError, hint: str = "") -> str:
    """`text` unchanged, or `error` "<where> is not valid Unicode (<problem><hint>)". `where` names
    the place, e.g. "corpus.jsonl:4: document 'd1': field 'text'"."""
    problem = invalid_unicode(text)
    if problem is not None:
        raise error(f"{where} is not valid Unicode ({problem}{hint})")
    return text


def check_argument(value: str, option: str, error: type[MiceIndexError] = MiceIndexError) -> str:
    """A command-line value unchanged, or `error` "<option> is not valid UTF-8 (byte 0xe9 at
    character 3) ...": argv bytes that are not UTF-8 arrive as surrogates U+DC80..U+DCFF."""
    m = _SURROGATE.search(value)
    if m is None:
        return value
    code = ord(m.group())
    what = (f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"code point {ascii(m.group())}")
    raise error(f"{option} is not valid UTF-8 ({what} at character {m.start()}); pass UTF-8 text "
                "(e.g. convert Latin-1 with `iconv -f latin1 -t utf-8`)")


def id_problem(value: str) -> str | None:
    """Why `value` cannot be a document / query id in a TREC run (whitespace separates its columns;
    a control character such as NUL would be written raw and break other tools), else None."""
    for ch in value:
        if ch.isspace():
            return "contains whitespace (ids are written to TREC run files)"
        if unicodedata.category(ch) == "Cc":
            return f"contains the control character U+{ord(ch):04X} (ids are written to TREC run files)"
    return None


def char_budget(max_tokens: int) -> int:
    """Characters of a text handed to the tokenizer first when `max_tokens` tokens are kept."""
    return max(MIN_CHARS, CHARS_PER_TOKEN * max_tokens)


def clip(text: str, budget: int) -> str:
    """`text` if it has at most `budget` characters, else its first `budget` characters up to the
    last ASCII space, tab or newline (the word it may cut is dropped). Such whitespace ends a word
    for every pre-tokenizer (str.isspace would also cut at e.g. U+001C, which BERT deletes, joining
    the words around it), so the tokens of the result are a prefix of the tokens of `text`."""
    if len(text) <= budget:
        return text
    head = text[: budget + 1]
    cut = max(head.rfind(c) for c in " \t\n\r")
    return head[:cut] if cut > 0 else head[:budget]


def _bound(tokenizer, texts: list[str], max_tokens: int):
    """(texts clipped where long, {index: token ids of the clipped text (at most max_tokens)})."""

    def call(batch: list[str]) -> list[list[int]]:
        return tokenizer(batch, truncation=True, max_length=max_tokens, return_attention_mask=False,
                         return_token_type_ids=False)["input_ids"]

    for i, t in enumerate(texts):  # the tokenizer's own error for these is a bare TypeError
        if not isinstance(t, str):
            raise MiceIndexError(f"text #{i} of the batch is a {type(t).__name__}, not a str")
        check_text(t, f"text #{i} of the batch")
    out, ids = list(texts), {}
    budget = char_budget(max_tokens)
    cap = MAX_WIDEN * budget
    todo = [i for i, t in enumerate(texts) if len(t) > budget]
    while todo:
        for i in todo:
            out[i] = clip(texts[i], budget)
        for i, x in zip(todo, call([out[i] for i in todo])):
            ids[i] = x
        # a prefix with fewer tokens than kept (long runs of whitespace, one huge word): widen it
        budget *= 4
        todo = [i for i in todo if len(ids[i]) < max_tokens and len(out[i]) < len(texts[i]) and budget <= cap]
    return out, ids


def bounded_texts(tokenizer, texts: list[str], max_tokens: int) -> list[str]:
    """`texts` with each long one replaced by a prefix that tokenizes (truncated to `max_tokens`)
    exactly like the whole text. SourceError for a text that is not valid Unicode."""
    return _bound(tokenizer, list(texts), max_tokens)[0]


def bounded_token_ids(tokenizer, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Token ids of each text truncated to `max_tokens` (special tokens included), computed from
    bounded prefixes: equal to `tokenizer(texts, truncation=True, max_length=max_tokens)`."""
    out, ids = _bound(tokenizer, list(texts), max_tokens)
    rest = [i for i in range(len(out)) if i not in ids]
    if rest:
        full = tokenizer([out[i] for i in rest], truncation=True, max_length=max_tokens,
                         return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        ids.update(zip(rest, full))
    return [ids[i] for i in range(len(out))]


__all__ = ["JSON_HINT", "bounded_texts", "bounded_token_ids", "char_budget", "check_argument", "check_text", "clip",
           "id_problem",
           "invalid_unicode"]
