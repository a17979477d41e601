"""Load on `mice-index serve`: p50/p95 latency and queries/s at 1, 4 and 16 concurrent clients, next
to the same queries through `Searcher` in the benchmark's own process (the yardstick), in one run.

The server is started as a subprocess on 127.0.0.1 (a free port) with the given index and search
settings; the load generator (httpx, asyncio) talks only to it, sends a bounded number of requests
per level, gives up on a level after --max-seconds, and stops the server with SIGTERM at the end.
The levels and the in-process runs are interleaved in each of --rounds rounds, so that drifting
load from other processes on the machine hits them alike.

    PYTHONPATH=. python benchmarks/serve_load.py --index out/cranfield-fp16 --queries ../shared/datasets/cranfield
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


async def load(url: str, queries: list[str], clients: int, n: int, params: dict, max_seconds: float):
    """`clients` workers send `n` requests in all (queries cycled), each waiting for its answer
    -> (latencies in s, wall s, errors)."""
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

    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(clients)))
        return latencies, time.perf_counter() - start, errors


def one_by_one(searcher, queries: list[str], n: int, k: int):
    latencies = []
    start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        searcher.search(queries[i % len(queries)], k=k)
        latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - start, 0


def batched(searcher, queries: list[str], n: int, k: int):
    start = time.perf_counter()
    searcher.search_texts([queries[i % len(queries)] for i in range(n)], k=k)
    wall = time.perf_counter() - start
    return [wall] * n, wall, 0  # every query of the batch waits for the whole batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, default=Path("out/cranfield-fp16"))
    ap.add_argument("--queries", default="../shared/datasets/cranfield", help="queries source (BEIR folder, ...)")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=8, help="requests per level and round (at least one per client)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; levels are interleaved within each round")
    ap.add_argument("--max-seconds", type=float, default=300, help="per level and round: stop sending after this")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--depth", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("out/serve_load.json"))
    args = ap.parse_args()

    from mice_index.search import SearchConfig, Searcher
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
    levels = [int(c) for c in args.clients.split(",")]
    measured: dict[str, list] = {name: [[], 0.0, 0] for name in
                                 ["in-process search", "in-process search_texts"] + [f"server {c}" for c in levels]}
    try:
        # the yardstick: the same index, model and settings in this process (loaded while the server starts)
        searcher = Searcher.open(args.index, config=SearchConfig(candidates="hybrid", depth=args.depth))
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
        for q in queries[:2]:  # warm-up, both sides
            httpx.get(f"{url}/search", params={"q": q, "k": args.k}, timeout=600)
            searcher.search(q, k=args.k)
        for r in range(args.rounds):  # interleaved: drifting machine load hits every variant alike
            offset = r * 997  # other queries each round
            qs = queries[offset % len(queries):] + queries[:offset % len(queries)]
            runs = {"in-process search": lambda: one_by_one(searcher, qs, args.requests, args.k),
                    "in-process search_texts": lambda: batched(searcher, qs, max(levels), args.k)}
            for c in levels:
                runs[f"server {c}"] = (lambda c=c: asyncio.run(load(
                    f"{url}/search", qs, c, max(args.requests, c), {"k": args.k}, args.max_seconds)))
            for name, run in runs.items():
                lat, wall, errors = run()
                m = measured[name]
                m[0] += lat
                m[1] += wall
                m[2] += errors
                print(json.dumps({"round": r, "mode": name, "requests": len(lat), "wall_s": round(wall, 2)}), flush=True)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=120)
    results = {"index": str(args.index), "k": args.k, "depth": args.depth, "pipeline": "hybrid → MICE",
               "rounds": args.rounds, "modes": {name: {**summary(lat, wall), "errors": err}
                                                for name, (lat, wall, err) in measured.items()}}
    args.out.write_text(json.dumps(results, indent=2))
    print("\n| mode | requests | p50 ms | p95 ms | queries/s |\n|---|---:|---:|---:|---:|")
    for name, m in results["modes"].items():
        print(f"| {name} | {m['requests']} | {m['p50_ms']} | {m['p95_ms']} | {m['qps']} |")


if __name__ == "__main__":
    main()
