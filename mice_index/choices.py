"""Names of the pipeline's choices, importable without numpy or torch (the CLI's help text uses
them; tests/test_serve.py checks they equal the registries they mirror)."""

CANDIDATES = ("bm25", "dense", "hybrid")  # first-stage candidate generators (search.py)
RERANKERS = ("mice", "none")
CODEC_NAMES = ("fp16", "fp32", "int8", "int8-dim", "opq", "opq32", "pq", "pq32", "rq", "rq26", "rq32",
               "compact")  # = mice_index.codec.codec_names()
