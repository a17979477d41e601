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
from mice_index.store.manifest import read_manifest


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
) -> None:
    """Serve an index over HTTP: GET / (search page), /search, /info, /health, /docs (OpenAPI)."""
    # Checks that need no model come first, before torch is imported (an error in < 0.5 s).
    if not 0 < port < 65536:
        raise MiceIndexError(f"--port must be in 1..65535, got {port}")
    check_dtype_device(dtype, device)
    check_search_options(candidates, rerank, depth)
    check_positive("--k", k)
    if quantize not in QUANTIZE:
        raise MiceIndexError(f"--quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    read_manifest(index)  # a missing or damaged index folder, named
    try:
        import uvicorn

        from mice_index.serve import BatchConfig, create_app
    except ImportError as exc:
        raise MiceIndexError(f"mice-index serve needs the serve extra ({exc.name} is missing): "
                             'pip install "mice-index[serve]"') from None
    from mice_index.search import Searcher, clipped

    try:
        batch = BatchConfig(window_ms=batch_window_ms, max_batch=max_batch, max_queue=max_queue)
    except ValueError:
        raise MiceIndexError("--batch-window-ms must be >= 0, --max-batch and --max-queue >= 1") from None
    # the model is always loaded: requests may ask for MICE (or explanations) whatever the default
    opened = Searcher.open(index, model=model, config=search_config(candidates, depth, "mice", dtype, device, quantize=quantize))
    searcher = opened if rerank == "mice" else opened.with_config(rerank=rerank)
    k = clipped("--k", k, 10, searcher.reader.num_docs)
    log = logging.getLogger("mice_index.serve")  # one plain line per request, on stderr
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    err_console.print(f"serving {index} on http://{host}:{port}/ (Ctrl-C to stop)", highlight=False)
    uvicorn.run(create_app(searcher, batch, k=k, model_name=model), host=host, port=port, access_log=False,
                log_level="warning", timeout_graceful_shutdown=10)
    err_console.print("stopped", highlight=False)
