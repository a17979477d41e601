"""`mice-index train`: losses, teacher files, pseudo-queries, training, resume, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mice_index.errors import IndexError_, MiceIndexError, ModelError
from mice_index.train import Trainer, listwise_kl, load_config, margin_mse, with_overrides
from mice_index.train.config import PseudoSpec, TrainConfigError
from mice_index.train.data import EmptyTrainingSetError, pseudo_queries, load_corpus
from mice_index.train.pseudo import document_frequencies, pseudo_query
from mice_index.train.states import load_or_encode
from mice_index.train.teachers import TeacherFileError, read_msmarco_triplets

WORDS = ("alpha beta gamma delta epsilon zeta theta kappa lambda sigma omega river mountain forest "
         "ocean desert valley island canyon glacier volcano meadow prairie swamp reef tundra").split()


def write_corpus(path, n=12, seed=0):
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for i in range(n):
            words = rng.choice(WORDS, size=30).tolist()
            title = " ".join(rng.choice(WORDS, size=3).tolist())
            f.write(json.dumps({"_id": f"d{i}", "title": title, "text": " ".join(words) + ". " + " ".join(words[:8]) + "."}) + "\n")
    return path


def write_queries(path, n=6):
    with open(path, "w") as f:
        for i in range(n):
            f.write(f"q{i}\t{WORDS[i]} {WORDS[i + 5]} {WORDS[i + 10]}\n")
    return path


def write_jsonl_teacher(path, n_queries=6, n_docs=12, per_query=5):
    with open(path, "w") as f:
        for q in range(n_queries):
            for j in range(per_query):
                d = (q * 3 + j) % n_docs
                f.write(json.dumps({"query_id": f"q{q}", "doc_id": f"d{d}", "score": float(per_query - j)}) + "\n")
    return path


def write_msmarco(path, n_queries=6, n_docs=12):
    with open(path, "w") as f:
        for q in range(n_queries):
            for j in range(3):
                f.write(f"{5.0 + j}\t{-1.0 - j}\tq{q}\td{(q + j) % n_docs}\td{(q + j + 5) % n_docs}\n")
    return path


@pytest.fixture
def tiny_bert_dir(tmp_path, minilm_dir):
    """A tiny random BERT with a large init scale: with the default 0.02 the document barely moves
    the [CLS] and the listwise loss (invariant to a per-query shift) has ~1e-12 gradients."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, initializer_range=0.3)
    BertModel(cfg).eval().save_pretrained(str(tmp_path / "tiny-bert"), safe_serialization=True)
    AutoTokenizer.from_pretrained(str(minilm_dir)).save_pretrained(str(tmp_path / "tiny-bert"))
    return tmp_path / "tiny-bert"


@pytest.fixture
def route(tmp_path, tiny_bert_dir):
    corpus = write_corpus(tmp_path / "corpus.jsonl")
    queries = write_queries(tmp_path / "queries.tsv")
    teacher = write_jsonl_teacher(tmp_path / "teacher.jsonl")

    def make(**sections):
        base = load_config(None, [
            f"output={str(tmp_path / 'out')!r}", f"model.init={str(tiny_bert_dir)!r}",
            "model.fusion_layer=2", "model.num_interaction_layers=2", "model.max_doc_length=64",
            "model.max_query_length=16", f"data.corpora=[{str(corpus)!r}]", f"data.queries={str(queries)!r}",
            "data.list_size=4", "data.hard_negatives=1", "data.dev_fraction=0.0", "teacher.kind='file'",
            f"teacher.path={str(teacher)!r}", "teacher.format='jsonl'", "train.steps=6", "train.batch_queries=2",
            "train.checkpoint_every=2", "train.eval_every=100", "train.warmup=1", "train.threads=1",
            "train.lr=1e-3", "train.head_lr=1e-2",
        ])
        return with_overrides(base, **sections)

    make.tmp = tmp_path
    return make


# ------------------------------------------------------------------ losses


def test_margin_mse_hand_values():
    assert float(margin_mse(torch.tensor([[3.0, 1.0]]), torch.tensor([[2.0, 1.0]]))) == pytest.approx(1.0)
    # list of 3: student margins (2, 3), teacher margins (1, 0) -> errors 1, 9
    s, t = torch.tensor([[3.0, 1.0, 0.0]]), torch.tensor([[2.0, 1.0, 2.0]])
    assert float(margin_mse(s, t)) == pytest.approx(5.0)
    assert float(margin_mse(s, t, torch.tensor([[True, True, False]]))) == pytest.approx(1.0)


def test_listwise_kl_hand_values():
    s = torch.tensor([[0.0, 0.0]])
    t = torch.tensor([[math.log(3.0), 0.0]])  # p_teacher = (0.75, 0.25)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert float(listwise_kl(s, t)) == pytest.approx(expected, abs=1e-6)
    assert float(listwise_kl(t, t)) == pytest.approx(0.0, abs=1e-7)
    # temperature 2 halves the teacher logits; a masked third entry changes nothing
    t2 = torch.tensor([[2 * math.log(3.0), 0.0, 9.0]])
    s2 = torch.tensor([[0.0, 0.0, -5.0]])
    got = listwise_kl(s2, t2, torch.tensor([[True, True, False]]), temperature=2.0)
    assert float(got) == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ teacher files


def test_msmarco_file_parsing(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("1.5\t-2\tq1\tp1\tp2\n\n3 4 q2 p3 p4\n")
    got = [t for _, t in read_msmarco_triplets(path)]
    assert got[0].pos_score == 1.5 and got[0].neg_id == "p2" and got[1].query_id == "q2"
    path.write_text("1.5\t-2\tq1\tp1\n")
    with pytest.raises(TeacherFileError, match=r"t.tsv:1: expected 5 fields"):
        list(read_msmarco_triplets(path))
    path.write_text("x\t-2\tq1\tp1\tp2\n")
    with pytest.raises(TeacherFileError, match="score_pos 'x' is not a number"):
        list(read_msmarco_triplets(path))


def test_unknown_ids_in_teacher_file(route):
    bad = route.tmp / "bad.tsv"
    bad.write_text("5\t1\tq0\td1\td2\n5\t1\tq1\td3\tnope\n")
    cfg = route(teacher={"path": str(bad), "format": "msmarco-tsv"})
    with pytest.raises(TeacherFileError, match=r"bad.tsv:2: unknown document id 'nope'"):
        Trainer(cfg).prepare()
    bad.write_text('{"query_id": "zz", "doc_id": "d1", "score": 1}\n')
    with pytest.raises(TeacherFileError, match=r"bad.tsv:1: unknown query id 'zz'"):
        Trainer(route(teacher={"path": str(bad), "format": "jsonl"})).prepare()


def test_empty_training_set(route):
    lonely = route.tmp / "lonely.jsonl"
    lonely.write_text('{"query_id": "q0", "doc_id": "d1", "score": 1}\n')  # one doc per query: no list
    with pytest.raises(EmptyTrainingSetError, match="empty"):
        Trainer(route(teacher={"path": str(lonely)})).prepare()
    with pytest.raises(EmptyTrainingSetError, match="no corpora"):
        Trainer(route(data={"corpora": ()})).prepare()


def test_pickle_checkpoint_refused(route):
    folder = route.tmp / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text((route.tmp / "tiny-bert" / "config.json").read_text())
    torch.save({"w": torch.zeros(1)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="safetensors only"):
        Trainer(route(model={"init": str(folder)})).prepare()


def test_config_errors(tmp_path):
    with pytest.raises(TrainConfigError, match=r"unknown option\(s\) \['stepz'\]"):
        load_config(None, ["train.stepz=3"])
    with pytest.raises(TrainConfigError, match="train.loss must be one of"):
        load_config(None, ["train.loss='mse'"])
    bad = tmp_path / "c.toml"
    bad.write_text("[train\n")
    with pytest.raises(TrainConfigError, match="invalid TOML"):
        load_config(bad)


# ------------------------------------------------------------------ pseudo-queries


def test_pseudo_queries_deterministic_and_mixed(tmp_path, tiny_bert_dir):
    from mice_index.model import MiceModel

    tiny_mice = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=2, num_interaction_layers=2)
    corpus = load_corpus(str(write_corpus(tmp_path / "c.jsonl", n=40)), tiny_mice)
    cfg = load_config(None, ["data.max_queries_per_corpus=30", "data.dev_queries_per_corpus=5"])
    a, b = pseudo_queries(cfg, corpus), pseudo_queries(cfg, corpus)
    assert a == b
    queries, rows, kinds, dev = a
    assert sum(dev) == 5 and len(queries) == 35 and set(kinds) == {"title", "sentence", "span", "keywords"}
    df = document_frequencies(corpus.texts)
    only_kw = PseudoSpec(title=0, sentence=0, span=0, keywords=1)
    kind, text = pseudo_query("", corpus.bodies[0], only_kw, np.random.default_rng(0), df, 40)
    assert kind == "keywords" and 3 <= len(text.split()) <= 6
    assert pseudo_query("", "", PseudoSpec(), np.random.default_rng(0), df, 40) is None


# ------------------------------------------------------------------ training


def _mean_loss(trainer, model, data):
    from mice_index.train.loss import compute_loss

    model.eval()
    with torch.no_grad():
        s, m = trainer.scores(model, data, data.train)
        return float(compute_loss(trainer.cfg.train.loss, s, trainer.teacher_scores(data.train), m))


def test_training_decreases_loss(route):
    cfg = route(train={"steps": 40, "checkpoint_every": 100, "warmup": 2, "lr": 3e-3, "head_lr": 1e-2})
    trainer = Trainer(cfg)
    model, data = trainer.prepare()
    before = _mean_loss(trainer, model, data)
    trainer.train(model, data)
    after = _mean_loss(trainer, model, data)
    print(f"toy loss {before:.4f} -> {after:.4f}")
    assert after < before - 2e-3  # deterministic (seeded); the tiny random model learns slowly


def test_resume_reproduces_uninterrupted_run(route, tmp_path):
    full = Trainer(route(output=str(tmp_path / "full")))
    full.train()
    killed = Trainer(route(output=str(tmp_path / "resumed")))
    assert killed.train(stop_after=3).steps == 3  # "killed" after step 3; last checkpoint at step 2
    resumed = Trainer(route(output=str(tmp_path / "resumed"))).train()
    assert resumed.steps == 6
    a = load_file(str(tmp_path / "full" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


def test_resume_refuses_other_config(route, tmp_path):
    Trainer(route(output=str(tmp_path / "o"))).train(stop_after=2)
    with pytest.raises(MiceIndexError, match="another training configuration"):
        Trainer(route(output=str(tmp_path / "o"), train={"lr": 5e-4})).train()


def test_msmarco_route_with_marginmse(route):
    from mice_index.model import MiceModel

    tsv = write_msmarco(route.tmp / "ensemble.tsv")
    cfg = route(teacher={"path": str(tsv), "format": "msmarco-tsv"}, train={"loss": "marginmse", "steps": 3},
                model={"base_model": None})
    res = Trainer(cfg).train()
    model = MiceModel.load(res.model_dir)
    scores = model.score_texts("alpha beta", ["alpha beta gamma", "ocean reef"])
    assert torch.isfinite(scores).all()


def test_hybrid_pseudo_route_and_delta_checkpoint(route, tmp_path):
    """Pseudo-queries mined and labelled by the hybrid teacher (BM25 + the packaged MiniLM dense)."""
    from mice_index.model import MiceModel

    corpus = write_corpus(tmp_path / "big.jsonl", n=30)
    cfg = route(data={"corpora": (str(corpus),), "queries": None, "max_queries_per_corpus": 12,
                      "dev_queries_per_corpus": 3, "depth": 10, "dev_candidates": 5},
                teacher={"kind": "hybrid", "path": None, "positive_bonus": 1.0},
                train={"steps": 2, "eval_every": 1}, model={"save_dtype": "fp16"})
    trainer = Trainer(cfg)
    model, data = trainer.prepare()
    train_sources = {next(iter(e.relevant)) for e in data.train}
    dev_sources = {next(iter(e.relevant)) for e in data.dev}
    assert data.dev and not (train_sources & dev_sources)
    assert all(e.rows[0] in e.relevant for e in data.train)  # the source document leads each list
    res = trainer.train(model, data)
    assert {"pair_agreement", "nDCG@10", "teacher_nDCG@10"} <= set(res.dev)
    saved = load_file(str(res.model_dir / "model.safetensors"))
    assert saved and not any(k.startswith("bottom.") for k in saved)  # delta: bottom from base model
    assert all(v.dtype == torch.float16 for v in saved.values())
    assert not (res.model_dir / "tokenizer.json").exists()
    fresh = MiceModel.from_pretrained(cfg.model.init, fusion_layer=2, num_interaction_layers=2)
    assert MiceModel.load(res.model_dir).fingerprint() == fresh.fingerprint()


def test_state_cache_refuses_other_model(tmp_path, tiny_bert_dir, minilm_dir):
    from mice_index.model import MiceModel
    from tests.conftest import write_tiny_bert

    tiny_mice = MiceModel.from_pretrained(tiny_bert_dir, fusion_layer=2, num_interaction_layers=2)
    load_or_encode(tiny_mice, ["a", "b"], ["one doc", "two docs"], tmp_path, "c")
    write_tiny_bert(tmp_path / "other", minilm_dir, seed=1)
    other = MiceModel.from_pretrained(tmp_path / "other", fusion_layer=2, num_interaction_layers=2)
    with pytest.raises(IndexError_, match="fingerprint"):
        load_or_encode(other, ["a", "b"], ["one doc", "two docs"], tmp_path, "c")


def test_cli_train_and_error(route, tmp_path):
    from mice_index.cli import app

    tsv = write_msmarco(route.tmp / "ensemble.tsv")
    cfg = route.tmp / "cfg.toml"
    cfg.write_text(f"""
output = {str(tmp_path / 'cli-out')!r}
[model]
init = {str(route.tmp / 'tiny-bert')!r}
fusion_layer = 2
num_interaction_layers = 2
max_doc_length = 64
[data]
corpora = [{str(route.tmp / 'corpus.jsonl')!r}]
queries = {str(route.tmp / 'queries.tsv')!r}
[teacher]
kind = "file"
path = {str(tsv)!r}
[train]
steps = 2
threads = 1
""")
    ok = CliRunner().invoke(app, ["train", "--config", str(cfg), "--loss", "marginmse", "--quiet"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "cli-out" / "model" / "model.safetensors").exists()
    bad = CliRunner().invoke(app, ["train", "--config", str(cfg), "--set", "train.loss=mse"])
    assert bad.exit_code != 0 and isinstance(bad.exception, MiceIndexError)


def test_ict_cuts_the_pseudo_query_out_of_its_source(route, tmp_path):
    """Inverse Cloze Task: the positive is re-encoded without the query's words; other kinds,
    negatives and evaluation are untouched; states equal what the frozen bottom stores."""
    from mice_index.train.data import Example

    cfg = route(data={"ict": 1.0}, model={"score_head": "cls+maxsim"})
    trainer = Trainer(cfg)
    model, data = trainer.prepare()
    text = data.corpora[0].texts[3]
    query = " ".join(text.split()[12:17])  # (the corpus repeats a text's first 8 words at its end)
    batch = [Example(query, 0, (3, 5), (2.0, 1.0), frozenset([3]), "span"),
             Example(query, 0, (3, 5), (2.0, 1.0), frozenset([3]), "keywords"),
             Example("no such words here", 0, (3, 5), (2.0, 1.0), frozenset([3]), "sentence")]
    cut = trainer._cloze(data, batch, L=2)
    assert list(cut) == [0]  # only the span example's positive (pair 0); not found -> untouched
    assert query not in cut[0] and cut[0] == " ".join(text.split()[:12] + text.split()[17:])
    full = trainer._bottom_states(model, [text])[0]
    np.testing.assert_allclose(full.numpy(), data.corpora[0].states.get(3).astype(np.float32), atol=2e-2)
    assert Trainer(route(data={"ict": 0.0}))._cloze(data, batch, L=2) == {}
    res = trainer.train(model, data)  # trains with the cut positives
    assert res.steps == cfg.train.steps and math.isfinite(res.history[-1]["loss"])
    assert model.interaction.late is not None and model.config.score_head == "cls+maxsim"
