"""The end-to-end demo behind `make demo`: build → search → eval on the bundled sample collection.

Runs the same steps a user types (through the CLI), printing each command before running it.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

from mice_index.sources import sample_collection

OUT = Path("out/demo")


def run(*args: str) -> None:
    cmd = ["mice-index", *args]
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    exe = Path(sys.executable).with_name("mice-index")
    subprocess.run([str(exe), *args], check=True)


def main() -> None:
    sample = str(sample_collection())
    index, run_file, baseline = OUT / "index", OUT / "sample-mice.run", OUT / "sample-hybrid.run"
    print(f"sample collection: {sample} (40 documents, 12 queries, written for this project)")
    run("build", "--corpus", sample, "--index", str(index), "--codec", "compact", "--overwrite")
    run("info", "--index", str(index))
    run("search", "--index", str(index), "--query", "how do bees turn nectar into honey", "--k", "5")
    run("search", "--index", str(index), "--queries", sample, "--run", str(baseline), "--rerank", "none",
        "--run-tag", "hybrid")
    run("search", "--index", str(index), "--queries", sample, "--run", str(run_file), "--run-tag", "hybrid-mice")
    run("eval", "--run", str(baseline), "--qrels", sample)
    run("eval", "--run", str(run_file), "--qrels", sample)
    print(f"\ndone: index in {index}, runs in {OUT}")


if __name__ == "__main__":
    main()
