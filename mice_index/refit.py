"""`mice-index compact --refit`: fit the codec again and re-encode the live documents.

Documents added after a build are encoded with the build's codec (its codebooks are kept, so
that segments stay comparable); `info` reports how far their reconstruction error drifts from the
build's (mice_index/update.py). Refitting means new codebooks for every state, so it is a rebuild
of the live documents, from their stored texts, with the settings the index records: written into
a staging folder beside the index while the write lock is held, then swapped in (as `build
--overwrite` does; readers of the old index get IndexChanged and reopen).
"""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from mice_index.errors import IndexError_, os_errors
from mice_index.model import MiceModel
from mice_index.store import layout as L
from mice_index.store.lock import IndexLock
from mice_index.store.manifest import Settings, read_manifest, write_manifest

log = logging.getLogger(__name__)

__all__ = ["refit_index"]


def _put(obj: dict, dotted: str, value) -> None:
    """obj[a][b] = value for the dotted field name "a.b" (sources/fields.py reads it back)."""
    *parents, last = dotted.split(".")
    for p in parents:
        obj = obj.setdefault(p, {})
    obj[last] = value


def _export(reader, path: Path, settings: Settings) -> int:
    """The live documents as JSONL (the index's id / title / text keys and document fields), in
    row order -> their count."""
    rows = reader.live_rows()
    names = [f.name for f in settings.fields]
    values = reader.field_table().to_pylist() if names else None  # [{name: value}] per store row
    n = 0
    with os_errors(path, "writing the live documents for --refit"), open(path, "w", encoding="utf-8") as fh:
        for a in range(0, rows.size, 4096):
            chunk = rows[a: a + 4096].tolist()
            for row, doc_id, (title, text) in zip(chunk, reader.doc_ids_of(chunk), reader.texts(chunk)):
                obj = {settings.id_field: doc_id, settings.title_field: title, settings.text_field: text}
                for name in names:
                    _put(obj, name, values[row][name])
                fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
                n += 1
    return n


def refit_index(root: Path, config, model: MiceModel | None = None) -> None:
    """Rebuild the live documents of the index in `root` with a freshly fitted codec (see module doc);
    `config` is an UpdateConfig (model, device, dtype). IndexError_ for an incomplete index or a
    model of another fingerprint; the index is left as it was on any error."""
    from mice_index.build import _Builder
    from mice_index.store.reader import IndexReader
    from mice_index.update import _build_config, _checked_model, _complete_manifest

    root = Path(root)
    with IndexLock(root, holder="another process is writing this index (build / add / delete / compact)"):
        m = _complete_manifest(root)
        mice = _checked_model(m, config, model, root)
        cands = m.candidates
        cfg = _build_config(m, config, dense_kind=cands.dense_kind or "auto", dense_nprobe=cands.dense_nprobe,
                            bm25=bool(cands.bm25))
        staging = L.staging_dir(root)
        with os_errors(staging, "creating the staging folder of --refit (next to the index)"):
            L.remove(staging)
            staging.mkdir()
        try:
            corpus = staging.parent / f"{L.TMP_PREFIX}{root.name}.live.jsonl"
            n = _export(IndexReader(root, m, writing=True), corpus, m.settings)
            log.info("%s: --refit: re-encoding %d live documents into %s", root, n, staging)
            builder = _Builder(corpus, staging, cfg, mice, None)
            builder._run()
            new = replace(read_manifest(staging), corpus=m.corpus)  # the export is temporary
            write_manifest(staging, new)
        except BaseException:
            L.remove(staging)
            raise
        finally:
            L.remove(staging.parent / f"{L.TMP_PREFIX}{root.name}.live.jsonl")
        if new.num_docs != n:
            L.remove(staging)
            raise IndexError_(f"{root}: --refit re-encoded {new.num_docs} documents, expected {n}; the "
                              "index was left as it was")
        L.replace_dir(staging, root)
