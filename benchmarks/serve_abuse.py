"""One abusive request next to a normal one on `mice-index serve`: how much does it delay the
normal request, with the server's time budget (--request-timeout) and without one (a budget
longer than the abusive request), in one run.

For each server (started as a subprocess on 127.0.0.1 with the given index and options):
  1. normal request latency alone (p50 of --normal requests, one at a time);
  2. the issue's request (64 queries, depth 10^9, k 10^6, explain) -> its status and time (400 at once);
  3. an abusive request *within* the per-request limits (64 queries at --abuse-depth, so queries x
     depth is just under --max-work) sent in the background, then normal requests one after another
     while it runs: their latencies, and the abusive request's status and time (504 at the budget);
  4. the same abusive request from a client that gives up after --give-up s (disconnects), then
     normal requests: how long the server kept working for the client that left.

    PYTHONPATH=. python benchmarks/serve_abuse.py --index out/cranfield-fp16 --queries ../shared/datasets/cranfield
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(index: Path, port: int, extra: list[str], log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "mice_index", "serve", "--index", str(index), "--port", str(port),
                             *extra], stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            if proc.poll() is not None:
                sys.exit(f"the server exited: see {log}")
            time.sleep(0.5)
    sys.exit("the server did not start in time")


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def normal_latencies(url: str, queries: list[str], n: int, k: int) -> list[float]:
    out = []
    for i in range(n):
        r, dt = timed(lambda: httpx.get(f"{url}/search", params={"q": queries[i % len(queries)], "k": k}, timeout=900))
        assert r.status_code == 200, r.text
        out.append(dt)
    return out


def scenario(url: str, queries: list[str], args, budget_s: float) -> dict:
    res: dict = {"request_timeout_s": budget_s}
    alone = normal_latencies(url, queries, args.normal, args.k)
    res["normal_alone_p50_ms"] = round(statistics.median(alone) * 1000, 1)

    issue = {"q": queries[:64], "depth": 10**9, "k": 10**6, "explain": True}
    r, dt = timed(lambda: httpx.post(f"{url}/search", json=issue, timeout=900))
    res["issue_request"] = {"status": r.status_code, "ms": round(dt * 1000, 1), "error": r.json().get("error")}

    abuse = {"q": queries[:64], "depth": args.abuse_depth, "k": args.k}
    box: dict = {}

    def send_abuse():
        r, dt = timed(lambda: httpx.post(f"{url}/search", json=abuse, timeout=900))
        box.update(status=r.status_code, s=round(dt, 2))

    t = threading.Thread(target=send_abuse)
    t.start()
    time.sleep(0.5)  # the abusive request is being scored
    during = normal_latencies(url, queries[100:], args.normal, args.k)
    t.join()
    res["abusive"] = {"queries": 64, "depth": args.abuse_depth, **box}
    res["normal_during_abuse_ms"] = [round(x * 1000) for x in during]
    res["normal_during_abuse_max_ms"] = round(max(during) * 1000, 1)

    try:  # a client that gives up: the server should stop working for it
        httpx.post(f"{url}/search", json=abuse, timeout=args.give_up)
        res["gave_up"] = "answered before the client gave up"
    except httpx.TimeoutException:
        after = normal_latencies(url, queries[200:], 1, args.k)[0]
        res["gave_up"] = {"client_timeout_s": args.give_up, "next_normal_ms": round(after * 1000, 1)}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=Path("out/cranfield-fp16"))
    ap.add_argument("--queries", default="../shared/datasets/cranfield")
    ap.add_argument("--budget", type=float, default=5.0, help="--request-timeout of the server with a budget")
    ap.add_argument("--abuse-depth", type=int, default=300, help="depth of the abusive request (64 queries)")
    ap.add_argument("--normal", type=int, default=3, help="normal requests per measurement")
    ap.add_argument("--give-up", type=float, default=1.0, help="seconds before the disconnecting client gives up")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--no-compare", action="store_true", help="skip the server without a budget")
    ap.add_argument("--out", type=Path, default=Path("out/serve_abuse.json"))
    args = ap.parse_args()

    from mice_index.sources import read_queries

    queries = [q.text for q in read_queries(args.queries)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    results = {"index": str(args.index), "abuse_depth": args.abuse_depth, "servers": []}
    budgets = [args.budget] + ([] if args.no_compare else [600.0])
    for budget in budgets:
        port = free_port()
        log = args.out.with_name(f"{args.out.stem}.{int(budget)}s.server.log")
        server = start(args.index, port, ["--request-timeout", str(budget), "--max-work", str(64 * args.abuse_depth),
                                          "--max-depth", str(max(1000, args.abuse_depth))], log)
        try:
            res = scenario(f"http://127.0.0.1:{port}", queries, args, budget)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=budget + 60)
            except subprocess.TimeoutExpired:
                server.kill()
        res["exit_code"] = server.returncode
        results["servers"].append(res)
        print(json.dumps(res), flush=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n| --request-timeout | normal alone p50 ms | issue's request | abusive (64 q x depth) | "
          "normal during abuse, max ms | after a client gave up, ms | exit |\n|---|---:|---|---|---:|---:|---:|")
    for r in results["servers"]:
        a, g = r["abusive"], r["gave_up"]
        print(f"| {r['request_timeout_s']:g} s | {r['normal_alone_p50_ms']} | {r['issue_request']['status']} in "
              f"{r['issue_request']['ms']} ms | {a.get('status')} after {a.get('s')} s | {r['normal_during_abuse_max_ms']} | "
              f"{g['next_normal_ms'] if isinstance(g, dict) else g} | {r['exit_code']} |")


if __name__ == "__main__":
    main()
