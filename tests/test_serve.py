"""`mice-index serve`: answers equal Searcher.search, concurrent requests are batched by settings,
bad parameters get the CLI's messages, a full queue 503, failures stay local; the real server
starts, answers and stops on SIGTERM; the CLI starts without heavy imports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from mice_index.scorer import ScorerConfig  # noqa: E402
from mice_index.search import SearchConfig, Searcher  # noqa: E402
from mice_index.serve import BatchConfig, MicroBatcher, QueueFull, create_app  # noqa: E402
from mice_index.store import index_info  # noqa: E402

from .test_search import _cli, built  # noqa: E402,F401

FP32 = ScorerConfig(dtype="fp32", quantize="none")
QUERIES = ["coral reef bleaching", "how do honey bees make honey", "volcano eruption", "the of and"]


@pytest.fixture(scope="module")
def searcher(built):  # noqa: F811
    idx, model = built
    return Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32))


@pytest.fixture(scope="module")
def client(searcher):
    with TestClient(create_app(searcher, BatchConfig(window_ms=20), k=5)) as c:
        yield c


def _pairs(hits):
    return [(h["doc_id"], h["score"]) for h in hits]


def _reference(searcher, query, k, **changes):
    s = searcher.with_config(**changes) if changes else searcher
    return [(h.doc_id, round(h.score, 6)) for h in s.search(query, k=k)]


def _assert_same(got, want, tol=1e-5):
    """Equal rankings; scores agree to `tol` (batch composition moves them by float rounding),
    so two documents whose scores are that close may trade places (the tiny random model gives
    many near-ties), and nothing else may differ."""
    assert len(got) == len(want)
    want_score = dict(want)
    for (d, s), (wd, ws) in zip(got, want):
        assert abs(s - ws) <= tol, (got, want)
        if d != wd:
            assert abs(want_score.get(d, want[-1][1]) - s) <= tol, (got, want)


@pytest.mark.parametrize("settings", [{}, {"candidates": "bm25", "depth": 12}, {"candidates": "dense"},
                                      {"rerank": "none"}, {"candidates": "hybrid", "depth": 40}])
def test_results_equal_searcher(client, searcher, settings):
    for query in QUERIES:
        r = client.get("/search", params={"q": query, "k": 7, **settings})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["results"][0]["query"] == query
        assert body["settings"]["k"] == 7 and body["settings"]["candidates"] == settings.get("candidates", "hybrid")
        hits = body["results"][0]["hits"]
        assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
        assert all(h["snippet"] and "matches" not in h for h in hits)
        _assert_same(_pairs(hits), _reference(searcher, query, 7, **settings))


def test_post_with_several_queries(client, searcher):
    r = client.post("/search", json={"q": QUERIES, "k": 3, "candidates": "bm25"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["query"] for x in results] == QUERIES
    for query, res in zip(QUERIES, results):
        _assert_same(_pairs(res["hits"]), _reference(searcher, query, 3, candidates="bm25"))


def test_concurrent_requests_equal_searcher(client, searcher):
    jobs = [(q, k, c) for q in QUERIES for k in (2, 6) for c in ("bm25", "hybrid")] * 2

    def call(job):
        q, k, c = job
        return client.get("/search", params={"q": q, "k": k, "candidates": c})

    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(call, jobs))
    for (q, k, c), r in zip(jobs, responses):
        assert r.status_code == 200, r.text
        _assert_same(_pairs(r.json()["results"][0]["hits"]), _reference(searcher, q, k, candidates=c))


def test_explain_adds_matches_without_changing_scores(client):
    plain = client.get("/search", params={"q": "honey bees", "k": 3}).json()["results"][0]["hits"]
    explained = client.get("/search", params={"q": "honey bees", "k": 3, "explain": True}).json()["results"][0]["hits"]
    assert _pairs(explained) == _pairs(plain)
    for h in explained:
        assert [m["query_word"] for m in h["matches"]] == ["honey", "bees"]
        assert all(len(m["words"]) == 3 for m in h["matches"])
        assert all(0 <= a < b <= len(h["snippet"]) for a, b in h["highlights"])


def test_batcher_groups_requests_by_settings():
    calls = []

    def run(key, items):
        calls.append((key, list(items)))
        return [f"{key}:{i}" for i in items]

    batcher = MicroBatcher(run, BatchConfig(window_ms=0, max_batch=10))
    futures = [batcher.submit_future(key, i) for i, key in enumerate("ABAAB")]  # all queued before start
    batcher.start()
    assert [f.result(timeout=30) for f in futures] == ["A:0", "B:1", "A:2", "A:3", "B:4"]
    batcher.stop()
    assert calls == [("A", [0, 2, 3]), ("B", [1, 4])] and batcher.batches == 1 and batcher.largest_group == 3


def test_batcher_one_bad_request_fails_alone():
    def run(key, items):
        if "bad" in items:
            raise ValueError("bad item")
        return [i.upper() for i in items]

    batcher = MicroBatcher(run, BatchConfig(window_ms=0))
    futures = [batcher.submit_future("k", i) for i in ("a", "bad", "c")]
    batcher.start()
    assert futures[0].result(timeout=30) == "A" and futures[2].result(timeout=30) == "C"
    with pytest.raises(ValueError, match="bad item"):
        futures[1].result(timeout=30)
    batcher.stop()
    with pytest.raises(Exception, match="shutting down"):
        batcher.submit_future("k", "late")


def test_full_queue_answers_503(searcher):
    app = create_app(searcher, BatchConfig(window_ms=0, max_batch=1, max_queue=1), k=3)
    entered, release = threading.Event(), threading.Event()
    engine = app.state.engine
    real_run = engine.run

    def blocking_run(settings, works):
        entered.set()
        assert release.wait(60)
        return real_run(settings, works)

    app.state.batcher.run = blocking_run
    with TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        first = pool.submit(c.get, "/search", params={"q": "coral"})
        assert entered.wait(60)  # the worker holds request 1
        second = pool.submit(c.get, "/search", params={"q": "bees"})
        for _ in range(600):  # request 2 waits in the queue (bounded wait, no timing assertion)
            if app.state.batcher.pending == 1:
                break
            time.sleep(0.05)
        third = c.get("/search", params={"q": "volcano"})
        assert third.status_code == 503 and "too many requests waiting" in third.json()["error"]
        release.set()
        assert first.result(60).status_code == 200 and second.result(60).status_code == 200
        assert c.get("/search", params={"q": "volcano"}).status_code == 200


def test_internal_error_is_a_500_and_the_server_goes_on(searcher):
    app = create_app(searcher, BatchConfig(window_ms=0), k=3)
    real_run, failed = app.state.batcher.run, []

    def flaky(settings, works):
        if not failed:
            failed.append(1)
            raise RuntimeError("boom")
        return real_run(settings, works)

    app.state.batcher.run = flaky
    with TestClient(app) as c:
        r = c.get("/search", params={"q": "coral"})
        assert r.status_code == 500 and r.json() == {"error": "internal error (logged on the server)"}  # no details
        assert c.get("/search", params={"q": "coral"}).status_code == 200
        assert c.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("params, cli_args", [
    ({"k": 0}, ["--k", "0"]),
    ({"depth": 0}, ["--depth", "0"]),
    ({"candidates": "splade"}, ["--candidates", "splade"]),
    ({"rerank": "colbert"}, ["--rerank", "colbert"]),
    ({"alpha": 1.5}, ["--alpha", "1.5"]),
])
def test_bad_parameters_get_the_cli_message(client, built, monkeypatch, capsys, params, cli_args):  # noqa: F811
    r = client.get("/search", params={"q": "coral", **params})
    assert r.status_code == 400
    message = r.json()["error"]
    assert "--" not in message  # the API names its parameters, not the CLI's flags (k, not --k)
    code, out = _cli(monkeypatch, capsys, "search", "--index", built[0], "--query", "coral", *cli_args)
    assert code == 2 and out.err.strip().replace("--", "") == f"error: {message}"


@pytest.mark.parametrize("params, match", [
    ({"q": "coral", "k": "ten"}, "k: Input should be a valid integer"),
    ({"q": "coral", "alpha": "high"}, "alpha: Input should be a valid number"),
    ({"q": "   "}, "q: query is empty"),
    ({"k": 3}, "q: Field required"),
])
def test_malformed_requests_are_400(client, params, match):
    r = client.get("/search", params=params)
    assert r.status_code == 400 and match in r.json()["error"]


def test_k_and_depth_above_the_corpus_are_clipped(client, searcher):
    r = client.get("/search", params={"q": "coral reef", "k": 41, "depth": 99})
    assert r.status_code == 200 and r.json()["settings"]["k"] == 40 and r.json()["settings"]["depth"] == 40
    _assert_same(_pairs(r.json()["results"][0]["hits"]), _reference(searcher, "coral reef", 40, depth=40))


def test_post_body_errors_are_400(client):
    assert client.post("/search", json={"q": []}).json() == {"error": "q: no query given"}
    r = client.post("/search", json={"q": ["x"] * 65})
    assert r.status_code == 400 and "at most 64 queries" in r.json()["error"]
    r = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"].startswith("the request body is not valid JSON")


def test_alpha_is_passed_through_where_supported(client, searcher):
    has_alpha = "alpha" in SearchConfig.__dataclass_fields__
    r = client.get("/search", params={"q": "coral reef", "k": 3, "alpha": 0.5})
    if not has_alpha:
        assert r.status_code == 400 and "alpha" in r.json()["error"]
        return
    assert r.status_code == 200 and r.json()["settings"]["alpha"] == 0.5
    _assert_same(_pairs(r.json()["results"][0]["hits"]), _reference(searcher, "coral reef", 3, alpha=0.5))


def test_health_info_openapi_and_page(client, built):  # noqa: F811
    assert client.get("/health").json()["status"] == "ok"
    info, want = client.get("/info").json(), index_info(built[0])
    assert info == {**want, "path": built[0].name, "model": "mice"}  # folders' names: no server paths
    assert str(built[0].parent) not in str(info)
    spec = client.get("/openapi.json").json()
    assert {"get", "post"} <= set(spec["paths"]["/search"]) and "/info" in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="search-form"' in page.text
    assert client.get("/static/app.js").status_code == 200 and client.get("/static/style.css").status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_answers_and_stops_on_sigterm(built, tmp_path):  # noqa: F811
    idx, model = built
    model_dir = idx.parent / "mice"
    port = _free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mice_index", "serve", "--index", str(idx), "--model",
                             str(model_dir), "--port", str(port), "--k", "3", "--dtype", "fp32"],
                            stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(240):  # start-up: bounded polling
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, open(tmp_path / "serve.log").read()
                time.sleep(0.5)
        r = httpx.get(f"{url}/search", params={"q": "coral reef", "explain": "true"}, timeout=60)
        assert r.status_code == 200 and len(r.json()["results"][0]["hits"]) == 3
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = open(tmp_path / "serve.log").read()
    assert proc.returncode in (0, -signal.SIGTERM), text
    assert "GET /search 200" in text and "k=3 candidates=hybrid" in text and "batch worker stopped" in text
