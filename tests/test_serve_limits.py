"""The server's own limits (issue 17): per-request limits, a time budget that stops the work,
cancellation on disconnect, a body limit before the body is read, the Host check, UTF-8 refused,
one error shape, no server paths to clients, bind before load, SIGTERM ends with exit 0."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from mice_index.scorer import ScorerConfig  # noqa: E402
from mice_index.search import SearchConfig, Searcher  # noqa: E402
from mice_index.serve import BatchConfig, ServeLimits, create_app  # noqa: E402
from mice_index.serve.app import Settings, _Work, run_within_budget  # noqa: E402
from mice_index.serve.batching import MicroBatcher  # noqa: E402
from mice_index.serve.limits import Budget, BudgetExceeded, loopback_hosts  # noqa: E402

from .test_search import built  # noqa: E402,F401

FP32 = ScorerConfig(dtype="fp32", quantize="none")


@pytest.fixture(scope="module")
def searcher(built):  # noqa: F811
    idx, model = built
    return Searcher.open(idx, model=model, config=SearchConfig(scorer=FP32))


def _client(searcher, **limits):
    return TestClient(create_app(searcher, BatchConfig(window_ms=0), k=5, limits=ServeLimits(**limits)))


class Slow:
    """A searcher whose search_texts takes `delay` s per call (counting calls): a stand-in for a
    heavy pass, so that budgets can be tested in a second."""

    def __init__(self, searcher, delay):
        self.inner, self.delay, self.calls = searcher, delay, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def search_texts(self, texts, k=None, filter=None):
        self.calls += 1
        time.sleep(self.delay)
        return self.inner.search_texts(texts, k, filter=filter)

    def with_config(self, **changes):
        return Slow(self.inner.with_config(**changes), self.delay)


# -- 3. limits of one request --

def test_the_issues_abusive_request_is_refused_at_once(searcher):
    body = {"q": [f"query number {i}" for i in range(64)], "depth": 10**9, "k": 10**6, "explain": True}
    with _client(searcher) as c:
        r = c.post("/search", json=body)
    assert r.status_code == 400 and set(r.json()) == {"error"}
    assert "--max-k" in r.json()["error"] or "--max-depth" in r.json()["error"]


@pytest.mark.parametrize("params, limits, fragment", [
    ({"depth": 30}, {"max_depth": 20}, "depth: at most 20 on this server (--max-depth), got 30"),
    ({"k": 11}, {"max_k": 10}, "k: at most 10 on this server (--max-k), got 11"),
    ({"q": ["a b", "c d", "e f"], "depth": 20}, {"max_work": 50}, "queries x depth = 60"),
    ({"q": ["bees", "coral"], "k": 5, "explain": "true"}, {"max_explain": 8}, "--max-explain"),
])
def test_limits_are_400_with_the_option_named(searcher, params, limits, fragment):
    with _client(searcher, **limits) as c:
        r = c.get("/search", params={"q": "coral reef", **params})
        assert r.status_code == 400 and fragment in r.json()["error"]
        ok = {k: v for k, v in params.items() if k in ("q",)}
        assert c.get("/search", params={"q": "coral reef", **ok, "k": 2, "depth": 2}).status_code == 200


def test_a_request_past_its_budget_is_stopped_and_answered_504(searcher):
    """64 queries in passes of one query each (chunk_work = depth): the budget stops the work at
    the next pass, not after all 64; the next request is answered normally."""
    slow = Slow(searcher, 0.2)
    app = create_app(slow, BatchConfig(window_ms=0), k=5,
                     limits=ServeLimits(request_timeout_s=1.0, chunk_work=10))
    with TestClient(app) as c:
        start = time.monotonic()
        r = c.post("/search", json={"q": [f"bees {i}" for i in range(64)], "depth": 10, "rerank": "none"})
        took = time.monotonic() - start
        assert r.status_code == 504 and "--request-timeout" in r.json()["error"], r.text
        assert took < 5
        r = c.get("/search", params={"q": "coral", "rerank": "none", "depth": 10})
        assert r.status_code == 200
    passes = sum(v.calls for v in app.state.engine.variants.values() if isinstance(v, Slow))
    assert 0 < passes < 64, passes


def test_a_request_still_queued_at_its_deadline_gets_503(searcher):
    release = threading.Event()

    def blocking(settings, works):
        release.wait(10)
        return [[] for _ in works]

    batcher = MicroBatcher(blocking, BatchConfig(window_ms=0))
    batcher.start()

    class Client:
        async def is_disconnected(self):
            return False
        method, url = "GET", type("U", (), {"path": "/search"})()

    async def scenario():
        first = _Work(["a"], 1, False, Budget(5))
        second = _Work(["b"], 1, False, Budget(0.3))
        key = Settings("bm25", 10, "none", None)
        task = asyncio.ensure_future(run_within_budget(batcher, key, first, Client()))
        await asyncio.sleep(0.1)
        with pytest.raises(Exception) as info:
            await run_within_budget(batcher, key, second, Client())
        release.set()
        await task
        return info.value

    try:
        err = asyncio.run(scenario())
    finally:
        release.set()
        batcher.stop()
    assert type(err).__name__ == "QueueFull" and "without starting" in str(err)


def test_a_client_that_disconnects_cancels_its_request():
    """run_within_budget polls the connection: a client gone cancels the budget, so the worker
    stops the work at its next check (BudgetExceeded), and a queued job never starts."""
    seen = []

    def run(settings, works):
        w = works[0]
        for _ in range(100):  # a long request checking its budget between passes
            time.sleep(0.05)
            try:
                w.budget.check()
            except BudgetExceeded as exc:
                seen.append(str(exc))
                return [exc]
        return [[]]

    batcher = MicroBatcher(run, BatchConfig(window_ms=0))
    batcher.start()

    class GoneAfter:
        def __init__(self, seconds):
            self.t = time.monotonic() + seconds
        method, url = "GET", type("U", (), {"path": "/search"})()

        async def is_disconnected(self):
            return time.monotonic() > self.t

    async def scenario():
        work = _Work(["a"], 1, False, Budget(30))
        try:
            await run_within_budget(batcher, Settings("bm25", 10, "none", None), work, GoneAfter(0.3))
        except asyncio.CancelledError:
            pass
        return work

    try:
        start = time.monotonic()
        work = asyncio.run(scenario())
        while not seen and time.monotonic() - start < 5:
            time.sleep(0.05)
    finally:
        batcher.stop()
    assert work.budget.cancelled.is_set() and seen == ["the client disconnected"]
    assert time.monotonic() - start < 4  # well before the 5 s the work would have taken


# -- 4. request bodies --

def test_a_body_above_the_limit_is_413_before_it_is_read(searcher):
    with _client(searcher, max_body_bytes=1000) as c:
        r = c.post("/search", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert r.status_code == 413 and r.json() == {"error": "request body larger than 1000 bytes (--max-body)"}

        def chunks():  # no Content-Length: counted as it streams in
            for _ in range(10):
                yield b" " * 400

        r = c.post("/search", content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "--max-body" in r.json()["error"]
        r = c.post("/search", json={"q": "coral reef", "k": 2})
        assert r.status_code == 200


def test_a_bad_content_length_is_400(searcher):
    with _client(searcher) as c:
        r = c.post("/search", content=b"{}", headers={"content-type": "application/json", "content-length": "-5"})
    assert r.status_code == 400 and set(r.json()) == {"error"}


# -- 8. invalid UTF-8 is refused --

@pytest.mark.parametrize("url", ["/search?q=%ff%fe", "/search?q=caf%C3", "/search?q=ok&candidates=%80", "/%ff"])
def test_invalid_utf8_in_the_url_is_400(searcher, url):
    with _client(searcher) as c:
        r = c.get(url)
    assert r.status_code == 400 and "invalid UTF-8" in r.json()["error"] and "\ufffd" not in r.text


def test_lone_surrogates_and_bad_bytes_in_a_json_body_are_400(searcher):
    with _client(searcher) as c:
        r = c.post("/search", content=b'{"q": "bees \\udc80"}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()) == {"error"}
        r = c.post("/search", content=b'{"q": "bees \xff"}', headers={"content-type": "application/json"})
        assert r.status_code == 400 and set(r.json()) == {"error"}


# -- error shape --

def test_every_error_has_one_shape(searcher):
    deep = b"[" * 100_000 + b"]" * 100_000
    with _client(searcher, max_body_bytes=1 << 21) as c:
        for r in (c.post("/search", content=deep, headers={"content-type": "application/json"}),
                  c.get("/nowhere"), c.delete("/search"), c.post("/search", content=b"{", headers={"content-type": "application/json"}),
                  c.get("/search")):
            assert 400 <= r.status_code < 500 and list(r.json()) == ["error"], (r.status_code, r.text)
            assert isinstance(r.json()["error"], str)


# -- Host header --

@pytest.mark.parametrize("host, status", [("evil.example", 400), ("evil.example:8080", 400), ("127.0.0.1.evil.example", 400),
                                          ("localhost:8080", 200), ("127.0.0.1", 200), ("[::1]:8080", 200)])
def test_a_loopback_server_accepts_only_its_own_names(searcher, host, status):
    with _client(searcher, allowed_hosts=loopback_hosts("127.0.0.1")) as c:
        r = c.get("/health", headers={"host": host})
    assert r.status_code == status and (status == 200 or "--allowed-hosts" in r.json()["error"])


def test_host_rules():
    assert loopback_hosts("0.0.0.0") is None and loopback_hosts("127.0.0.2") is not None
    with pytest.raises(ValueError):
        ServeLimits(max_depth=0)


# -- 9. no server paths to clients --

def test_index_damage_is_503_without_paths_and_logged_in_full(built, tmp_path, caplog):  # noqa: F811
    idx, model = built
    copy = tmp_path / "secret-place" / "idx"
    shutil.copytree(idx, copy)
    s = Searcher.open(copy, model=model, config=SearchConfig(scorer=FP32, candidates="bm25"))
    for docs in copy.glob("shards/*/docs.parquet"):
        data = bytearray(docs.read_bytes())
        data[len(data) // 3: len(data) // 3 + 64] = b"\0" * 64
        docs.write_bytes(bytes(data))
    with TestClient(create_app(s, BatchConfig(window_ms=0), k=5)) as c:
        with caplog.at_level("ERROR", logger="mice_index.serve"):
            r = c.get("/search", params={"q": "coral reef bees honey", "k": 20})
        assert r.status_code == 503, r.text
        assert "secret-place" not in r.text and "/" not in r.json()["error"] and "mice-index build" not in r.text
        assert "secret-place" in caplog.text  # the full message stays on the server
        info = c.get("/info").json()
        assert "secret-place" not in json.dumps(info) and info["path"] == "idx"


# -- 10. bind before load; SIGTERM --

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_busy_port_is_one_line_exit_2_before_loading(built, tmp_path):  # noqa: F811
    idx, _ = built
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        for index in (idx, tmp_path / "no-such-index"):  # the port is checked first, before the index
            proc = subprocess.run([sys.executable, "-m", "mice_index", "serve", "--index", str(index), "--model",
                                   str(idx.parent / "mice"), "--port", str(port)],
                                  capture_output=True, text=True, timeout=120, cwd=os.getcwd())
            err = " ".join(proc.stderr.split())
            assert proc.returncode == 2, proc.stderr
            assert f"--port {port}: cannot listen there" in err and "serving" not in err and "Traceback" not in err


def test_sigterm_finishes_the_request_in_flight_and_exits_0(built, tmp_path):  # noqa: F811
    idx, _ = built
    port = _free_port()
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mice_index", "serve", "--index", str(idx), "--model",
                             str(idx.parent / "mice"), "--port", str(port), "--dtype", "fp32",
                             "--request-timeout", "20"], stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, open(tmp_path / "serve.log").read()
                time.sleep(0.5)
        assert httpx.get(f"{url}/health", headers={"host": "evil.example"}).status_code == 400  # DNS rebinding
        answers = []
        body = {"q": [f"coral reef bees {i}" for i in range(64)], "depth": 40, "k": 3, "explain": True}
        t = threading.Thread(target=lambda: answers.append(httpx.post(f"{url}/search", json=body, timeout=60)))
        t.start()
        time.sleep(0.3)  # the request is in flight
        proc.send_signal(signal.SIGTERM)
        t.join(60)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = open(tmp_path / "serve.log").read()
    assert proc.returncode == 0, text
    assert text.rstrip().endswith("stopped") and "batch worker stopped" in text
    assert answers and answers[0].status_code in (200, 504), text  # answered, never cut off
    if answers[0].status_code == 200:
        assert len(answers[0].json()["results"]) == 64
