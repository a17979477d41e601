"""What `mice-index build` runs for `--engine ray` or `--num-shards/--shard-id` (CLI code: prints)."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.markup import escape

from mice_index.build import BuildConfig, BuildResult
from mice_index.errors import MiceIndexError

ENGINES = ("local", "ray")


def wants_distributed(engine: str, num_shards: int | None, shard_id: int | None) -> bool:
    if engine not in ENGINES:
        raise MiceIndexError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    return engine != "local" or num_shards is not None or shard_id is not None


def build_distributed(corpus: str, index, config: BuildConfig, *, engine: str, ray_address: str | None,
                      num_workers: int | None, num_shards: int | None, shard_id: int | None,
                      progress: Callable[[int], None], total_callback: Callable[[int | None], None]
                      ) -> BuildResult | None:
    """BuildResult for a whole build (Ray); None for one static slice (its summary is printed here)."""
    from mice_index.sources import count_documents

    if config.passages is not None:  # their shard writers and manifests know nothing of passage rows yet
        raise MiceIndexError("--passages is not supported with --engine ray or --num-shards/--shard-id yet; "
                             "build a passage index with the local engine")
    if (num_shards is None) != (shard_id is None):
        raise MiceIndexError("--num-shards and --shard-id go together (slice i of N, pyserini's convention)")
    if engine == "ray":
        if num_shards is not None:
            raise MiceIndexError("--engine ray shards the corpus itself; drop --num-shards/--shard-id "
                                 "(those are for schedulers other than Ray)")
        from mice_index.distributed.ray_engine import build_index_ray, require_ray

        require_ray()  # the install hint before any model is loaded
        _total(corpus, total_callback, count_documents)
        return build_index_ray(corpus, index, config, ray_address=ray_address, num_workers=num_workers,
                               progress=progress)
    if ray_address or num_workers:
        raise MiceIndexError("--ray-address / --num-workers need --engine ray")
    from mice_index.distributed.static import build_slice

    _total(corpus, total_callback, count_documents)
    r = build_slice(corpus, index, config, num_shards, shard_id, progress=progress)  # type: ignore[arg-type]
    rate = r.encoded_docs / r.seconds if r.seconds else 0.0
    Console(emoji=False).print(
        f"[bold green]slice {r.slice_id} of {r.num_slices} done[/] in {escape(str(r.path))}: build shards "
        f"{', '.join(map(str, r.shards)) or 'none'} of a {r.num_docs:,}-document corpus; encoded "
        f"{r.encoded_docs:,} documents in {r.seconds:.1f} s ({rate:,.0f} docs/s). When every slice is done: "
        f"mice-index merge --index {escape(str(r.path))}", highlight=False, soft_wrap=True)
    return None


def _total(corpus, total_callback, count_documents) -> None:
    try:
        total_callback(count_documents(corpus))
    except MiceIndexError:
        total_callback(None)
