"""`mice-index build` (offline indexer) and `mice-index info` (index summary)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from mice_index.cli import app
from mice_index.cli.progress import task_progress
from mice_index.choices import CODEC_NAMES, DENSE_KINDS
from mice_index.errors import MiceIndexError, os_errors
from mice_index.store.manifest import complete_index_error, index_info, read_manifest, verify_shards
from mice_index.text import check_argument


def _peek_corpus(corpus: str, id_field: str, text_field: str, title_field: str, fields: tuple[str, ...] = ()) -> None:
    """A missing corpus, or a first document that cannot be read, refused before the model loads
    (not irds:, whose first read may download the collection)."""
    if corpus.startswith("irds:"):
        return
    from mice_index.sources import parse_field, read_documents

    docs = read_documents(corpus, id_field=id_field, text_field=text_field, title_field=title_field,
                          fields=tuple(parse_field(f) for f in fields))
    next(docs, None)
    docs.close()


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:,.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


@app.command("build")
def build_command(
    corpus: Annotated[str, typer.Option("--corpus", help="BEIR folder, JSONL or TSV file (.gz/.bz2/.xz ok) or irds:<dataset id>.")],
    index: Annotated[Path, typer.Option("--index", help="Index folder to create (or to resume).")],
    model: Annotated[str, typer.Option("--model", help="MICE checkpoint, HF folder or hub id.")] = "default",
    codec: Annotated[str, typer.Option("--codec", help=f"State codec: {', '.join(CODEC_NAMES)}. fp16 and int8-dim keep MICE rankings "
                                   "(within ~0.1 nDCG@10 point of fp32); compact (rq32, 32 B/token) costs "
                                   "0.02 point with the default pipeline (README, Evaluation).")] = "fp16",
    max_doc_length: Annotated[int | None, typer.Option("--max-doc-length",
                                                       help="Token limit per document \\[default: the model's].")] = None,
    batch_tokens: Annotated[int, typer.Option("--batch-tokens", help="Padded tokens per forward pass.")] = 8192,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="Compute dtype: auto (bf16 on CUDA and AMX CPUs, else "
                                                       "fp32), bf16 or fp32.")] = "auto",
    shard_docs: Annotated[int, typer.Option("--shard-docs", help="Documents per build shard (resume unit).")] = 8192,
    dense: Annotated[str, typer.Option("--dense", help="auto (backbone sentence embeddings) or none.")] = "auto",
    dense_kind: Annotated[str, typer.Option("--dense-kind", help="faiss index: auto (flat up to 50,000 documents, "
                                            "else ivfpq), flat (exact), hnsw, ivf, or ivfpq (IVF + 4-bit PQ codes, "
                                            "exact re-scoring; memory-bounded build).")] = "auto",
    dense_nprobe: Annotated[int | None, typer.Option("--dense-nprobe", help="ivf/ivfpq: lists probed per query "
                                                     "\\[default: 16 for ivf, 32 for ivfpq].")] = None,
    prune: Annotated[str, typer.Option("--prune", help="Document-token pruning after the bottom layers: none "
                                       "(every token, the paper's form) or stopwords (punctuation and "
                                       "stopword states dropped; fewer bytes, faster search; BENCHMARKS.md).")] = "none",
    passages: Annotated[str | None, typer.Option("--passages", help="Long documents as passages: W,S splits each "
                                                 "document's text into windows of W tokens with stride S (S <= W, "
                                                 "W <= the model's document length - 2), each its own row with the "
                                                 "title; search ranks documents (--aggregate) \\[default: none: "
                                                 "one row per document, cut at --max-doc-length].")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing index. \\[default: off]")] = False,
    id_field: Annotated[str, typer.Option("--id-field", help="JSONL field holding the document id.")] = "_id",
    text_field: Annotated[str, typer.Option("--text-field", help="JSONL field holding the text.")] = "text",
    title_field: Annotated[str, typer.Option("--title-field", help="JSONL field holding the title.")] = "title",
    field: Annotated[Optional[list[str]], typer.Option(
        "--field", help="A document field for search filters, NAME:TYPE (TYPE int, float, str or bool; NAME a "
        "JSONL key, dotted for nested objects: metadata.year:int); repeatable. A missing key is null, a value "
        "of another type an error. \\[default: none]")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress (a bar in a terminal, else a line every 10 s). \\[default: off]")] = False,
    engine: Annotated[str, typer.Option("--engine", help="local (this process) or ray (a pool of Ray actors, "
                                                         "needs mice-index[ray]).")] = "local",
    ray_address: Annotated[str | None, typer.Option("--ray-address", help="Ray cluster to join \\[default: start a "
                                                                          "local one].")] = None,
    num_workers: Annotated[int | None, typer.Option("--num-workers", help="Ray actors \\[default: one per GPU, "
                                                                          "else one per CPU].")] = None,
    num_shards: Annotated[int | None, typer.Option("--num-shards", "--shard-num", help="Static sharding: the "
                                                   "number of slices (then `mice-index merge`) \\[default: one process builds all].")] = None,
    shard_id: Annotated[int | None, typer.Option("--shard-id", help="Static sharding: which slice (0-based) this "
                                                                    "process builds \\[default: none].")] = None,
) -> None:
    """Encode a corpus into a MICE index (states + BM25 + dense). Re-run the same command to resume."""
    # Checks that need no model come first, before torch is imported (an error in < 0.5 s).
    for value, option in ((id_field, "--id-field"), (text_field, "--text-field"), (title_field, "--title-field"),
                          *((f, "--field") for f in field or ())):
        check_argument(value, option)
    fields = tuple(field or ())
    from mice_index.sources.fields import check_fields, parse_field

    check_fields(tuple(parse_field(f) for f in fields))  # a bad --field: one line before the model loads

    for value, option in ((batch_tokens, "--batch-tokens"), (shard_docs, "--shard-docs")):
        if value < 1:
            raise MiceIndexError(f"{option} must be >= 1, got {value}")
    for value, option, allowed in ((device, "--device", ("auto", "cpu", "cuda")),
                                   (dtype, "--dtype", ("auto", "bf16", "fp32")), (dense, "--dense", ("auto", "none"))):
        if value not in allowed:
            raise MiceIndexError(f"{option} must be {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")
    if dense_kind not in DENSE_KINDS:
        raise MiceIndexError(f"dense kind must be one of {', '.join(DENSE_KINDS)}; got {dense_kind!r}")
    if dense_nprobe is not None and dense_nprobe < 1:
        raise MiceIndexError(f"dense nprobe must be >= 1 (or unset), got {dense_nprobe}")
    if codec not in CODEC_NAMES:
        raise MiceIndexError(f"unknown codec {codec!r}; valid codecs: {', '.join(CODEC_NAMES)}")
    from mice_index.prune import PRUNE_RULES

    if prune not in PRUNE_RULES:
        raise MiceIndexError(f"--prune must be one of {', '.join(PRUNE_RULES)}, got {prune!r}")
    window_stride = None
    if passages is not None:
        from mice_index.sources.passages import parse_passages

        window_stride = parse_passages(passages)  # malformed, S > W, < 1: one line (the model's limit: later)
    if not overwrite and num_shards is None and (err := complete_index_error(index)) is not None:
        raise err
    _peek_corpus(corpus, id_field, text_field, title_field, fields)

    from mice_index.build import BuildConfig, build_index
    from mice_index.distributed.cli import build_distributed, wants_distributed

    config = BuildConfig(
        model=None if model == "default" else model, codec=codec, max_doc_length=max_doc_length,
        batch_tokens=batch_tokens, device=device, dtype=dtype, shard_docs=shard_docs,  # type: ignore[arg-type]
        dense=dense, dense_kind=dense_kind, dense_nprobe=dense_nprobe,  # type: ignore[arg-type]
        prune=prune, overwrite=overwrite, passages=window_stride,
        id_field=id_field, text_field=text_field, title_field=title_field, fields=fields,
    )
    console = Console(stderr=True, emoji=False)
    with task_progress("encode", "docs", console, quiet=quiet) as progress, os_errors(index, "building the index"):
        hooks = {"progress": progress.advance, "total_callback": progress.set_total}
        if wants_distributed(engine, num_shards, shard_id):
            result = build_distributed(corpus, index, config, engine=engine, ray_address=ray_address,
                                       num_workers=num_workers, num_shards=num_shards, shard_id=shard_id, **hooks)
        else:
            result = build_index(corpus, index, config, **hooks)
    if result is None:  # one static slice: its summary is printed by build_distributed
        return
    info = result.info
    out = Console(emoji=False)
    rate = result.encoded_docs / result.seconds if result.seconds else 0.0
    out.print(
        f"[bold green]built[/] {escape(str(info['path']))}: {info['num_docs']:,} {'passages' if info.get('passages') else 'documents'}, "
        f"{info['num_tokens']:,} tokens "
        f"({info['truncated_docs']:,} truncated, {info['empty_docs']:,} empty), codec {info['codec']} "
        f"({info['bytes_per_token']} B/token on disk), {_fmt_bytes(info['disk_bytes'])}; "
        f"encoded {result.encoded_docs:,} documents this run in {result.seconds:.1f} s ({rate:,.0f} docs/s)",
        highlight=False, soft_wrap=True,
    )


def _drift_line(d: dict) -> str:
    """How far documents added since the build are from the codec's codebooks (mice_index/update.py)."""
    if d.get("added_relative_error") is None:
        return "no documents added since the build"
    base = d.get("baseline_relative_error")
    ratio = f", {d['ratio']:.2f}x the build documents' {base:.2e}" if d.get("ratio") else ""
    return (f"relative reconstruction error {d['added_relative_error']:.2e} on {d['added_docs']:,} added "
            f"documents{ratio} (`compact --refit` re-fits)")


def _dense_index_line(d: dict) -> str:
    """e.g. "ivfpq (nlist 1680, nprobe 32, 48 B codes, re-scores top k×4): recall@100 vs flat 0.986 (...)"."""
    params = {"hnsw": lambda: f"M {d['hnsw_m']}, efSearch {d['hnsw_ef_search']}",
              "ivf": lambda: f"nlist {d['ivf_nlist']}, nprobe {d['nprobe']}",
              "ivfpq": lambda: f"nlist {d['ivf_nlist']}, nprobe {d['nprobe']}, {d['code_bytes']} B codes, "
                               f"re-scores top k×{d['refine_factor']} exactly"}.get(d["kind"])
    kind = f"{d['kind']} ({params()})" if params else d["kind"]
    if d.get("exact"):
        return f"{kind}: exact (recall@100 vs flat 1.0)"
    return (f"{kind}: recall@{d['k']} vs flat {d['recall_at_100']:.3f} ({d['queries']} stored vectors as queries, "
            "in-distribution)")


@app.command("info")
def info_command(
    index: Annotated[Path, typer.Option("--index", help="Index folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object. \\[default: off]")] = False,
    verify: Annotated[bool, typer.Option("--verify", help="Also recompute every shard file's sha256. \\[default: off]")] = False,
) -> None:
    """Summarise an index (works on unfinished ones too)."""
    from rich.table import Table
    from rich.text import Text

    info = index_info(index)
    if verify:
        verify_shards(index, read_manifest(index))  # raises IndexError_ naming the damaged file
        info["verified"] = True
    if as_json:
        typer.echo(json.dumps(info))
        return
    table = Table(title=f"index {escape(str(info['path']))}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    rows = [
        ("complete", "yes" if info["complete"] else "[yellow]no[/] (being built: another process holds the lock)"
         if info["building"] else "[red]no[/] (re-run the build to finish it)"),
        ("documents", f"{info['num_docs']:,} in {info['num_shards']} shards") if not info.get("passages") else
        ("passages", f"{info['num_docs']:,} in {info['num_shards']} shards (documents as windows of "
                     f"{info['passages']['window']} tokens, stride {info['passages']['stride']}; the counts "
                     "below are of passages)"),
        *([("deleted rows", f"{info['deleted_docs']:,} until `mice-index compact`")] if info.get("deleted_docs") else []),
        *([("codec drift", _drift_line(info["codec_drift"]))] if info.get("codec_drift") else []),
        ("tokens", f"{info['num_tokens']:,} ({info['truncated_docs']:,} docs truncated at "
                   f"{info['max_doc_length']}, {info['empty_docs']:,} empty)"),
        ("token pruning", info["prune"] if info["prune"] == "none" else f"{info['prune']} (stopword and punctuation "
                                                                         "states not stored)"),
        ("codec", f"{info['codec']} ({info['codec_bytes_per_token']} B/token nominal, "
                  f"{info['bytes_per_token']} B/token on disk)"),
        ("model", f"{info['model']} ({info.get('model_family', 'bert')}, fingerprint {info['model_fingerprint']})"),
        *([("model layer options", ", ".join(f"{k}={v}" for k, v in info["model_options"].items()))]
          if info.get("model_options") else []),
        ("layer ℓ* / hidden size", f"{info['layer']} / {info['hidden_size']}"),
        ("dense vectors", f"{info['dense']['source']} via {info['dense']['backbone']} ({info['dense']['dim']}-d)"
                          if info["dense"] else "none"),
        ("candidate indexes", ", ".join(k for k, v in info["candidates"].items() if v) or "none"),
        ("fields (filters)", ", ".join(f"{f['name']} ({f['type']})" for f in info.get("fields") or []) or "none"),
        *([("dense index", _dense_index_line(info["dense_index"]))] if info.get("dense_index") else []),
        ("disk", _fmt_bytes(info["disk_bytes"])),
        *([("checksums", "verified")] if verify else []),
        ("format / library", f"{info['format_version']} / {info['library_version']}"),
    ]
    for k, v in rows:
        table.add_row(k, Text(str(v)))  # paths, model names: never read as markup
    Console(emoji=False).print(table)
