"""The search page in a real headless browser (`make e2e`): type a query, see ranked hits with
highlighted matches. Drives Debian's chromium through Playwright (no browser download); saves a
screenshot to out/e2e-search-page.png."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .test_explain import default_index  # noqa: F401
from .test_serve import _free_port

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
SCREENSHOT = Path("out") / "e2e-search-page.png"


@pytest.fixture(scope="module")
def server(default_index, tmp_path_factory):  # noqa: F811
    httpx = pytest.importorskip("httpx")
    port = _free_port()
    log_path = tmp_path_factory.mktemp("e2e") / "serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "mice_index", "serve", "--index", str(default_index),
                             "--port", str(port), "--k", "5"], stdout=log, stderr=subprocess.STDOUT, cwd=os.getcwd())
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(240):  # bounded wait for start-up
            try:
                if httpx.get(url + "health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                assert proc.poll() is None, log_path.read_text()
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def test_type_a_query_see_ranked_highlighted_hits(server, browser):
    page = browser.new_page(viewport={"width": 1000, "height": 760})
    page.goto(server)
    page.wait_for_function("document.getElementById('index-info').textContent.includes('documents')")
    assert "6 documents" in page.inner_text("#index-info")
    page.fill("#q", "volcano ash lava")
    page.press("#q", "Enter")
    page.wait_for_selector("li.hit")
    hits = page.locator("li.hit")
    assert hits.count() == 5
    assert hits.nth(0).locator(".doc-id").inner_text() == "volcano"
    marks = hits.nth(0).locator("mark").all_inner_texts()
    snippet = hits.nth(0).locator(".snippet").inner_text()
    assert marks and all(m and m in snippet for m in marks)
    line = hits.nth(0).locator(".matches").inner_text()
    assert "volcano →" in line and "ash →" in line and "lava →" in line
    assert "→ MICE" in page.inner_text("#status")
    scores = [float(s.split()[-1]) for s in page.locator(".score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    # the query went into the address: reloading it shows the same results
    assert "q=volcano+ash+lava" in page.url
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    # without matches: no highlights
    page.uncheck("#explain")
    page.press("#q", "Enter")
    page.wait_for_function("document.querySelectorAll('li.hit mark').length === 0")
    # the form refuses k = 0 itself (min=1); an address that asks for it shows the server's message
    page.goto(server + "?q=volcano&k=0")
    page.wait_for_selector("#status.error")
    assert "--k must be positive, got 0" in page.inner_text("#status")
    page.close()
