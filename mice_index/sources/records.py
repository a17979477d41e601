"""Record types yielded by the readers (frozen, hashable, cheap)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus document. Empty `text` is allowed; `title` defaults to "". `fields`: the values
    of the build's declared fields (sources/fields.py), in declaration order (None = null); empty
    when none were declared."""

    doc_id: str
    text: str
    title: str = ""
    fields: tuple = ()


@dataclass(frozen=True, slots=True)
class Query:
    """One query (its text is never empty)."""

    query_id: str
    text: str
