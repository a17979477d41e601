"""Low-level helpers shared by the readers: source resolution and per-line decoding.

Files are read as bytes and decoded line by line so that invalid UTF-8 is reported with its line
number; `.gz` files are decompressed on the fly. Nothing here holds a whole file in memory.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mice_index.errors import SourceError

IRDS_PREFIX = "irds:"

Src = str | os.PathLike[str]


def is_irds(src: Src) -> bool:
    return isinstance(src, str) and src.startswith(IRDS_PREFIX)


def resolve_file(src: Src, beir_name: str, what: str) -> Path:
    """A file path, or `<folder>/<beir_name>` for a BEIR folder; SourceError if it is missing."""
    path = Path(src)
    if path.is_dir():
        inner = path / beir_name
        if not inner.is_file():
            raise SourceError(f"{path}: folder has no {beir_name} (expected a BEIR {what} folder)")
        return inner
    if not path.exists():
        raise SourceError(f"{path}: {what} file or folder not found")
    if not path.is_file():
        raise SourceError(f"{path}: not a regular file")
    return path


def _open(path: Path) -> IO[bytes]:
    try:
        if path.suffix == ".gz":
            return gzip.open(path, "rb")
        return open(path, "rb")
    except OSError as exc:
        raise SourceError(f"{path}: cannot open ({exc.strerror or exc})") from exc


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line_number, text) for each non-blank line, decoded strictly as UTF-8.

    Only "\\n" ends a line (unlike str.splitlines, which also splits on U+2028 etc.); a UTF-8 BOM
    at the start of the file is dropped; the trailing "\\r\\n"/"\\n" is stripped.
    """
    with _open(path) as fh:
        try:
            for lineno, raw in enumerate(fh, 1):
                if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise SourceError(
                        f"{path}:{lineno}: invalid UTF-8 at byte {exc.start} of the line"
                    ) from None
                line = line.rstrip("\r\n")
                if line.strip():
                    yield lineno, line
        except (OSError, EOFError) as exc:  # e.g. truncated / corrupt gzip
            raise SourceError(f"{path}: read failed ({exc})") from exc


def count_nonblank_lines(path: Path) -> int:
    with _open(path) as fh:
        return sum(1 for raw in fh if raw.strip())


def parse_json_object(path: Path, lineno: int, line: str) -> dict[str, Any]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}:{lineno}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise SourceError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    return obj


def get_str(
    obj: dict[str, Any], field: str, path: Path, lineno: int, *, where: str = "", required: bool = True
) -> str | None:
    """obj[field] as str; SourceError if missing (when required) or not a string."""
    if field not in obj or (obj[field] is None and not required):
        if required:
            have = ", ".join(sorted(map(str, obj))[:8]) or "none"
            raise SourceError(f"{path}:{lineno}:{where} missing field {field!r} (fields present: {have})")
        return None
    value = obj[field]
    if not isinstance(value, str):
        raise SourceError(
            f"{path}:{lineno}:{where} field {field!r} must be a string, got {type(value).__name__}"
        )
    return value


def first_line_of(path: Path, key: str, extract) -> int | None:
    """Re-scan `path` for the first line whose extracted key equals `key` (error path only)."""
    for lineno, line in iter_lines(path):
        try:
            if extract(lineno, line) == key:
                return lineno
        except SourceError:
            continue
    return None
