"""Living indexes (issue 19, item 1): add / delete / update / compact equal a fresh build of the
final corpus; kill -9 at any point leaves the previous or the next commit; bad input is refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

from mice_index.build import BuildConfig, build_index
from mice_index.cli import main
from mice_index.errors import IndexBusyError
from mice_index.model import MiceModel
from mice_index.scorer import ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import sample_collection
from mice_index.store import IndexChanged, IndexReader, index_info, read_manifest, verify_shards
from mice_index.store.lock import IndexLock
from mice_index.update import UpdateConfig, add_documents, compact_index, delete_documents

from .conftest import write_tiny_bert

FP32 = ScorerConfig(dtype="fp32", quantize="none")
NO_AUTO = UpdateConfig(auto_compact=False)
QUERIES = ["how do honey bees make honey", "coral reef bleaching", "volcano eruption lava", "the"]


@pytest.fixture
def dense_once(monkeypatch):
    """The dense backbone loaded once per test, not per build / add (its load is not under test)."""
    import mice_index.build as build

    real, held = build._load_dense, {}

    def cached(model, cfg):
        if cfg.dense == "none":
            return real(model, cfg)
        if "v" not in held:
            held["v"] = real(model, cfg)
        return held["v"]

    monkeypatch.setattr(build, "_load_dense", cached)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("update")
    write_tiny_bert(root / "tiny", minilm_dir, seed=5)
    model = MiceModel.from_pretrained(root / "tiny", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=64, max_query_length=16)
    return model.save(root / "mice")


@pytest.fixture(scope="module")
def docs():
    lines = (sample_collection() / "corpus.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _write(path, docs):
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    return path


def _cfg(model_dir, **kw):
    return BuildConfig(**{"model": str(model_dir), "codec": "fp32", "dtype": "fp32", "shard_docs": 8, **kw})


def _ranked(searcher, queries=QUERIES, k=8):
    """Per query: (doc id, score) of the top k, best first."""
    return [[(h.doc_id, h.score) for h in hits] for hits in searcher.search_texts(queries, k)]


def _same_results(a, b, atol):
    for qa, qb in zip(a, b):
        assert [d for d, _ in qa] == [d for d, _ in qb]
        np.testing.assert_allclose([s for _, s in qa], [s for _, s in qb], atol=atol, rtol=0)


# The encoder is not batch-invariant: a document encoded among other documents (a fresh build's
# batches) gets states and dense vectors that differ from an add's in the last float32 bits
# (~1e-7), so dense and MICE scores are compared with a tolerance; BM25 is exact up to float
# summation (its statistics are re-derived, not updated), and flat search is exact over the stored vectors.
KINDS = [("bm25", "none", 1e-6), ("dense", "none", 1e-5), ("hybrid", "none", 1e-4), ("hybrid", "mice", 1e-4)]


def _compare(index, ref, model):
    """Every first stage, and MICE end to end, of `index` equal those of the fresh build `ref`."""
    base = SearchConfig(candidates="hybrid", scorer=FP32, depth=12, alpha=0.0)
    a, b = Searcher.open(index, model=model, config=base), Searcher.open(ref, model=model, config=base)
    for candidates, rerank, atol in KINDS:
        change = {"candidates": candidates, "rerank": rerank}
        _same_results(_ranked(a.with_config(**change)), _ranked(b.with_config(**change)), atol)


def test_random_operations_equal_a_fresh_build(tmp_path, model_dir, docs, dense_once):
    """A seeded random sequence of adds, deletes and updates gives the same ranked lists and scores
    as a fresh build of the final corpus (in the index's row order), and again after compact."""
    rng = np.random.default_rng(19)
    model = MiceModel.load(model_dir)
    idx = tmp_path / "idx"
    start = [docs[i] for i in range(0, 40, 3)]  # 14 documents of every topic
    build_index(_write(tmp_path / "c0.jsonl", start), idx, _cfg(model_dir))
    live, pool, step = list(start), [d for d in docs if d not in start], 0
    for op in ("add", "delete", "update", "delete", "add"):
        step += 1
        if op == "add":
            new = [pool.pop(int(rng.integers(len(pool)))) for _ in range(int(rng.integers(2, 4)))]
            add_documents(idx, _write(tmp_path / f"a{step}.jsonl", new), config=NO_AUTO, model=model)
            live += new
        elif op == "delete":
            gone = [live[i]["_id"] for i in rng.choice(len(live), size=2, replace=False)]
            delete_documents(idx, gone, config=NO_AUTO)
            live = [d for d in live if d["_id"] not in gone]
        else:  # update: another document's text under an existing id (and one new id)
            picks = rng.choice(len(live), size=2, replace=False)
            changed = [{**live[i], "text": live[(i + 7) % len(live)]["text"]} for i in picks]
            changed.append(pool.pop(int(rng.integers(len(pool)))))
            add_documents(idx, _write(tmp_path / f"u{step}.jsonl", changed), update=True, config=NO_AUTO,
                          model=model)
            ids = {d["_id"] for d in changed}
            live = [d for d in live if d["_id"] not in ids] + changed
    reader = IndexReader.open(idx)
    assert reader.doc_ids == [d["_id"] for d in live] and reader.num_live == len(live)
    assert reader.num_docs > reader.num_live  # deleted rows wait for compaction
    ref = tmp_path / "ref"
    build_index(_write(tmp_path / "final.jsonl", live), ref, _cfg(model_dir))
    # the stored states of every live row are the fresh build's (up to batch composition, see KINDS)
    fresh = IndexReader.open(ref)
    for a, b in zip(reader.get_states(reader.live_rows()), fresh.get_states(range(fresh.num_docs))):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
    _compare(idx, ref, model)
    result = compact_index(idx)
    assert result.compacted and result.info["deleted_docs"] == 0 and result.info["num_rows"] == len(live)
    assert index_info(idx)["num_shards"] == -(-len(live) // 8)  # merged into full segments
    _compare(idx, ref, model)
    assert compact_index(idx).compacted is False  # already compact: nothing written
    verify_shards(idx, read_manifest(idx))


def test_auto_compaction_policy_and_drift(tmp_path, model_dir, docs):
    model = MiceModel.load(model_dir)
    idx = tmp_path / "idx"
    build_index(_write(tmp_path / "c.jsonl", docs[:16]), idx, _cfg(model_dir, codec="int8-dim", dense="none"))
    r = delete_documents(idx, [d["_id"] for d in docs[:2]])  # 2/16 deleted: below 0.2
    assert not r.compacted and r.info["deleted_docs"] == 2
    r = add_documents(idx, _write(tmp_path / "a.jsonl", docs[16:20]), model=model)
    drift = r.info["codec_drift"]
    assert drift["added_docs"] == 4 and drift["added_relative_error"] > 0 and drift["baseline_relative_error"] > 0
    r = delete_documents(idx, [d["_id"] for d in docs[2:4]])  # 4/20 = 0.2: the policy compacts
    assert r.compacted and r.info["deleted_docs"] == 0 and r.info["num_docs"] == 16
    assert r.info["codec_drift"] == drift  # kept through compaction
    assert IndexReader.open(idx).doc_ids == [d["_id"] for d in docs[4:20]]


def test_refit_reencodes_with_a_new_codec(tmp_path, model_dir, docs):
    model = MiceModel.load(model_dir)
    idx = tmp_path / "idx"
    build_index(_write(tmp_path / "c.jsonl", docs[:10]), idx, _cfg(model_dir, codec="int8-dim", dense="none"))
    add_documents(idx, _write(tmp_path / "a.jsonl", docs[10:14]), model=model, config=NO_AUTO)
    delete_documents(idx, [docs[0]["_id"]], config=NO_AUTO)
    r = compact_index(idx, refit=True, model=model)
    assert r.info["codec_drift"] is None and r.info["deleted_docs"] == 0 and r.info["num_docs"] == 13
    ref = tmp_path / "ref"
    build_index(_write(tmp_path / "f.jsonl", docs[1:14]), ref, _cfg(model_dir, codec="int8-dim", dense="none"))
    a, b = IndexReader.open(idx), IndexReader.open(ref)
    assert a.doc_ids == b.doc_ids and a.codec.fingerprint() == b.codec.fingerprint()


def test_searcher_keeps_its_commit_point_and_the_server_reopens(tmp_path, model_dir, docs):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mice_index.serve import create_app

    model = MiceModel.load(model_dir)
    idx = tmp_path / "idx"
    build_index(_write(tmp_path / "c.jsonl", docs[:12]), idx, _cfg(model_dir, dense="none"))
    cfg = SearchConfig(candidates="bm25", scorer=FP32, depth=12)
    old = Searcher.open(idx, model=model, config=cfg)
    before = _ranked(old, ["how do honey bees make honey", "volcano eruption lava", "bread dough"])
    params = {"q": "volcano honey bees unique-marker-term", "k": 5, "candidates": "bm25"}
    marker = {"_id": "new-1", "title": "unique-marker-term", "text": "unique-marker-term volcano honey bees"}
    with TestClient(create_app(old)) as client:
        assert client.get("/search", params=params).status_code == 200
        codes, stop = [], threading.Event()

        def hammer():  # requests all along the two commits: none may fail
            while not stop.is_set():
                codes.append(client.get("/search", params=params).status_code)

        worker = threading.Thread(target=hammer)
        worker.start()
        try:
            add_documents(idx, _write(tmp_path / "a.jsonl", [marker, *docs[12:14]]), model=model)
            delete_documents(idx, [docs[0]["_id"]], config=NO_AUTO)  # a second commit: the old one's files go
        finally:
            stop.set()
            worker.join()
        assert codes and set(codes) == {200}, codes
        got = client.get("/search", params=params)  # the server reopens between requests
        assert got.status_code == 200, got.text
        assert got.json()["results"][0]["hits"][0]["doc_id"] == "new-1"
        assert client.get("/health").json()["documents"] == 12 + 3 - 1
    # a searcher opened before one add keeps its commit point until reopened
    idx2 = tmp_path / "idx2"
    build_index(_write(tmp_path / "c.jsonl", docs[:12]), idx2, _cfg(model_dir, dense="none"))
    old = Searcher.open(idx2, model=model, config=cfg)
    add_documents(idx2, _write(tmp_path / "a.jsonl", [marker, *docs[12:14]]), model=model)
    queries = ["how do honey bees make honey", "volcano eruption lava", "bread dough"]
    assert not old.is_current() and _ranked(old, queries) == before
    assert "new-1" not in [h.doc_id for h in old.search(params["q"], k=5)]
    assert old.reopened().search(params["q"], k=5)[0].doc_id == "new-1"
    # two commits later its files are gone: what it holds open (memory maps, cached row groups) still
    # gives its own commit's results; a file it must open by path raises IndexChanged; never a mix
    delete_documents(idx2, [docs[0]["_id"]], config=NO_AUTO)
    assert not (idx2 / "bm25").exists()  # the build's files were removed
    try:
        assert _ranked(old, queries) == before
    except IndexChanged:
        pass
    fresh = IndexReader.open(idx2)
    old.reader._groups.clear()  # force by-path opens of its (removed) tables
    with pytest.raises(IndexChanged):
        old.reader.doc_ids_of([0])
    assert docs[0]["_id"] not in fresh.doc_ids and fresh.deleted[0]


# -- bad input: one line, exit 2, nothing written --
def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["mice-index", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr()


def _tree(root):
    return sorted((p.relative_to(root).as_posix(), p.read_bytes() if p.is_file() else None)
                  for p in root.rglob("*") if p.name != ".lock")


def test_bad_input_one_line_exit_2_nothing_written(tmp_path, model_dir, docs, minilm_dir, monkeypatch, capsys):
    idx = tmp_path / "idx"
    build_index(_write(tmp_path / "c.jsonl", docs[:10]), idx, _cfg(model_dir, dense="none"))
    before = _tree(idx)
    cases = [
        (["delete", "--index", idx, "--ids", docs[1]["_id"], "nope-1", "nope-2"],
         "2 of the 3 ids to delete ('nope-1', 'nope-2') are not in the index"),
        (["add", "--index", idx, "--corpus", _write(tmp_path / "dup.jsonl", docs[3:5] + docs[10:11]),
          "--model", model_dir],
         "2 of the 3 documents to add ('bee04', 'bee05') are already in the index; pass --update"),
        (["add", "--index", idx, "--corpus", _write(tmp_path / "dup2.jsonl", docs[10:11] * 2),
          "--model", model_dir], "duplicate"),
        (["delete", "--index", idx, "--ids", *[d["_id"] for d in docs[:10]]], "would leave the index empty"),
        (["add", "--index", tmp_path / "nowhere", "--corpus", tmp_path / "c.jsonl"], "not found"),
    ]
    write_tiny_bert(tmp_path / "other", minilm_dir, seed=9)
    other = MiceModel.from_pretrained(tmp_path / "other", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=64, max_query_length=16).save(tmp_path / "other-mice")
    cases.append((["add", "--index", idx, "--corpus", _write(tmp_path / "new.jsonl", docs[10:12]), "--model", other],
                  "refusing to mix two models"))
    capsys.readouterr()
    for args, match in cases:
        code, out = _cli(monkeypatch, capsys, *args)
        err = " ".join(out.err.split())
        assert code == 2 and match in err, (args, out.err)
        assert err.startswith("error:") and "Traceback" not in out.err
        assert _tree(idx) == before, args
    # an index whose rows carry passages: add and compact would drop them, so they refuse (for now)
    from dataclasses import replace

    from mice_index.store.manifest import Passages, write_manifest

    plain = read_manifest(idx)
    write_manifest(idx, replace(plain, settings=replace(plain.settings, passages=Passages(64, 32))))
    for args in (["add", "--index", idx, "--corpus", tmp_path / "new.jsonl", "--model", model_dir],
                 ["compact", "--index", idx]):
        code, out = _cli(monkeypatch, capsys, *args)
        assert code == 2 and "not supported yet" in out.err, out.err
    write_manifest(idx, plain)
    before = _tree(idx)
    # two writers: the existing lock
    with IndexLock(idx):
        with pytest.raises(IndexBusyError, match="writing this index"):
            delete_documents(idx, [docs[0]["_id"]])
    # an id file works through the CLI, and the API says how many
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{docs[0]['_id']}\n\n{docs[1]['_id']}\n")
    code, out = _cli(monkeypatch, capsys, "delete", "--index", idx, "--ids", ids)
    assert code in (0, None) and "2 deleted" in out.out
    assert IndexReader.open(idx).doc_ids == [d["_id"] for d in docs[2:10]]


# -- kill -9 at observable points: the previous or the next commit, and a re-run finishes --
_KILLER = """
import os, signal, sys
from mice_index.store import layout as L, writer as W
import mice_index.update as U
point = os.environ["KILL_POINT"]
def die():
    os.kill(os.getpid(), signal.SIGKILL)
def after(mod, name, when=lambda *a, **k: True):
    f = getattr(mod, name)
    def wrapped(*a, **k):
        out = f(*a, **k)
        if when(*a, **k):
            die()
        return out
    setattr(mod, name, wrapped)
def before(mod, name):
    f = getattr(mod, name)
    def wrapped(*a, **k):
        die()
    setattr(mod, name, wrapped)
if point == "segment":
    after(W.ShardWriter, "commit")
elif point == "candidates":
    after(L, "commit_dir", lambda tmp, final: final.name.startswith("bm25-"))
elif point == "manifest":
    before(L, "write_json_atomic")
elif point == "committed":
    after(L, "write_json_atomic")
from mice_index.cli import main
main()
"""


@pytest.mark.parametrize("op,point", [pytest.param("add", "segment", marks=pytest.mark.slow),
                                      pytest.param("add", "manifest", marks=pytest.mark.slow), ("add", "committed"),
                                      ("delete", "candidates"), ("compact", "segment"),
                                      pytest.param("compact", "committed", marks=pytest.mark.slow)])
def test_kill9_leaves_previous_or_next_state_and_rerun_finishes(tmp_path, model_dir, docs, op, point, monkeypatch,
                                                                capsys):
    idx = tmp_path / "idx"
    build_index(_write(tmp_path / "c.jsonl", docs[:10]), idx, _cfg(model_dir, dense="none", shard_docs=4))
    delete_documents(idx, [docs[9]["_id"]], config=NO_AUTO)
    before = IndexReader.open(idx).doc_ids
    args = {"add": ["add", "--index", idx, "--corpus", _write(tmp_path / "a.jsonl", docs[10:16]), "--model",
                    model_dir, "--no-auto-compact", "--quiet"],
            "delete": ["delete", "--index", idx, "--ids", docs[0]["_id"], docs[5]["_id"], "--no-auto-compact"],
            "compact": ["compact", "--index", idx]}[op]
    after = {"add": before + [d["_id"] for d in docs[10:16]],
             "delete": [i for i in before if i not in (docs[0]["_id"], docs[5]["_id"])], "compact": before}[op]
    env = {**os.environ, "KILL_POINT": point, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _KILLER, *map(str, args)], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    state = IndexReader.open(idx).doc_ids  # a readable commit point ...
    assert state == (after if point == "committed" else before)  # ... the previous one, or the next
    verify_shards(idx, read_manifest(idx))
    hits = Searcher.open(idx, config=SearchConfig(candidates="bm25", rerank="none")).search("honey bees", k=3)
    assert len(hits) == 3
    code, out = _cli(monkeypatch, capsys, *args)  # the same command again
    assert code in (0, None), out.err
    assert IndexReader.open(idx).doc_ids == after
    if point == "committed" and op != "compact":
        assert "already applied" in out.out
    verify_shards(idx, read_manifest(idx))
    leftovers = [p.name for p in [*idx.iterdir(), *(idx / "shards").iterdir()] if p.name.startswith(".tmp-")]
    assert not leftovers


def test_fields_follow_adds_deletes_and_compaction(tmp_path, model_dir, docs):
    """Document fields (filters) of added rows are stored, deleted rows never match a filter, and a
    filtered search equals a fresh build's, also after compaction."""
    model = MiceModel.load(model_dir)
    with_year = [{**d, "year": 2000 + i % 5} for i, d in enumerate(docs[:16])]
    cfg = _cfg(model_dir, dense="none", fields=("year:int",))
    idx, ref = tmp_path / "idx", tmp_path / "ref"
    build_index(_write(tmp_path / "c.jsonl", with_year[:10]), idx, cfg)
    changed = {**with_year[2], "year": 2004}
    add_documents(idx, _write(tmp_path / "a.jsonl", [*with_year[10:16], changed]), update=True, model=model,
                  config=NO_AUTO)
    delete_documents(idx, [with_year[4]["_id"]], config=NO_AUTO)
    final = [d for d in with_year[:10] if d["_id"] not in (changed["_id"], with_year[4]["_id"])]
    final += [*with_year[10:16], changed]
    build_index(_write(tmp_path / "f.jsonl", final), ref, cfg)
    search = SearchConfig(candidates="bm25", rerank="none", depth=12)

    def hits(index):
        s = Searcher.open(index, model=model, config=search)
        return [[(h.doc_id, round(h.score, 5)) for h in s.search(q, k=12, filter="year >= 2003")]
                for q in ("honey bees hive", "volcano lava eruption", "bread dough")]

    want = hits(ref)
    assert hits(idx) == want and all(want)
    assert all(d["year"] >= 2003 for d in final if d["_id"] in {i for q in want for i, _ in q})
    compact_index(idx)
    assert hits(idx) == want
