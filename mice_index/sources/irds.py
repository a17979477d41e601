"""ir_datasets adapter: `irds:<dataset-id>` sources, with every failure turned into one SourceError.

No network is assumed: a dataset whose files are not in the ir_datasets cache fails with a message
saying so instead of a traceback. Download retries are limited to one try unless the user set
IR_DATASETS_DL_TRIES, so an offline failure is fast.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from mice_index.errors import SourceError
from mice_index.sources._files import IRDS_PREFIX

T = TypeVar("T")

_OPTION_FOR = {"docs": "--corpus", "queries": "--queries", "qrels": "--qrels"}


def load(src: str) -> Any:
    """The ir_datasets dataset object for `irds:<id>` (SourceError if unavailable or unknown)."""
    dataset_id = src[len(IRDS_PREFIX):].strip()
    if not dataset_id:
        raise SourceError(f"{src!r}: empty ir_datasets id (expected e.g. irds:beir/scifact/test)")
    os.environ.setdefault("IR_DATASETS_DL_TRIES", "1")
    try:
        import ir_datasets
    except ImportError as exc:
        raise SourceError(f"{src}: ir_datasets is not installed (pip install ir_datasets)") from exc
    try:
        return ir_datasets.load(dataset_id)
    except KeyError:
        raise SourceError(f"{src}: unknown ir_datasets id {dataset_id!r}") from None
    except Exception as exc:  # noqa: BLE001 - any loader failure is reported as one line
        raise SourceError(f"{src}: cannot load dataset ({_short(exc)})") from exc


def _short(exc: BaseException, limit: int = 240) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_network_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, (OSError, ConnectionError, TimeoutError)) or module.startswith(
        ("requests", "urllib3", "http.client")
    )


def iterate(src: str, kind: str, convert: Callable[[Any], T]) -> Iterator[T]:
    """Yield convert(record) for the dataset's docs / queries / qrels, wrapping all failures."""
    ds = load(src)
    try:
        if not getattr(ds, f"has_{kind}")():
            raise SourceError(f"{src}: dataset provides no {kind}")
        it = getattr(ds, f"{kind}_iter")()
    except SourceError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise _wrap(src, kind, exc) from exc
    while True:
        try:
            record = next(it)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001
            raise _wrap(src, kind, exc) from exc
        yield convert(record)


def _wrap(src: str, kind: str, exc: Exception) -> SourceError:
    if _is_network_error(exc):
        return SourceError(
            f"{src}: data not available offline and download failed ({_short(exc)}); "
            f"download it once online or point {_OPTION_FOR[kind]} at a local copy"
        )
    return SourceError(f"{src}: reading {kind} failed ({_short(exc)})")


def record_text(record: Any) -> str:
    """`text` when the record has one, otherwise ir_datasets' default_text() (e.g. MS MARCO body)."""
    text = getattr(record, "text", None)
    if isinstance(text, str):
        return text
    default = getattr(record, "default_text", None)
    return default() if callable(default) else ""


def docs_count(src: str) -> int | None:
    ds = load(src)
    try:
        count = ds.docs_count()
    except Exception:  # noqa: BLE001 - a missing count only disables the progress total
        return None
    return int(count) if count is not None else None
