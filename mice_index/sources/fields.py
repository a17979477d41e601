"""Document fields (metadata) declared at build time: `--field year:int --field metadata.source:str`.

A field is read from a JSONL document's key (a dotted name is a path into nested objects, e.g.
BEIR's ``metadata``); a missing key or JSON ``null`` is null. A value of another type than the
declared one is refused (SourceError naming file, line, document id and field), never converted:
``"2020"`` is not an int. Types (JSON → Arrow):

- ``int``: a JSON integer (not ``true``/``false``) → int64
- ``float``: a JSON number → float64
- ``str``: a JSON string (valid Unicode) → string
- ``bool``: ``true`` / ``false`` → bool

Fields are stored as extra columns of the document table (store/writer.py) and searched with the
filter grammar of :mod:`mice_index.filters`.
"""

from __future__ import annotations

import keyword
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mice_index.errors import MiceIndexError, SourceError
from mice_index.text import JSON_HINT, check_text

__all__ = ["FIELD_TYPES", "RESERVED_NAMES", "Field", "field_values", "parse_field"]

# declared type -> (Python types accepted, the JSON type named in errors)
_ACCEPT: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"), "float": ((int, float), "a number"), "str": ((str,), "a string"),
    "bool": ((bool,), "true or false"),
}
FIELD_TYPES = tuple(_ACCEPT)
# columns of the document table, and the grammar's literals: a field cannot take these names
RESERVED_NAMES = frozenset({"row", "doc_id", "title", "text", "num_tokens", "truncated", "null", "true", "false",
                            "None", "True", "False", "__row__"})
INT64 = 2**63


@dataclass(frozen=True)
class Field:
    """One declared field: `name` (a key, or a dotted path into nested objects) and its `type`."""

    name: str
    type: str

    def __post_init__(self) -> None:
        if self.type not in _ACCEPT:
            raise MiceIndexError(f"--field {self.name}:{self.type}: unknown type {self.type!r}; "
                                 f"types: {', '.join(FIELD_TYPES)}")
        parts = self.name.split(".")
        bad = next((p for p in parts if not p.isidentifier() or keyword.iskeyword(p) or not p.isascii()), None)
        if bad is not None:
            raise MiceIndexError(f"--field {self.name}:{self.type}: a field name is a JSON key made of letters, "
                                 f"digits and _ (not starting with a digit, not a Python keyword), or such keys "
                                 f"joined by '.' for nested objects; {bad!r} is not one")
        if self.name in RESERVED_NAMES:
            raise MiceIndexError(f"--field {self.name}:{self.type}: {self.name!r} is reserved (reserved names: "
                                 f"{', '.join(sorted(RESERVED_NAMES))})")

    @property
    def arrow_type(self):
        import pyarrow as pa

        return {"int": pa.int64(), "float": pa.float64(), "str": pa.string(), "bool": pa.bool_()}[self.type]

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "type": self.type}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Field:
        return cls(str(d["name"]), str(d["type"]))


def parse_field(spec: str) -> Field:
    """`"year:int"` -> Field("year", "int"); MiceIndexError (one line) for a bad spec."""
    name, sep, type_ = str(spec).rpartition(":")
    if not sep or not name:
        raise MiceIndexError(f"--field {spec!r}: expected NAME:TYPE (e.g. year:int), TYPE one of "
                             f"{', '.join(FIELD_TYPES)}")
    return Field(name.strip(), type_.strip())


def check_fields(fields: tuple[Field, ...]) -> None:
    """MiceIndexError for a name declared twice."""
    seen: set[str] = set()
    for f in fields:
        if f.name in seen:
            raise MiceIndexError(f"--field {f.name}: declared twice")
        seen.add(f.name)


def field_values(obj: dict[str, Any], fields: tuple[Field, ...], path: Path | str, lineno: int,
                 doc_id: str) -> tuple[Any, ...]:
    """The values of `fields` in one parsed JSONL document `obj` (None where missing or null), in
    declaration order. SourceError naming file, line, document and field for a value of another type."""
    out = []
    for f in fields:
        value: Any = obj
        for key in f.name.split("."):
            value = value.get(key) if isinstance(value, dict) else None
            if value is None:
                break
        if value is not None:
            accept, what = _ACCEPT[f.type]
            if isinstance(value, bool) and f.type != "bool" or not isinstance(value, accept):
                shown = repr(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__
                if len(shown) > 40:
                    shown = shown[:37] + "..."
                raise SourceError(f"{path}:{lineno}: document {doc_id!r}: field {f.name!r} is declared {f.type} "
                                  f"(--field {f.name}:{f.type}) and must be {what} or null, got {shown}")
            where = f"{path}:{lineno}: document {doc_id!r}: field {f.name!r}"
            if f.type == "str":
                check_text(value, where, hint=JSON_HINT)
            elif f.type == "int" and not -INT64 <= value < INT64:
                raise SourceError(f"{where} is {value}, outside the 64-bit integer range (declare it float or str)")
            elif f.type == "float":
                try:
                    value = float(value)
                except OverflowError:  # an integer too large for a double
                    value = math.inf
                if not math.isfinite(value):
                    raise SourceError(f"{where} must be a finite number, got {value}")
        out.append(value)
    return tuple(out)
