"""`build --overwrite` replaces only a mice-index index (a symlinked one: its target), and readers
hold one generation of an index: a Searcher or a server never mixes two builds (issue 17)."""

from __future__ import annotations

import json
import os
import sys

import pytest

from mice_index.build import BuildConfig, build_index
from mice_index.cli import main
from mice_index.errors import IndexError_
from mice_index.model import MiceModel
from mice_index.scorer import ScorerConfig
from mice_index.search import SearchConfig, Searcher
from mice_index.sources import Query, sample_collection
from mice_index.store import IndexChanged, read_manifest

from .conftest import write_tiny_bert

FP32 = ScorerConfig(dtype="fp32", quantize="none")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, minilm_dir):
    root = tmp_path_factory.mktemp("replace")
    write_tiny_bert(root / "tiny", minilm_dir, seed=3)
    model = MiceModel.from_pretrained(root / "tiny", fusion_layer=2, num_interaction_layers=2,
                                      max_doc_length=64, max_query_length=16)
    return model.save(root / "mice")


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """The sample corpus, and the same documents in reverse order (other rows for every id)."""
    root = tmp_path_factory.mktemp("corpora")
    lines = (sample_collection() / "corpus.jsonl").read_text().splitlines()
    forward, backward = root / "forward.jsonl", root / "backward.jsonl"
    forward.write_text("\n".join(lines) + "\n")
    backward.write_text("\n".join(reversed(lines)) + "\n")
    return forward, backward


def _build(corpus, index, model_dir, overwrite=False):
    build_index(corpus, index, BuildConfig(model=str(model_dir), codec="fp32", dtype="fp32", shard_docs=16,
                                           dense="none", overwrite=overwrite))  # BM25 + states: faster


def _cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["mice-index", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def _tree(root):
    return sorted((p.relative_to(root).as_posix(), p.read_bytes() if p.is_file() else None) for p in root.rglob("*"))


# -- 1. only a mice-index index may be replaced --

@pytest.mark.parametrize("manifest", [
    '{"name": "app"}',                                   # the input: another program's manifest
    '[1, 2, 3]',                                         # JSON, not an object
    '{"format_version": 3, "name": "x"}',                # looks versioned, is no index manifest
    'not json at all',                                   # unreadable, and the folder holds other files
])
def test_overwrite_refuses_a_folder_that_is_not_an_index(tmp_path, monkeypatch, capsys, model_dir, corpora, manifest):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "manifest.json").write_text(manifest)
    (proj / "src" / "main.js").write_text("code")
    before = _tree(proj)
    code, err = _cli(monkeypatch, capsys, "build", "--corpus", corpora[0], "--index", proj, "--model", model_dir,
                     "--overwrite")
    assert code == 2 and len(err.strip().splitlines()) <= 3, err  # one line (rich may wrap it)
    assert "mice-index" in err and "Traceback" not in err
    assert _tree(proj) == before and not any(p.name.startswith(".tmp-") for p in tmp_path.iterdir())
    # without --overwrite the refusal must not suggest it
    code, err = _cli(monkeypatch, capsys, "build", "--corpus", corpora[0], "--index", proj, "--model", model_dir)
    assert code == 2 and "--overwrite" not in err.replace("\n", "") and _tree(proj) == before


def test_overwrite_of_an_index_whose_manifest_is_damaged(tmp_path, model_dir, corpora):
    """A damaged index (unreadable manifest, nothing but index files) is what --overwrite is for;
    with a file of the user's beside it, the folder is not replaced."""
    idx = tmp_path / "idx"
    _build(corpora[0], idx, model_dir)
    (idx / "manifest.json").write_text("{broken")
    (idx / "notes.txt").write_text("mine")
    with pytest.raises(IndexError_, match="cannot read it as a mice-index manifest"):
        _build(corpora[1], idx, model_dir, overwrite=True)
    assert (idx / "notes.txt").read_text() == "mine" and (idx / "shards").is_dir()
    (idx / "notes.txt").unlink()
    _build(corpora[1], idx, model_dir, overwrite=True)
    assert read_manifest(idx).complete


# -- 7. a symlinked index: its target is replaced, the link stays --

def test_overwrite_of_a_symlinked_index_replaces_its_target(tmp_path, model_dir, corpora):
    disk = tmp_path / "other-disk"
    disk.mkdir()
    target, link = disk / "idx", tmp_path / "idx"
    _build(corpora[0], target, model_dir)
    os.symlink(target, link)
    first = read_manifest(link).generation
    for corpus in (corpora[1], corpora[0]):  # twice: every later --overwrite works as well
        _build(corpus, link, model_dir, overwrite=True)
        assert link.is_symlink() and os.readlink(link) == str(target)
        m = read_manifest(target)
        assert m.complete and m.generation != first
        first = m.generation
        leftovers = [p.name for d in (tmp_path, disk) for p in d.iterdir() if p.name.startswith(".tmp-")]
        assert leftovers == []
    assert Searcher.open(link, config=SearchConfig(rerank="none", candidates="bm25")).search("bees", k=1)


# -- 2. one generation per reader --

def test_a_searcher_never_mixes_two_builds(tmp_path, model_dir, corpora):
    idx = tmp_path / "idx"
    _build(corpora[0], idx, model_dir)
    config = SearchConfig(candidates="bm25", rerank="none", scorer=FP32)
    warm = Searcher.open(idx, config=config)
    before = [(h.doc_id, h.score) for h in warm.search("information retrieval honey bees", k=3)]
    cold = Searcher.open(idx, model=str(model_dir), config=SearchConfig(candidates="bm25", scorer=FP32))
    batch = Searcher.open(idx, config=config)
    _build(corpora[1], idx, model_dir, overwrite=True)  # the input: the reversed corpus

    fresh = Searcher.open(idx, config=config)
    want = [(h.doc_id, h.score) for h in fresh.search("information retrieval honey bees", k=3)]
    assert sorted(want) == sorted(before)  # same documents, other rows: the old bug gave other ids
    assert not warm.is_current() and not cold.is_current() and fresh.is_current()
    # a reader that must open a file of the replaced build says so instead of reading the new one
    with pytest.raises(IndexChanged, match="replaced"):
        cold.search("information retrieval honey bees", k=3)  # states and ids not opened yet
    try:
        got = [(h.doc_id, h.score) for h in warm.search("information retrieval honey bees", k=3)]
        assert got == before  # everything it needed was already open: still the old build, whole
    except IndexChanged:
        pass
    again = warm.reopened()
    assert again.is_current() and [(h.doc_id, h.score) for h in again.search("information retrieval honey bees", k=3)] == want
    reranked = cold.reopened()
    assert reranked.model is cold.model  # the model is not loaded again
    assert [h.doc_id for h in reranked.search("honey bees", k=3)] == \
        [h.doc_id for h in Searcher.open(idx, model=cold.model, config=cold.config).search("honey bees", k=3)]
    with pytest.raises(IndexChanged):  # batch runs too (the CLI prints it as one line, exit 2)
        batch.search_many([Query("q1", "honey bees"), Query("q2", "coral reef")], k=5)


def test_the_server_reloads_a_replaced_index_between_requests(tmp_path, model_dir, corpora):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mice_index.serve import create_app

    idx = tmp_path / "idx"
    _build(corpora[0], idx, model_dir)
    model = MiceModel.load(model_dir)
    searcher = Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32, candidates="bm25"))
    params = {"q": "information retrieval honey bees", "k": 3, "rerank": "none", "candidates": "bm25"}
    with TestClient(create_app(searcher)) as client:
        first = client.get("/search", params=params).json()["results"][0]["hits"]
        _build(corpora[1], idx, model_dir, overwrite=True)
        got = client.get("/search", params=params)
        assert got.status_code == 200, got.text
        fresh = Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32, candidates="bm25", rerank="none"))
        want = fresh.search(params["q"], k=3)
        hits = got.json()["results"][0]["hits"]
        assert [(h["doc_id"], h["title"]) for h in hits] == [(h.doc_id, h.title) for h in want]
        assert sorted(h["doc_id"] for h in hits) == sorted(h["doc_id"] for h in first)
        # MICE re-ranking on the new build equals a fresh searcher's
        mice = client.get("/search", params={**params, "rerank": "mice"}).json()["results"][0]["hits"]
        ref = Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32, candidates="bm25")).search(params["q"], k=3)
        assert [h["doc_id"] for h in mice] == [h.doc_id for h in ref]
        assert client.get("/health").json()["documents"] == fresh.reader.num_docs
        assert json.dumps(client.get("/info").json()).count(str(tmp_path)) == 0


# -- 5. dense.npy (read without a checksum by ivfpq's exact re-scoring): `info --verify` names it --

@pytest.mark.parametrize("damage", ["halve a row", "flip one byte"])
def test_info_verify_names_a_damaged_dense_npy(tmp_path, monkeypatch, capsys, damage):
    import shutil

    import numpy as np

    idx = tmp_path / "idx"
    shutil.copytree(_dense_index(tmp_path), idx)
    path = sorted(idx.glob("shards/*/dense.npy"))[0]
    if damage == "halve a row":  # the input: one document's vector halved, same file size
        v = np.load(path)
        v[3] *= 0.5
        np.save(path, v)
    else:
        data = bytearray(path.read_bytes())
        data[-5] ^= 0x01
        path.write_bytes(bytes(data))
    code, err = _cli(monkeypatch, capsys, "info", "--index", idx, "--verify")
    assert code == 2 and "dense.npy" in err and "checksum mismatch" in err.replace("\n", " ")
    code, _ = _cli(monkeypatch, capsys, "info", "--index", idx)
    assert code in (0, None)  # without --verify: not read (the README states the cost)


_DENSE: dict = {}


def _dense_index(tmp_path):
    """The sample collection indexed with the packaged default model (dense vectors in every
    shard), built once per session."""
    if "idx" not in _DENSE:
        root = tmp_path.parent / "dense-src"
        root.mkdir(exist_ok=True)
        build_index(sample_collection(), root / "idx", BuildConfig(codec="fp16", shard_docs=16, dtype="fp32"))
        _DENSE["idx"] = root / "idx"
    return _DENSE["idx"]
