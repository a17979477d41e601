"""Low-level helpers shared by the readers: source resolution and per-line decoding.

Files are read as bytes and decoded line by line so that invalid UTF-8 is reported with its line
number; `.gz`, `.bz2` and `.xz` files are decompressed on the fly (a truncated or corrupt one is
one SourceError naming the file). Nothing here holds a whole file in memory.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mice_index.errors import SourceError
from mice_index.text import JSON_HINT, check_text

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


# suffix -> (format name, opener); the stdlib decoders, so nothing to install
_COMPRESSED = {".gz": ("gzip", gzip.open), ".bz2": ("bzip2", bz2.open), ".xz": ("xz", lzma.open),
               ".lzma": ("lzma", lzma.open)}
_STREAM_ERRORS = (OSError, EOFError, zlib.error, lzma.LZMAError)  # what the decoders raise on bad data
_UNSUPPORTED = {".zst": "zstd", ".zstd": "zstd", ".lz4": "lz4", ".zip": "zip", ".7z": "7z"}
_MAGIC = {b"\x1f\x8b": "gzip (.gz)", b"BZh": "bzip2 (.bz2)", b"\xfd7zXZ\x00": "xz (.xz)",
          b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}


def _compression(path: Path) -> str | None:
    """Name of the compression format `path`'s suffix says (None: plain text)."""
    suffix = path.suffix.lower()
    if suffix in _UNSUPPORTED:
        raise SourceError(f"{path}: {_UNSUPPORTED[suffix]}-compressed files are not supported; decompress it "
                          "first or use .gz, .bz2 or .xz")
    return _COMPRESSED[suffix][0] if suffix in _COMPRESSED else None


def _open(path: Path) -> IO[bytes]:
    try:
        fmt = _compression(path)
        if fmt is not None and path.stat().st_size > 0:  # an empty file is an empty source, not a bad stream
            return _COMPRESSED[path.suffix.lower()][1](path, "rb")
        return open(path, "rb")
    except OSError as exc:
        raise SourceError(f"{path}: cannot open ({exc.strerror or exc})") from exc


def _read_error(path: Path, exc: Exception, lineno: int) -> SourceError:
    """One line naming the file for a failed read: truncated / corrupt / not-compressed input."""
    fmt = _compression(path)
    where = f"after line {lineno}" if lineno else "at its start"
    if fmt is None:
        return SourceError(f"{path}: read failed {where} ({exc})")
    if isinstance(exc, EOFError):
        return SourceError(f"{path}: truncated {fmt} file: the compressed data ends early ({where}); "
                           "re-create or re-download it")
    if not lineno and not _magic_matches(path, fmt):
        article = "an" if fmt == "xz" else "a"
        return SourceError(f"{path}: not {article} {fmt} file although its name ends in {path.suffix} ({exc}); "
                           "rename or re-compress it")
    return SourceError(f"{path}: corrupt {fmt} data {where} ({exc}); re-create or re-download it")


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(8)
    except OSError:
        return b""


def _magic_matches(path: Path, fmt: str) -> bool:
    head = _head(path)
    return any(head.startswith(m) and name.startswith(fmt) for m, name in _MAGIC.items()) or fmt == "lzma"


def _raw_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of every line; decompression errors become one SourceError."""
    lineno = 0
    with _open(path) as fh:
        try:
            for lineno, raw in enumerate(fh, 1):
                yield lineno, raw
        except _STREAM_ERRORS as exc:
            raise _read_error(path, exc, lineno) from exc


def _sniff(path: Path) -> str:
    """' (the file looks <format>-compressed: ...)' for a compressed file with a plain name."""
    head = _head(path)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return f" (the file looks {name}-compressed: give it the matching suffix)"
    return ""


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (line_number, text) for each non-blank line, decoded strictly as UTF-8.

    Only "\\n" ends a line (unlike str.splitlines, which also splits on U+2028 etc.); a UTF-8 BOM
    at the start of the file is dropped; the trailing "\\r\\n"/"\\n" is stripped. `.gz`, `.bz2` and
    `.xz` files are decompressed on the fly; SourceError (file, and line where known) for invalid
    UTF-8 or a truncated / corrupt compressed file.
    """
    for lineno, raw in _raw_lines(path):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            hint = _sniff(path) if lineno == 1 and _compression(path) is None else ""
            raise SourceError(f"{path}:{lineno}: invalid UTF-8 at byte {exc.start} of the line{hint}") from None
        line = line.rstrip("\r\n")
        if line.strip():
            yield lineno, line


def count_nonblank_lines(path: Path) -> int:
    return sum(1 for _, raw in _raw_lines(path) if raw.strip())


@contextmanager
def blame_damaged_stream(path: Path) -> Iterator[None]:
    """Around the parsing of `path`'s lines: a SourceError about a line of a compressed file is
    replaced by the file's own truncated / corrupt error when there is one (a corrupt xz or bzip2
    block yields garbage lines before its checksum fails at the block's end). Costs one more
    decompression pass, on the error path only."""
    try:
        yield
    except SourceError as exc:
        if _compression(path) is not None and not isinstance(exc.__cause__, _STREAM_ERRORS):
            for _ in _raw_lines(path):  # raises the stream's own error
                pass
        raise


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
    """obj[field] as str; SourceError if missing (when required), not a string or not valid Unicode
    (a lone surrogate from an unpaired JSON \\udXXX escape)."""
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
    return check_text(value, f"{path}:{lineno}:{where} field {field!r}", hint=JSON_HINT)


def first_line_of(path: Path, key: str, extract) -> int | None:
    """Re-scan `path` for the first line whose extracted key equals `key` (error path only)."""
    for lineno, line in iter_lines(path):
        try:
            if extract(lineno, line) == key:
                return lineno
        except SourceError:
            continue
    return None
