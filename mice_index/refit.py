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
from pathlib import Path

from mice_index.errors import IndexError_, os_errors
from mice_index.model import MiceModel
from mice_index.store import layout as L
from mice_index.store.lock import IndexLock
from mice_index.store.manifest import read_manifest

log = logging.getLogger(__name__)

__all__ = ["refit_index"]


def _export(reader, path: Path, settings: dict) -> int:
    """The live documents as JSONL (the index's field names), in row order -> their count."""
    rows = reader.live_rows()
    n = 0
    with os_errors(path, "writing the live documents for --refit"), open(path, "w", encoding="utf-8") as fh:
        for a in range(0, rows.size, 4096):
            chunk = rows[a: a + 4096].tolist()
            for doc_id, (title, text) in zip(reader.doc_ids_of(chunk), reader.texts(chunk)):
                fh.write(json.dumps({settings["id_field"]: doc_id, settings["title_field"]: title,
                                     settings["text_field"]: text}, ensure_ascii=False) + "\n")
                n += 1
    return n


def refit_index(root: Path, config, model: MiceModel | None = None) -> None:
    """Rebuild the live documents of the index in `root` with a freshly fitted codec (see module doc);
    `config` is an UpdateConfig (model, device, dtype). IndexError_ for an incomplete index or a
    model of another fingerprint; the index is left as it was on any error."""
    from mice_index.build import BuildConfig, _Builder
    from mice_index.store.reader import IndexReader
    from mice_index.update import _checked_model, _complete_manifest

    root = Path(root)
    with IndexLock(root, holder="another process is writing this index (build / add / delete / compact)"):
        m = _complete_manifest(root)
        mice = _checked_model(m, config, model, root)
        s, cands = m["settings"], m.get("candidates") or {}
        cfg = BuildConfig(model=config.model, codec=s["codec"], max_doc_length=s["max_doc_length"],
                          batch_tokens=s["batch_tokens"], window_docs=s["window_docs"],
                          window_tokens=s["window_tokens"], shard_docs=s["shard_docs"], device=config.device,
                          dtype=config.dtype or s.get("dtype", "auto"), dense=s.get("dense", "auto"),
                          dense_kind=cands.get("dense_kind") or "auto", dense_nprobe=cands.get("dense_nprobe"),
                          prune=s.get("prune", "none"), bm25=bool(cands.get("bm25")), fit_tokens=s["fit_tokens"],
                          seed=s["seed"], id_field=s["id_field"], text_field=s["text_field"],
                          title_field=s["title_field"])
        staging = L.staging_dir(root)
        with os_errors(staging, "creating the staging folder of --refit (next to the index)"):
            L.remove(staging)
            staging.mkdir()
        try:
            corpus = staging.parent / f"{L.TMP_PREFIX}{root.name}.live.jsonl"
            n = _export(IndexReader(root, m, writing=True), corpus, s)
            log.info("%s: --refit: re-encoding %d live documents into %s", root, n, staging)
            builder = _Builder(corpus, staging, cfg, mice, None)
            builder._run()
            new = read_manifest(staging)
            new["corpus"] = m["corpus"]  # what the index was built from (the export is temporary)
            L.write_json_atomic(staging / L.MANIFEST, new)
        except BaseException:
            L.remove(staging)
            raise
        finally:
            L.remove(staging.parent / f"{L.TMP_PREFIX}{root.name}.live.jsonl")
        if new["counts"]["num_docs"] != n:
            L.remove(staging)
            raise IndexError_(f"{root}: --refit re-encoded {new['counts']['num_docs']} documents, expected {n}; the "
                              "index was left as it was")
        L.replace_dir(staging, root)
