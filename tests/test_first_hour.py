"""The first hour of a new user (issue 21): argument and path errors before torch is imported, the
default model without transformers, shipped model names, options that would be ignored refused,
the page starting from the server's defaults, /docs offline, no faiss warnings, progress lines
when stderr is not a terminal, honest explanations."""

from __future__ import annotations

import copy
import io
import json
import pickle
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from mice_index.checkpoints import resolve_model_path, shipped_names
from mice_index.cli.progress import BarProgress, LineProgress, task_progress
from mice_index.errors import ModelError
from mice_index.sources import sample_collection

from .test_search import _cli, built  # noqa: F401

HEAVY = ("torch", "transformers", "faiss", "zarr", "pyarrow")
RUN_CLI = ("import sys\nfrom mice_index.cli import main\nsys.argv = ['mice-index'] + sys.argv[1:]\n"
           "code = 0\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
           f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))\nprint('CODE', code)")


def run_cli(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", RUN_CLI, *map(str, args)], capture_output=True, text=True,
                          timeout=120, env=env)


# -- 1. errors before torch, the default model without transformers --

def test_argument_and_path_errors_come_before_torch(built, tmp_path):  # noqa: F811
    idx, _ = built
    q = tmp_path / "q.tsv"
    q.write_text("1\tbees\n")
    cases = [
        (["search", "--index", tmp_path / "nope", "--query", "bees"], "index folder not found"),
        (["search", "--index", idx, "--query", "bees", "--k", "0"], "--k must be positive, got 0"),
        (["search", "--index", idx, "--query", "bees", "--depth", "-1"], "--depth must be positive"),
        (["search", "--index", idx, "--query", "bees", "--candidates", "splade"], "unknown candidate generator"),
        (["search", "--index", idx, "--query", "bees", "--alpha", "2"], "--alpha must be in [0, 1]"),
        (["search", "--index", idx, "--query", "bees", "--run", tmp_path / "r.run"], "--run applies to --queries"),
        (["search", "--index", idx, "--queries", q, "--run", tmp_path / "r.run", "--json"], "--json works with one"),
        (["search", "--index", idx, "--queries", tmp_path / "none.tsv", "--run", tmp_path / "r.run"], "none.tsv"),
        (["build", "--corpus", sample_collection(), "--index", idx], "already holds a complete index"),
        (["build", "--corpus", tmp_path / "missing.jsonl", "--index", tmp_path / "new"], "missing.jsonl"),
        (["build", "--corpus", sample_collection(), "--index", tmp_path / "new", "--codec", "zip"], "unknown codec"),
        (["build", "--corpus", sample_collection(), "--index", tmp_path / "new", "--dense-kind", "ann"], "dense kind"),
        (["serve", "--index", tmp_path / "nope"], "index folder not found"),
        (["score", "--query", "bees", "--corpus", tmp_path / "missing.jsonl"], "missing.jsonl"),
    ]
    for args, message in cases:
        out = run_cli(*args)
        assert "CODE 2" in out.stdout and message in out.stderr, (args, out.stdout, out.stderr[-800:])
        assert "HEAVY []" in out.stdout, (args, out.stdout)
        assert len([line for line in out.stderr.splitlines() if line.strip()]) == 1, out.stderr
    assert not (tmp_path / "new").exists() and not (tmp_path / "r.run").exists()


def test_default_model_loads_without_transformers():
    code = ("import sys\nfrom mice_index.defaults import load_model\nm = load_model(None)\n"
            "print('TRANSFORMERS', 'transformers' in sys.modules, m.fingerprint())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "TRANSFORMERS False" in out.stdout, out.stderr[-2000:]


def test_fingerprint_is_the_same_with_the_transformers_tokenizer(minilm_dir):
    from mice_index.checkpoints import load_hf_tokenizer
    from mice_index.defaults import load_model
    from mice_index.model import MiceModel

    ours = load_model(None)
    theirs = MiceModel(ours.config, load_hf_tokenizer(Path(minilm_dir)))
    theirs.load_state_dict(ours.state_dict())
    theirs.eval()
    assert type(ours.tokenizer).__name__ == "FastTokenizer" and ours.fingerprint() == theirs.fingerprint()
    q = ["how do bees make honey", "the of and"]
    torch.testing.assert_close(ours.encode_queries(q)[0], theirs.encode_queries(q)[0], rtol=0, atol=0)


def test_a_tokenizer_that_transformers_would_change_goes_through_transformers(tmp_path, minilm_dir):
    from mice_index.tokenizer import load_fast_tokenizer

    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        (tmp_path / name).write_bytes((Path(minilm_dir) / name).read_bytes())
    assert load_fast_tokenizer(tmp_path) is not None
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({**config, "do_lower_case": False}))
    assert load_fast_tokenizer(tmp_path) is None  # BertTokenizerFast would rebuild the normalizer


def test_saved_tokenizer_reloads_equal(tmp_path):
    from mice_index.defaults import load_model
    from mice_index.tokenizer import load_fast_tokenizer

    model = load_model(None)
    model.tokenizer(["some text"], truncation=True, max_length=8)  # leaves truncation state behind
    model.tokenizer.save_pretrained(tmp_path)
    again = load_fast_tokenizer(tmp_path)
    assert again is not None and again.backend_tokenizer.to_str() != ""
    assert json.loads((tmp_path / "tokenizer.json").read_text())["truncation"] is None
    texts = ["Héllo wörld", "naïve café 東京 " * 50]
    want = model.tokenizer(texts, truncation=True, max_length=32)["input_ids"]
    assert again(texts, truncation=True, max_length=32)["input_ids"] == want
    for copied in (copy.deepcopy(model.tokenizer), pickle.loads(pickle.dumps(model.tokenizer))):  # Ray, with_config
        assert copied(texts, truncation=True, max_length=32)["input_ids"] == want


# -- 7. shipped model names --

def test_shipped_model_names_resolve_and_are_listed():
    from mice_index.defaults import DEFAULT_MODEL_DIR, load_model

    assert resolve_model_path("mice-minilm-l6") == DEFAULT_MODEL_DIR
    assert load_model("mice-minilm-l6").fingerprint() == load_model("default").fingerprint()
    with pytest.raises(ModelError) as err:
        resolve_model_path("mice-minilm-l12")
    for name in shipped_names():
        assert name in str(err.value)
    assert {"default", "mice-minilm-l6", "sentence-transformers/all-MiniLM-L6-v2"} <= set(shipped_names())


# -- 8. options that would be ignored are refused, nothing is written --

def test_ignored_options_are_refused(built, tmp_path, monkeypatch, capsys):  # noqa: F811
    idx, _ = built
    run = tmp_path / "q.run"
    code, out = _cli(monkeypatch, capsys, "search", "--index", idx, "--query", "tides", "--run", run)
    assert code == 2 and "--run applies to --queries (batch mode) only" in out.err and not run.exists()
    code, out = _cli(monkeypatch, capsys, "search", "--index", idx, "--queries", sample_collection(), "--run", run,
                     "--json")
    assert code == 2 and "--json works with one --query" in out.err and not run.exists()


# -- 3. the page starts from the server's defaults; 2. /docs offline --

@pytest.fixture(scope="module")
def served(built):  # noqa: F811
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mice_index.scorer import ScorerConfig
    from mice_index.search import SearchConfig, Searcher
    from mice_index.serve import BatchConfig, create_app

    idx, model = built
    searcher = Searcher.open(idx, model=model, config=SearchConfig(scorer=ScorerConfig(dtype="fp32")))
    searcher = searcher.with_config(candidates="bm25", rerank="none")
    with TestClient(create_app(searcher, BatchConfig(window_ms=0), k=3, model_name="default")) as client:
        yield client


def test_settings_are_the_servers_defaults(served):
    s = served.get("/settings").json()
    assert (s["k"], s["candidates"], s["rerank"]) == (3, "bm25", "none")
    assert s["model"] == "mice-minilm-l6 (default)" and "dense" in s["bm25_fallback"]
    assert s["explain"]["method"] == "cross-attention"  # the tiny test model has the paper's cls head
    r = served.get("/search", params={"q": "volcano"}).json()  # no parameters: the server's defaults
    assert r["settings"]["candidates"] == "bm25" and r["settings"]["rerank"] == "none" and len(r["results"][0]["hits"]) == 3
    page = served.get("/static/app.js").text
    assert 'fetch("settings")' in page and "defaults.candidates" in page and "defaults.rerank" in page


def test_bm25_fallback_is_shown(served):
    r = served.get("/search", params={"q": "the of and"}).json()["results"][0]
    assert r["hits"] and "dense candidates were used" in r["note"]
    assert "note" not in served.get("/search", params={"q": "volcano"}).json()["results"][0]


def test_docs_work_offline(served):
    page = served.get("/docs")
    assert page.status_code == 200 and "docs-assets/swagger-ui-bundle.js" in page.text
    assert "cdn." not in page.text and "https://" not in page.text.split("<body>")[0]
    assert served.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert served.get("/docs-assets/swagger-ui.css").status_code == 200
    assert served.get("/redoc").status_code == 404
    html = served.get("/").text
    assert "cdn." not in html and "every hit has some" not in html


# -- 4. no faiss warnings --

def test_small_sample_codec_fit_prints_no_faiss_warning(capfd):
    from mice_index.codec import make_codec

    x = np.random.default_rng(0).standard_normal((3000, 64)).astype(np.float32)
    a = make_codec("rq", dim=64, M=8, nbits=8, n_centroids=128).fit(x, seed=0)
    err = capfd.readouterr().err
    assert "WARNING" not in err and "please provide" not in err, err[:500]
    assert a.decode(a.encode(x[:10])).shape == (10, 64)


# -- 9. progress lines when stderr is not a terminal --

def test_progress_lines_when_not_a_terminal():
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=False, width=200)
    assert isinstance(task_progress("encode", "docs", console), LineProgress)
    assert isinstance(task_progress("encode", "docs", Console(file=io.StringIO(), force_terminal=True)), BarProgress)
    now = [0.0]
    with LineProgress("encode", "docs", console, every=10, clock=lambda: now[0]) as p:
        p.set_total(1000)
        for _ in range(10):
            now[0] += 3
            p.advance(100)
    lines = buf.getvalue().splitlines()
    # a line at 12 s (400 docs) and at 24 s (800), then the last one
    assert len(lines) == 3, lines
    assert lines[0] == "encode: 400/1,000 docs (40.0%), 33 docs/s, elapsed 0:00:12, ETA 0:00:18"
    assert lines[-1].startswith("encode: 1,000/1,000 docs (100.0%)") and "ETA" not in lines[-1]


def test_build_logs_progress_lines_in_a_log_file(tmp_path, built):  # noqa: F811
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    _, model = built
    mdir = tmp_path / "m"
    model.save(mdir)
    out = subprocess.run([sys.executable, "-m", "mice_index", "build", "--corpus", str(sample_collection()),
                          "--index", str(tmp_path / "i"), "--model", str(mdir), "--codec", "fp32", "--dense", "none"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "encode: " in out.stderr and " docs (100.0%)" in out.stderr and "━" not in out.stderr


# -- 6. explanations: nothing below the stated similarity --

def test_gibberish_gets_no_highlight_from_the_default_model(tmp_path):
    from mice_index.build import BuildConfig, build_index
    from mice_index.explain import Explainer, hit_record
    from mice_index.search import SearchConfig, Searcher

    build_index(sample_collection(), tmp_path / "idx", BuildConfig(codec="fp32", dtype="fp32", dense="none"))
    searcher = Searcher.open(tmp_path / "idx", config=SearchConfig(candidates="bm25", rerank="none"))
    hits = searcher.search("volcano", k=3)
    explainer = Explainer(_model(searcher), searcher.reader)
    nonsense = [hit_record(h, e) for h, e in zip(hits, explainer.explain("xqzv blorpt fnarg", hits))]
    assert all(r["highlights"] == [] for r in nonsense), nonsense
    real = [hit_record(h, e) for h, e in zip(hits, explainer.explain("volcano", hits))]
    assert any(r["highlights"] for r in real)


def _model(searcher):
    from mice_index.search import checked_model

    return checked_model(searcher.reader)


def test_terminal_bar_shows_the_rate_after_one_update():
    from mice_index.cli.progress import _Rate

    with BarProgress("encode", "docs", Console(file=io.StringIO(), force_terminal=True)) as p:
        p.set_total(100)
        p.advance(40)  # rich's own speed needs two updates; the column falls back to done / elapsed
        assert _Rate("docs").render(p.bar.tasks[0]).plain.endswith(" docs/s")
