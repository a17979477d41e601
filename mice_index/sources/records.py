"""Record types yielded by the readers (frozen, hashable, cheap)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus document. Empty `text` is allowed; `title` defaults to ""."""

    doc_id: str
    text: str
    title: str = ""


@dataclass(frozen=True, slots=True)
class Query:
    """One query (its text is never empty)."""

    query_id: str
    text: str
