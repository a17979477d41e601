"""The ensemble teacher: n-way fusion, members over the whole corpus, caching, student negatives."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mice_index.candidates import Candidates, fuse, fuse_lists
from mice_index.errors import MiceIndexError, SearchError
from mice_index.train import Trainer
from mice_index.train.config import TEACHER_MEMBERS, TrainConfigError, load_config
from mice_index.train.data import _pick_list
from mice_index.train.ensemble import EnsembleTeacher
from mice_index.train.members import MEMBERS, MemberCache, MemberUnavailableError, _need

from tests.test_train import route, tiny_bert_dir, write_corpus  # noqa: F401  (fixtures)

DOCS = ["the tide rises with the moon over the harbour",
        "bread dough rises slowly in a warm kitchen",
        "glaciers carve deep valleys in the mountains",
        "the moon pulls the ocean and makes tides",
        "volcanic islands form over hot spots in the ocean floor",
        "sourdough starter needs flour and water every day"]


def _cands(rows, scores):
    return Candidates(np.array(rows, np.int64), np.array(scores, np.float32))


def test_fuse_lists_of_two_equals_fuse():
    rng = np.random.default_rng(0)
    a = _cands([rng.permutation(20)[:8] for _ in range(3)], np.sort(rng.normal(size=(3, 8)))[:, ::-1])
    b = _cands([rng.permutation(20)[:8] for _ in range(3)], np.sort(rng.normal(size=(3, 8)))[:, ::-1])
    for method in ("zscore", "rrf", "minmax"):
        x, y = fuse(a, b, method, k=10), fuse_lists([a, b], method, k=10)
        assert np.array_equal(x.rows, y.rows) and np.array_equal(x.scores, y.scores)


def test_fuse_lists_weights_by_hand():
    # one query; list A ranks rows 0,1; list B ranks rows 1,2 (z-scores: +1 / -1 each)
    a, b = _cands([[0, 1]], [[2.0, 1.0]]), _cands([[1, 2]], [[5.0, 3.0]])
    out = fuse_lists([a, b], "zscore", k=3, weights=[3.0, 1.0])
    # row 0: 3*1 + 1*min(-1) = 2; row 1: 3*(-1) + 1 = -2; row 2: 3*min(-1) + (-1) = -4
    assert out.rows.tolist() == [[0, 1, 2]]
    assert out.scores.tolist() == [[2.0, -2.0, -4.0]]
    assert fuse_lists([a, b], k=3, weights=[0.0, 1.0]).rows.tolist() == [[1, 2, -1]]  # weight 0: ignored
    with pytest.raises(SearchError, match="2 weights for 3 lists"):
        fuse_lists([a, b, a], weights=[1, 1])
    with pytest.raises(SearchError, match="query counts differ"):
        fuse_lists([a, _cands([[0], [1]], [[1.0], [1.0]])])


def test_member_registry_matches_config_choices():
    assert set(MEMBERS) == set(TEACHER_MEMBERS)


def test_ensemble_promotes_what_one_member_finds(tmp_path):
    """A document only the dense member finds (no shared word) still reaches the teacher's list."""
    emb = np.eye(len(DOCS), dtype=np.float32)
    teacher = EnsembleTeacher(DOCS, ("bm25", "dense"), depth=6,
                              doc_embeddings=emb, embed_queries=lambda qs: np.tile(emb[4], (len(qs), 1)))
    lists = teacher.member_lists(["moon tide"])
    assert 4 not in lists["bm25"].rows[0]  # BM25 cannot find row 4 ...
    fused = teacher.label(["moon tide"])
    assert 4 in fused.rows[0]  # ... the ensemble's list holds it
    assert set(fused.rows[0][fused.rows[0] >= 0]) == set(lists["bm25"].rows[0][lists["bm25"].rows[0] >= 0]) | {0, 1, 2, 3, 4, 5}
    # equal weights with members bm25 + dense is the hybrid first stage
    hybrid = fuse(lists["bm25"], lists["dense"], "zscore", k=6)
    assert np.array_equal(fused.rows, hybrid.rows)


def test_ensemble_errors():
    with pytest.raises(MiceIndexError, match="unknown member"):
        EnsembleTeacher(DOCS, ("bm25", "colbert"))
    with pytest.raises(MiceIndexError, match="1 weights for 2 members"):
        EnsembleTeacher(DOCS, ("bm25", "dense"), (1.0,))
    with pytest.raises(MiceIndexError, match="dense embeddings"):
        EnsembleTeacher(DOCS, ("dense",))



def test_missing_member_package(monkeypatch):
    """A member without its package: one error line with the install command."""
    from mice_index.train import members as M

    monkeypatch.setitem(M.PACKAGES, "e5", ("no_such_module_here", "no-such-pkg"))
    with pytest.raises(MemberUnavailableError, match="pip install no-such-pkg"):
        _need("e5")
    with pytest.raises(MemberUnavailableError, match="pip install no-such-pkg"):
        EnsembleTeacher(DOCS, ("bm25", "e5"), doc_embeddings=np.eye(6, dtype=np.float32))


def test_config_checks_members_and_weights():
    with pytest.raises(TrainConfigError, match="teacher.members"):
        load_config(None, ["teacher.kind='ensemble'", "teacher.members=['bm25','bert']"])
    with pytest.raises(TrainConfigError, match="teacher.weights"):
        load_config(None, ["teacher.kind='ensemble'", "teacher.members=['bm25','e5']", "teacher.weights=[1.0]"])
    with pytest.raises(TrainConfigError, match="teacher.members"):
        load_config(None, ["teacher.kind='ensemble'", "teacher.members=[]"])
    assert load_config(None, ["teacher.kind='ensemble'"]).teacher.members == ("bm25", "dense")
    with pytest.raises(TrainConfigError, match="student_negatives"):
        load_config(None, ["data.hard_negatives=2", "data.student_negatives=3"])
    cfg = load_config(None, ["teacher.kind='ensemble'", "teacher.members=['bm25','splade']", "teacher.weights=[1, 2]"])
    assert cfg.teacher.members == ("bm25", "splade") and cfg.teacher.weights == (1.0, 2.0)


@pytest.mark.parametrize("member", ["splade", "e5"])
def test_packaged_members_rank_and_cache(tmp_path, member):
    """The real offline members: the on-topic document first; the cache is written, reused, and
    refused for other documents."""
    cls = MEMBERS[member]
    cache = MemberCache(tmp_path)
    first = cls(DOCS, doc_ids=[f"d{i}" for i in range(len(DOCS))], cache=cache, key="c")
    top = first.search(["why does the ocean have tides", "how to feed a sourdough starter"], 3)
    assert top.rows[0][0] in (0, 3) and top.rows[1][0] == 5
    folder = tmp_path / member / "c"
    assert (folder / "meta.json").exists()
    stamp = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    again = cls(DOCS, doc_ids=[f"d{i}" for i in range(len(DOCS))], cache=cache, key="c")
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamp  # read, not re-encoded
    assert np.array_equal(again.search(["tides"], 3).rows, first.search(["tides"], 3).rows)
    other = cls(DOCS[::-1], doc_ids=[f"d{i}" for i in range(len(DOCS))], cache=cache, key="c")
    assert other.search(["how to feed a sourdough starter"], 1).rows[0][0] == 0  # re-encoded: reversed order


def test_pick_list_takes_student_negatives_first():
    rows = np.array([7, 3, 5, 9, 1, 4])
    scores = np.array([6.0, 5, 4, 3, 2, 1])
    r, s = _pick_list(rows, scores, 7, size=4, hard=2, rng=np.random.default_rng(0), student_top=[4, 7, 9])
    assert r[:3] == [7, 4, 9]  # positive, then the student's own top negatives, in its order
    assert s[:3] == [6.0, 1.0, 3.0]  # each with its teacher score
    r, _ = _pick_list(rows, scores, 7, size=4, hard=2, rng=np.random.default_rng(0), student_top=[4])
    assert r[:3] == [7, 4, 3]  # then the teacher's top


def test_ensemble_pseudo_route_with_student_negatives(route, tmp_path):
    corpus = write_corpus(tmp_path / "big.jsonl", n=30)
    cfg = route(data={"corpora": (str(corpus),), "queries": None, "max_queries_per_corpus": 10,
                      "dev_queries_per_corpus": 2, "depth": 10, "dev_candidates": 5, "hard_negatives": 2,
                      "student_negatives": 1, "student_depth": 5},
                teacher={"kind": "ensemble", "members": ("bm25", "dense", "splade"), "path": None,
                         "positive_bonus": 1.0},
                train={"steps": 1})
    trainer = Trainer(cfg)
    model, data = trainer.prepare()
    assert data.train and all(e.rows[0] in e.relevant for e in data.train)
    assert list((tmp_path / "out" / "cache" / "teacher" / "splade").glob("big*/meta.json"))
    res = trainer.train(model, data)
    assert res.steps == 1


def test_cli_adapts_the_shipped_model_to_a_corpus(tmp_path):
    """`mice-index train --teacher ensemble --corpus C --init default`: the shipped model, adapted
    without labels; the result is a delta over the same base model with changed weights."""
    from typer.testing import CliRunner

    from mice_index.cli import app
    from mice_index.defaults import DEFAULT_MODEL_DIR
    from mice_index.model import MiceModel

    corpus = write_corpus(tmp_path / "mine.jsonl", n=24)
    out = tmp_path / "adapted"
    res = CliRunner().invoke(app, [
        "train", "--teacher", "ensemble", "--corpus", str(corpus), "--init", "default", "--output", str(out),
        "--steps", "2", "--quiet", "--set", "data.max_queries_per_corpus=8", "--set", "data.dev_queries_per_corpus=2",
        "--set", "data.depth=20", "--set", "data.dev_candidates=5", "--set", "train.threads=1",
        "--set", "teacher.members=['bm25','dense','splade']"])
    assert res.exit_code == 0, res.output
    shipped, adapted = MiceModel.load(DEFAULT_MODEL_DIR), MiceModel.load(out / "model")
    assert adapted.fingerprint() == shipped.fingerprint()  # same bottom: existing indexes stay valid
    assert adapted.config.score_head == shipped.config.score_head
    a, b = shipped.state_dict(), adapted.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("interaction."))
    assert list((out / "cache" / "teacher" / "splade").glob("mine*/meta.json"))
    bad = CliRunner().invoke(app, ["train", "--teacher", "ensemble", "--corpus", str(corpus), "--init", "default",
                                   "--output", str(tmp_path / "x"), "--set", "teacher.members=['bm25','t5']"])
    assert bad.exit_code != 0 and "teacher.members" in str(bad.exception)
