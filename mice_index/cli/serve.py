"""`mice-index serve`: load an index and its model once, then answer searches over HTTP (JSON)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from mice_index.choices import CANDIDATES, QUANTIZE, RERANKERS, check_positive, check_search_options
from mice_index.cli import app, err_console
from mice_index.cli.search import QUANTIZE_HELP, check_dtype_device, search_config
from mice_index.errors import MiceIndexError
from mice_index.serve.limits import ServeLimits  # stdlib only: the CLI starts without FastAPI
from mice_index.store.manifest import read_manifest

_LIMITS = ServeLimits()  # the options' defaults (one source: the dataclass)


@app.command("serve")
def serve_command(
    index: Annotated[Path, typer.Option("--index", help="Index folder made by `mice-index build`.")],
    model: Annotated[Optional[str], typer.Option("--model", help="MICE model \\[default: the index's model].")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8080,
    k: Annotated[int, typer.Option("--k", help="Default hits per query.")] = 10,
    candidates: Annotated[str, typer.Option("--candidates", help=f"Default first stage: {'|'.join(CANDIDATES)}.")] = "hybrid",
    depth: Annotated[Optional[int], typer.Option("--depth", help="Default candidates per query re-ranked by MICE "
                                                 "\\[default: min(100, corpus size)].")] = None,
    rerank: Annotated[str, typer.Option("--rerank", help=f"Default re-ranker: {'|'.join(RERANKERS)}.")] = "mice",
    dtype: Annotated[str, typer.Option("--dtype", help="MICE scoring: auto (bf16 on CUDA and on CPUs with AVX512-BF16 or AMX, else fp32), fp32 or bf16.")] = "auto",
    device: Annotated[str, typer.Option("--device", help="auto|cpu|cuda.")] = "auto",
    quantize: Annotated[str, typer.Option("--quantize", help=QUANTIZE_HELP)] = "auto",
    batch_window_ms: Annotated[float, typer.Option("--batch-window-ms", help="How long concurrent requests are "
                                                   "collected into one scoring pass.")] = 5.0,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Requests per scoring pass at most.")] = 32,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests waiting at most; more get 503.")] = 64,
    max_k: Annotated[int, typer.Option("--max-k", help="Hits per query a request may ask for at most (more: 400).")] = _LIMITS.max_k,
    max_depth: Annotated[int, typer.Option("--max-depth", help="Candidates per query a request may ask to re-rank at most (more: 400).")] = _LIMITS.max_depth,
    max_work: Annotated[int, typer.Option("--max-work", help="Queries x depth in one request at most (more: 400).")] = _LIMITS.max_work,
    max_explain: Annotated[int, typer.Option("--max-explain", help="Explained hits (queries x k) in one request at most (more: 400).")] = _LIMITS.max_explain,
    request_timeout: Annotated[float, typer.Option("--request-timeout", help="Seconds one request may take, queueing included: still queued then 503, being scored 504 (stopped at its next chunk).")] = _LIMITS.request_timeout_s,
    pass_work: Annotated[int, typer.Option("--pass-work", help="Candidates (queries x depth) scored in one pass; between passes a request's budget is checked and requests that arrived meanwhile run.")] = _LIMITS.chunk_work,
    max_body: Annotated[int, typer.Option("--max-body", help="Request body bytes at most (more: 413, before it is read).")] = _LIMITS.max_body_bytes,
    allowed_hosts: Annotated[Optional[str], typer.Option("--allowed-hosts", help="Comma-separated Host header names accepted (others: 400) \\[default: localhost, 127.0.0.1, ::1 when --host is a loopback address, else any].")] = None,
) -> None:
    """Serve an index over HTTP: GET / (search page), /search, /info, /health, /docs (OpenAPI)."""
    from mice_index.serve.limits import loopback_hosts  # stdlib only: bind before heavy imports
    from mice_index.serve.run import bind, serve

    if not 0 < port < 65536:
        raise MiceIndexError(f"--port must be in 1..65535, got {port}")
    if batch_window_ms < 0 or max_batch < 1 or max_queue < 1:
        raise MiceIndexError("--batch-window-ms must be >= 0, --max-batch and --max-queue >= 1")
    # Checks that need no model come first, before torch is imported (an error in < 0.5 s).
    check_dtype_device(dtype, device)
    check_search_options(candidates, rerank, depth)
    check_positive("--k", k)
    if quantize not in QUANTIZE:
        raise MiceIndexError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    hosts = tuple(h.strip() for h in allowed_hosts.split(",") if h.strip()) if allowed_hosts else loopback_hosts(host)
    try:
        limits = ServeLimits(max_k=max_k, max_depth=max_depth, max_work=max_work, max_explain=max_explain,
                             request_timeout_s=request_timeout, max_body_bytes=max_body, allowed_hosts=hosts,
                             chunk_work=pass_work)
    except ValueError:
        raise MiceIndexError("--max-k, --max-depth, --max-work, --max-explain, --max-body, --pass-work and "
                             "--request-timeout must be positive") from None
    sock = bind(host, port)  # a busy port is one line now, before seconds of importing and loading
    read_manifest(index)  # a missing or damaged index folder, named, still before torch
    try:
        import uvicorn  # noqa: F401

        from mice_index.serve import BatchConfig, create_app
    except ImportError as exc:
        sock.close()
        raise MiceIndexError(f"mice-index serve needs the serve extra ({exc.name} is missing): "
                             'pip install "mice-index[serve]"') from None
    from mice_index.search import Searcher, clipped

    batch = BatchConfig(window_ms=batch_window_ms, max_batch=max_batch, max_queue=max_queue)
    # the model is always loaded: requests may ask for MICE (or explanations) whatever the default
    opened = Searcher.open(index, model=model, config=search_config(candidates, depth, "mice", dtype, device, quantize=quantize))
    searcher = opened if rerank == "mice" else opened.with_config(rerank=rerank)
    k = clipped("--k", k, 10, searcher.reader.num_live)
    log = logging.getLogger("mice_index.serve")  # one plain line per request, on stderr
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    app_ = create_app(searcher, batch, k=k, limits=limits, model_name=model)
    err_console.print(f"serving {index} on http://{host}:{port}/ (Ctrl-C to stop)", highlight=False)
    serve(app_, sock, limits)
    err_console.print("stopped", highlight=False)
