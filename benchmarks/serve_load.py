"""Load on `mice-index serve`: p50/p95 latency and queries/s at 1, 4 and 16 concurrent clients, next
to the same queries through `Searcher` in the benchmark's own process (the yardstick), in one run.

The server is started as a subprocess on 127.0.0.1 (a free port) with the given index and search
settings; the load generator (httpx, asyncio) talks only to it, sends a bounded number of requests
per level, gives up on a level after --max-seconds, and stops the server with SIGTERM at the end.

    python benchmarks/serve_load.py --index out/cranfield-fp16 --queries ../shared/datasets/cranfield
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def summary(latencies: list[float], wall: float) -> dict:
    ms = sorted(x * 1000 for x in latencies)
    return {"requests": len(ms), "p50_ms": round(statistics.median(ms), 1),
            "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 1),
            "qps": round(len(ms) / wall, 2)}


async def load(url: str, queries: list[str], clients: int, n: int, params: dict, max_seconds: float) -> dict:
    """`clients` workers send `n` requests in all (queries cycled), each waiting for its answer."""
    latencies: list[float] = []
    todo = iter(range(n))
    deadline = time.monotonic() + max_seconds
    errors = 0

    async def worker(client: httpx.AsyncClient):
        nonlocal errors
        for i in todo:
            if time.monotonic() > deadline:
                return
            t = time.perf_counter()
            r = await client.get(url, params={"q": queries[i % len(queries)], **params})
            if r.status_code != 200:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        wall = time.perf_counter() - start
    return {"clients": clients, "errors": errors, **summary(latencies, wall)}


def in_process(index: Path, queries: list[str], n: int, k: int, depth: int, batch: int) -> dict:
    """The yardstick: one `Searcher.search` after the other (and `search_texts` in batches)."""
    from mice_index.search import SearchConfig, Searcher

    searcher = Searcher.open(index, config=SearchConfig(candidates="hybrid", depth=depth))
    qs = [queries[i % len(queries)] for i in range(n)]
    for q in qs[:2]:
        searcher.search(q, k=k)  # warm-up
    latencies = []
    start = time.perf_counter()
    for q in qs:
        t = time.perf_counter()
        searcher.search(q, k=k)
        latencies.append(time.perf_counter() - t)
    one = {"mode": "Searcher.search, one at a time", **summary(latencies, time.perf_counter() - start)}
    start = time.perf_counter()
    for i in range(0, n, batch):
        searcher.search_texts(qs[i:i + batch], k=k)
    wall = time.perf_counter() - start
    batched = {"mode": f"Searcher.search_texts, {batch} at a time", "requests": n, "qps": round(n / wall, 2)}
    return {"one": one, "batched": batched}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=Path("out/cranfield-fp16"))
    ap.add_argument("--queries", default="../shared/datasets/cranfield", help="queries source (BEIR folder, ...)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=48, help="requests per concurrency level")
    ap.add_argument("--max-seconds", type=float, default=240, help="per level: stop sending after this")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("out/serve_load.json"))
    args = ap.parse_args()

    from mice_index.sources import read_queries

    queries = [q.text for q in read_queries(args.queries)]
    port = free_port()
    log_path = args.out.with_suffix(".server.log")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    server = subprocess.Popen(
        [sys.executable, "-m", "mice_index", "serve", "--index", str(args.index), "--port", str(port),
         "--candidates", "hybrid", "--depth", str(args.depth), "--k", str(args.k)],
        stdout=log_path.open("w"), stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    results: dict = {"index": str(args.index), "k": args.k, "depth": args.depth, "pipeline": "hybrid → MICE"}
    try:
        for _ in range(600):  # start-up: at most ~5 min
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                if server.poll() is not None:
                    sys.exit(f"the server exited: see {log_path}")
                time.sleep(0.5)
        else:
            sys.exit("the server did not start in time")
        for q in queries[:2]:  # warm-up
            httpx.get(f"{url}/search", params={"q": q, "k": args.k}, timeout=600)
        params = {"k": args.k}
        results["server"] = []
        for clients in map(int, args.clients.split(",")):
            level = asyncio.run(load(f"{url}/search", queries, clients, args.requests, params, args.max_seconds))
            print(json.dumps(level), flush=True)
            results["server"].append(level)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    results["in_process"] = in_process(args.index, queries, args.requests, args.k, args.depth, batch=16)
    print(json.dumps(results["in_process"]), flush=True)
    args.out.write_text(json.dumps(results, indent=2))
    print("\n| clients | p50 ms | p95 ms | queries/s |\n|---:|---:|---:|---:|")
    for r in results["server"]:
        print(f"| {r['clients']} | {r['p50_ms']} | {r['p95_ms']} | {r['qps']} |")
    one, batched = results["in_process"]["one"], results["in_process"]["batched"]
    print(f"| in-process `Searcher.search` | {one['p50_ms']} | {one['p95_ms']} | {one['qps']} |")
    print(f"| in-process `search_texts` ×16 | – | – | {batched['qps']} |")


if __name__ == "__main__":
    main()
