"""Peak RSS of `mice-index build` on 1x and Kx a corpus (documents repeated with new ids), each
build in its own subprocess, which reports its own resource.getrusage(RUSAGE_SELF).ru_maxrss at exit.

    .venv/bin/python benchmarks/build_memory.py --corpus /work/shared/datasets/scifact --scales 1 4 \
        -- --max-doc-length 64 --dense none

Arguments after `--` are passed to `mice-index build` (e.g. a short --max-doc-length keeps the run
short on a small CPU: the states part of the memory is bounded by windows/shards, not by length).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mice_index.sources import read_documents


# the build process reports its own peak RSS (ru_maxrss, KiB on Linux) when it exits
PEAK = ("import atexit, resource, sys; atexit.register(lambda: print('MAXRSS_KIB', "
        "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); ")


def write_scaled(src: str, scale: int, out: Path) -> int:
    n = 0
    with open(out, "w") as fh:
        for k in range(scale):
            for d in read_documents(src):
                fh.write(json.dumps({"_id": f"r{k}-{d.doc_id}", "title": d.title, "text": d.text}) + "\n")
                n += 1
    return n


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="/work/shared/datasets/scifact")
    ap.add_argument("--scales", type=int, nargs="*", default=[1, 4])
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="mice-build-mem-"))
    results = []
    for scale in args.scales:
        corpus = tmp / f"corpus-x{scale}.jsonl"
        n = write_scaled(args.corpus, scale, corpus)
        cmd = [sys.executable, "-c", PEAK + "from mice_index.cli import main; main()", "build", "--corpus", str(corpus),
               "--index", str(tmp / f"idx-x{scale}"), "--quiet", *extra]
        t = time.perf_counter()
        proc = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
                              capture_output=True, text=True)
        dt = time.perf_counter() - t
        if proc.returncode:
            sys.exit(f"build failed: {proc.stderr[-2000:]}")
        peak_kib = int(proc.stderr.rsplit("MAXRSS_KIB", 1)[1].split()[0])
        info = json.loads(subprocess.run([sys.executable, "-c", "from mice_index.cli import main; main()", "info",
                                          "--index", str(tmp / f"idx-x{scale}"), "--json"],
                                         capture_output=True, text=True).stdout)
        row = {"scale": scale, "docs": n, "tokens": info["num_tokens"], "shards": info["num_shards"],
               "peak_rss_mib": round(peak_kib / 1024, 1), "seconds": round(dt, 1), "disk_mib": round(info["disk_bytes"] / 2**20, 1)}
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"command_extra": extra, "results": results}, indent=2))


if __name__ == "__main__":
    main()
