"""Metadata filters: a small expression grammar over the document fields of an index, compiled to
a pyarrow.compute expression and evaluated into a boolean mask over store rows.

    year >= 2020 and source in ('a', 'b')
    not (lang == 'de' or draft) and score is not null
    2000 <= year < 2010

Grammar (README → Filters):

- a comparison of a field with a literal: ``==  !=  <  <=  >  >=`` (either side may be the
  field; a chain ``2000 <= year < 2010`` means ``2000 <= year and year < 2010``);
  ``field in (lit, ...)`` and ``field not in (lit, ...)``; ``field is null`` and
  ``field is not null``; a bool field alone (``draft``) means ``draft == true``;
- joined with ``and``, ``or``, ``not`` and parentheses (``not`` binds tighter than ``and``,
  ``and`` tighter than ``or``);
- literals: integers and decimals (``-3``, ``2.5``), strings in single or double quotes,
  ``true``/``false`` (also ``True``/``False``) and ``null`` (also ``None``, only after ``is``);
- field names as declared at build time (``--field NAME:TYPE``), dotted ones (``metadata.year``)
  included.

Types: an int or float field is compared with numbers, a str field with strings, a bool field
with true/false (``==``/``!=``/``in`` only). Numbers compare by value, exactly, whatever their size
or kind: an int field against ``2.5`` (``year < 2.5`` is ``year <= 2``; ``year == 2.5`` holds for no
row), ``1e999`` or ``10**20`` written out is decided over the integers, never through a cast to
float that loses digits beyond 2**53. Nulls follow SQL: a document whose field is null
matches no comparison and no ``in`` (nor their negations), only ``is null``.

The text is parsed with Python's own parser (``ast``, expression mode) and only the node types
above are accepted; nothing is ever evaluated as Python. Every error is one FilterError line
(syntax error with its character position, unknown field with the index's fields, a type
mismatch, a filter on an index without fields).
"""

from __future__ import annotations

import ast
import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from mice_index.errors import SearchError
from mice_index.sources.fields import INT64, Field
from mice_index.text import check_text

log = logging.getLogger(__name__)

__all__ = ["Filter", "FilterError", "FilterMasks", "MAX_FILTER_CHARS", "compile_filter", "describe_fields"]

MAX_FILTER_CHARS = 4096
_NULL, _TRUE, _FALSE = {"null", "None"}, {"true", "True"}, {"false", "False"}
_FLIP = {ast.Lt: ast.Gt, ast.LtE: ast.GtE, ast.Gt: ast.Lt, ast.GtE: ast.LtE, ast.Eq: ast.Eq, ast.NotEq: ast.NotEq}
_SYMBOL = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=",
           ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
_ORDER = (ast.Lt, ast.LtE, ast.Gt, ast.GtE)


class FilterError(SearchError):
    """A filter that cannot be applied: bad syntax, an unknown field, a type mismatch, or an index
    built without fields. The message is one line and starts with ``--filter``."""


def describe_fields(fields: tuple[Field, ...]) -> str:
    """`year (int), source (str)`, or `none` for an index without fields."""
    return ", ".join(f"{f.name} ({f.type})" for f in fields) or "none"


@dataclass(frozen=True)
class Filter:
    """A compiled filter: its `text` and the pyarrow.compute `expression` over the field columns."""

    text: str
    expression: Any  # pyarrow.compute.Expression

    def mask(self, table) -> np.ndarray:
        """bool [table.num_rows]: True for the rows the filter keeps (null counts as False).
        `table`: the index's field columns in row order (IndexReader.field_table)."""
        import pyarrow as pa

        n = table.num_rows
        rows = table.append_column("__row__", pa.array(np.arange(n, dtype=np.int64))).filter(self.expression)
        out = np.zeros(n, dtype=bool)
        out[rows.column("__row__").to_numpy()] = True
        return out


def compile_filter(text: str, fields: tuple[Field, ...]) -> Filter:
    """Parse `text` (the grammar in the module docstring) against the index's declared `fields`.
    FilterError (one line) for anything it does not accept."""
    if not isinstance(text, str):
        raise FilterError(f"--filter must be a string, got {type(text).__name__}")
    check_text(text, "--filter", FilterError)
    if not text.strip():
        raise FilterError("--filter is empty")
    if not fields:
        raise FilterError("--filter: this index has no fields to filter on (build it with --field NAME:TYPE, "
                          "e.g. --field year:int)")
    if len(text) > MAX_FILTER_CHARS:
        raise FilterError(f"--filter: at most {MAX_FILTER_CHARS} characters, got {len(text)}")
    if "\n" in text or "\r" in text:
        raise FilterError("--filter must be one line")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        where = f" at character {exc.offset}" if exc.offset else ""
        reason = (exc.msg or "invalid syntax").replace("Maybe you meant '==' or ':=' instead of '='?",
                                                       "compare with ==").rstrip(".")
        raise FilterError(f"--filter: syntax error{where} of {_shown(text.strip())}: {reason}") from None
    except (RecursionError, MemoryError, ValueError):
        raise FilterError("--filter: too deeply nested") from None
    comment = _comment_at(text.strip())
    if comment is not None:  # Python would drop the rest of the line: `year > 2000 # and draft`
        raise FilterError(f"--filter: '#' at character {comment} is not part of the grammar (a '#' in a value goes "
                          f"inside its quotes)")
    try:
        return Filter(text, _Compiler(text.strip(), {f.name: f for f in fields}).expr(tree.body))
    except RecursionError:
        raise FilterError("--filter: too deeply nested") from None


def _shown(text: str, limit: int = 80) -> str:
    """`text` quoted for an error line, cut to `limit` characters (a filter may have 4,096)."""
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def _comment_at(source: str) -> int | None:
    """The 1-based character position of a Python comment in `source` (which parses), else None."""
    import io
    import tokenize

    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                return tok.start[1] + 1
    except (tokenize.TokenError, SyntaxError):
        return None
    return None


class _Compiler:
    def __init__(self, source: str, fields: dict[str, Field]):
        self.source, self.fields = source, fields

    def _at(self, node: ast.AST) -> int:
        """The 1-based character position of `node` (ast's col_offset counts UTF-8 bytes)."""
        offset = getattr(node, "col_offset", 0)
        return len(self.source.encode()[:offset].decode(errors="ignore")) + 1

    def _where(self, node: ast.AST) -> str:
        seg = ast.get_source_segment(self.source, node) or ast.dump(node)[:40]
        return f"{_shown(seg)} (at character {self._at(node)})"

    def _refuse(self, node: ast.AST, why: str) -> FilterError:
        return FilterError(f"--filter: {self._where(node)}: {why}")

    # -- boolean structure --
    def expr(self, node: ast.AST):
        if isinstance(node, ast.BoolOp):
            parts = [self.expr(v) for v in node.values]
            out = parts[0]
            for p in parts[1:]:
                out = (out & p) if isinstance(node.op, ast.And) else (out | p)
            return out
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.expr(node.operand)
        if isinstance(node, ast.Compare):
            left, out = node.left, None
            for op, right in zip(node.ops, node.comparators):
                part = self.compare(left, op, right, node)
                out = part if out is None else out & part
                left = right
            return out
        name = self.field_name(node)
        if name is not None:
            f = self.field(node, name)
            if f.type != "bool":
                raise self._refuse(node, f"field {f.name!r} is {f.type}; compare it with a value (e.g. "
                                         f"{f.name} == ...), only a bool field stands alone")
            import pyarrow.compute as pc

            return pc.field(f.name) == True  # noqa: E712 - an Expression, not a Python comparison
        raise self._refuse(node, "expected a comparison of a field with a value, joined by and / or / not")

    # -- one comparison --
    def compare(self, left: ast.AST, op: ast.cmpop, right: ast.AST, whole: ast.AST):
        import pyarrow as pa
        import pyarrow.compute as pc

        kind = type(op)
        lname, rname = self.field_name(left), self.field_name(right)
        if lname is None and rname is not None and kind in _FLIP:  # 2020 <= year -> year >= 2020
            left, right, kind, lname = right, left, _FLIP[kind], rname
        elif lname is None:
            raise self._refuse(whole, f"'{_SYMBOL.get(kind, '?')}' needs a field on its left (this index's "
                                      f"fields: {describe_fields(tuple(self.fields.values()))})")
        elif rname is not None:
            raise self._refuse(whole, "compares two fields; a field is compared with a literal value")
        f = self.field(left, lname)
        col = pc.field(f.name)
        if kind in (ast.Is, ast.IsNot):
            if not self.is_null(right):
                raise self._refuse(whole, f"'{_SYMBOL[kind]}' takes null only ({f.name} is null, "
                                          f"{f.name} is not null)")
            return col.is_null() if kind is ast.Is else col.is_valid()
        if kind in (ast.In, ast.NotIn):
            items = right.elts if isinstance(right, (ast.Tuple, ast.List, ast.Set)) else [right]
            if not items:
                raise self._refuse(whole, "an empty list; give at least one value")
            values = [self.literal(v, f) for v in items]
            if f.type == "int":  # exact over integers: 2.5 and values outside int64 never match
                values = [int(v) for v in values if _exact_int(v) is not None]
            elif f.type == "float":
                values = [_as_float(v) for v in values]
            if values:
                hit = col.isin(pa.array(values, type=f.arrow_type))
                hit = pc.if_else(col.is_null(), pa.scalar(None, pa.bool_()), hit)  # null in (...) is null
            else:
                hit = _never(col)
            return hit if kind is ast.In else ~hit
        if kind not in _FLIP:
            raise self._refuse(whole, f"operator {_SYMBOL.get(kind, type(op).__name__)!r} is not supported")
        value = self.literal(right, f)
        if f.type == "bool" and kind in _ORDER:
            raise self._refuse(whole, f"field {f.name!r} is bool: use == or != (or the field alone)")
        if f.type == "float":
            value = _as_float(value)
        elif f.type == "int":
            kind, value = _int_comparison(kind, value)
            if isinstance(value, bool):  # decided by the literal alone: true / false for every non-null row
                return _always(col) if value else _never(col)
        return {ast.Eq: col.__eq__, ast.NotEq: col.__ne__, ast.Lt: col.__lt__, ast.LtE: col.__le__,
                ast.Gt: col.__gt__, ast.GtE: col.__ge__}[kind](value)

    # -- leaves --
    @staticmethod
    def field_name(node: ast.AST) -> str | None:
        """`year` or `metadata.year` for a Name / Attribute chain, else None (literals and the rest)."""
        parts = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if isinstance(node, ast.Name) and (parts or node.id not in _NULL | _TRUE | _FALSE):
            return ".".join([node.id, *reversed(parts)])
        return None

    def field(self, node: ast.AST, name: str) -> Field:
        f = self.fields.get(name)
        if f is None:
            raise FilterError(f"--filter: unknown field {name!r} (at character {self._at(node)}); this "
                              f"index's fields: {describe_fields(tuple(self.fields.values()))}")
        return f

    @staticmethod
    def is_null(node: ast.AST) -> bool:
        return (isinstance(node, ast.Constant) and node.value is None) or (
            isinstance(node, ast.Name) and node.id in _NULL)

    def literal(self, node: ast.AST, f: Field):
        """The Python value of a literal compared with field `f`; FilterError for a non-literal, a
        null (outside `is`) or a value of another type than the field's."""
        value: Any
        if isinstance(node, ast.Constant) and not isinstance(node.value, (bytes, complex, type(Ellipsis))):
            value = node.value
        elif isinstance(node, ast.Name) and node.id in _TRUE | _FALSE | _NULL:
            value = True if node.id in _TRUE else False if node.id in _FALSE else None
        elif (isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd))
              and isinstance(node.operand, ast.Constant) and type(node.operand.value) in (int, float)):
            value = -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
        else:
            raise self._refuse(node, "expected a literal value (a number, a 'string', true, false)")
        if value is None:
            raise self._refuse(node, f"null compares with nothing: use '{f.name} is null' or "
                                     f"'{f.name} is not null'")
        kind = "bool" if isinstance(value, bool) else "str" if isinstance(value, str) else "number"
        ok = {"int": "number", "float": "number", "str": "str", "bool": "bool"}[f.type]
        if kind != ok:
            shown = {"number": "a number", "str": "a string", "bool": "true/false"}
            raise self._refuse(node, f"field {f.name!r} is {f.type} and cannot be compared with {shown[kind]}; "
                                     f"use {shown[ok]}")
        if isinstance(value, str):
            check_text(value, f"--filter: {self._where(node)}", FilterError)
        return value


# -- numbers: a literal compared with an int64 or float64 column, exactly (never through a cast
# that loses digits or overflows: 2**62 + 1 == 4611686018427387905.0 is decided over integers) --

def _always(col):
    """True for every non-null row, null for a null one (SQL: a comparison with null is null)."""
    return col == col


def _never(col):
    """False for every non-null row, null for a null one."""
    return col != col


def _as_float(value: int | float) -> float:
    try:
        return float(value)
    except OverflowError:  # an integer beyond the double range
        return math.inf if value > 0 else -math.inf


def _exact_int(value: int | float) -> int | None:
    """`value` as an int64 if it is one exactly (3, 3.0), else None (2.5, inf, 2**63)."""
    if isinstance(value, float):
        if not math.isfinite(value) or value != math.floor(value):
            return None
        value = int(value)
    return value if -INT64 <= value < INT64 else None


def _int_comparison(kind: type, value: int | float) -> tuple[type, int | bool]:
    """`int_column <kind> value` as the same comparison with an int64 literal, or (kind, True /
    False) when every integer gives the same answer (`year < 1e999`, `year == 2.5`)."""
    exact = _exact_int(value)
    if exact is not None:
        return kind, exact
    if kind in (ast.Eq, ast.NotEq):  # no int64 equals 2.5, inf or 2**63
        return kind, kind is ast.NotEq
    if isinstance(value, float) and math.isfinite(value) and -INT64 <= value < INT64:
        floor = math.floor(value)  # not an integer: x < 2.5 <=> x <= 2; x > 2.5 <=> x > 2
        return {ast.Lt: ast.LtE, ast.LtE: ast.LtE, ast.Gt: ast.Gt, ast.GtE: ast.Gt}[kind], floor
    above = value > 0  # beyond the int64 range (or infinite): every int64 is below it, or above
    return kind, (kind in (ast.Lt, ast.LtE)) == above


class FilterMasks:
    """Masks of filters over one index's store rows, compiled and evaluated once per filter text
    and kept in a small LRU (`size` masks, N bytes each). `reader`: an IndexReader (its `fields`
    and `field_table()`, read on the first filter)."""

    def __init__(self, reader, size: int = 32):
        self.reader, self.size = reader, size
        self._lock = threading.Lock()  # a server's worker and request threads may share one searcher
        self._table = None
        self._masks: OrderedDict[str, np.ndarray] = OrderedDict()

    def compile(self, text: str) -> Filter:
        """FilterError (one line) for a filter this index cannot apply."""
        return compile_filter(text, tuple(self.reader.fields))

    def mask(self, text: str) -> np.ndarray:
        """bool [num_docs]: the rows `text` keeps (read-only; shared between calls)."""
        with self._lock:
            hit = self._masks.get(text)
            if hit is not None:
                self._masks.move_to_end(text)
                return hit
            flt = self.compile(text)
            if self._table is None:
                self._table = self.reader.field_table()
            mask = flt.mask(self._table)
            deleted = getattr(self.reader, "deleted", None)  # rows deleted by `delete` / `add --update`
            if deleted is not None:
                mask &= ~deleted
            if not mask.any():  # once per filter (then cached): an empty result is not a silent mystery
                log.warning("--filter %s keeps no document of this index (%d documents): every result is empty",
                            _shown(text), mask.size)
            mask.setflags(write=False)
            self._masks[text] = mask
            if len(self._masks) > self.size:
                self._masks.popitem(last=False)
            return mask
