"""`--engine ray`: the build spread over a pool of Ray actors (one per GPU, or per CPU share).

The driver does what needs one place: it loads the model (for the fingerprint), trains the codec
ONCE and stores it (the single-process build's first manifest), then streams the corpus through
the project's validating readers, cuts it into build shards of `shard_docs` documents and hands
each uncommitted shard to an idle actor (at most two queued per actor, so driver memory stays
bounded). Every actor holds the model (shipped once through the object store: all workers use
the driver's exact weights) and the codec parameters, encodes whole shards and commits them with
the same ShardWriter as the local build. When every shard is committed the driver verifies the
checksums, builds the candidate indexes and writes the manifest with complete=true.

Fault tolerance: actors are restarted by Ray (`max_restarts`) and their shard task retried
(`max_task_retries`); a shard is published by an atomic rename only once fully written, and a
retried shard that is already committed is returned, not rewritten: no document is lost or
duplicated. If the driver itself dies, re-running the command resumes (committed shards skipped).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from mice_index.build import BuildConfig, BuildResult, _Builder, writing_index
from mice_index.distributed.shards import FAULT_ENV, check_same_ids, committed_shards, encode_shard, finalize, shard_blocks
from mice_index.distributed.static import check_url, make_encoder
from mice_index.errors import MiceIndexError
from mice_index.model import MiceModel
from mice_index.store import layout as L
from mice_index.store.codecs import load_codec
from mice_index.store.manifest import Manifest, ShardEntry, index_info, write_manifest

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install mice-index[ray]"
QUEUE_PER_ACTOR = 2


def require_ray():
    """Import ray or fail with one line saying how to install it."""
    try:
        import ray
    except ImportError:
        raise MiceIndexError(f"--engine ray needs Ray, which is not installed; install it with: {INSTALL_HINT}") from None
    return ray


class ShardEncoderActor:
    """A Ray actor (wrapped with ray.remote at run time) holding the model, encoder and codec."""

    def __init__(self, model: MiceModel, cfg: BuildConfig, root: str, codec_params, threads: int,
                 fault: str | None):
        import torch

        from mice_index.codec import codec_from_params

        torch.set_num_threads(max(1, threads))
        b = _Builder.__new__(_Builder)  # the driver's builder, minus corpus handling
        b.cfg, b.root, b.model, b.progress, b.corpus = cfg, Path(root), model, None, None
        b.max_len = cfg.max_doc_length or model.config.max_doc_length
        self.encoder, self.dense = make_encoder(b)
        self.codec = codec_from_params(*codec_params)
        self.root, self.shard_docs, self.fault = Path(root), cfg.shard_docs, fault
        self.fields = cfg.field_specs()

    def info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "dense": self.dense, "device": str(self.encoder.device)}

    def encode(self, j: int, start_row: int, docs) -> dict[str, Any]:
        return encode_shard(self.encoder, self.codec, self.root, j, start_row, docs, self.shard_docs, self.fault,
                            fields=self.fields)


def _start_ray(ray, address: str | None, num_workers: int | None) -> bool:
    """Connect to `address` or start a local cluster; True if this call started/connected it."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING,
                              "log_to_driver": False}
    if address:
        ray.init(address=address, **kwargs)
    elif os.environ.get("RAY_ADDRESS"):  # Ray's own way of naming the cluster to join
        ray.init(**kwargs)
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)
    return True


def _plan(ray, cfg: BuildConfig, num_workers: int | None) -> tuple[int, dict[str, Any], int]:
    """(number of actors, actor resources, torch threads per actor) from the cluster's resources."""
    res = ray.cluster_resources()
    gpus, cpus = int(res.get("GPU", 0)), max(1, int(res.get("CPU", 1)))
    # more workers than GPUs / CPUs: fractional shares, so that every actor can be scheduled
    if gpus and cfg.device != "cpu":
        n = num_workers or gpus
        return n, {"num_gpus": 1 if n <= gpus else gpus / n, "num_cpus": min(1, cpus / n)}, max(1, cpus // n)
    if cfg.device == "cuda":
        raise MiceIndexError("--device cuda: the Ray cluster has no GPUs")
    n = num_workers or cpus
    per = cpus // n if n <= cpus else cpus / n
    return n, {"num_cpus": per}, max(1, int(per))


def build_index_ray(corpus, index, config: BuildConfig = BuildConfig(), *, model: MiceModel | None = None,
                    ray_address: str | None = None, num_workers: int | None = None,
                    progress: Callable[[int], None] | None = None, max_retries: int = 3) -> BuildResult:
    """Build (or resume) the index of `corpus` in `index` with a pool of Ray actors; same result
    as `mice_index.build.build_index`. Without `ray_address` (and no ray.init done by the caller)
    a local cluster is started with all local CPUs."""
    ray = require_ray()
    if num_workers is not None and num_workers < 1:
        raise MiceIndexError(f"--num-workers must be >= 1, got {num_workers}")
    t0 = time.perf_counter()
    final = check_url(index)
    b = _Builder(corpus, final, config, model, None)
    with writing_index(final, config.overwrite) as root:  # the lock; --overwrite: a staging folder
        b.root = root
        encoded = _build(ray, b, config, ray_address, num_workers, progress, max_retries)
    return BuildResult(final, index_info(final), encoded, time.perf_counter() - t0)


def _build(ray, b: _Builder, config: BuildConfig, ray_address, num_workers, progress, max_retries) -> int:
    root = b.root
    m = b.prepare()
    encoder, dense = make_encoder(b)
    if m is None:
        m = b.new_manifest(b.fit_codec(encoder), dense)  # codec trained once, here
        write_manifest(root, m)
    del encoder
    codec = load_codec(root, m)
    sdir = root / L.SHARDS_DIR
    sdir.mkdir(exist_ok=True)
    for tmp in sdir.glob(L.TMP_PREFIX + "*"):
        L.remove(tmp)  # uncommitted shards of an interrupted run (this driver owns the folder)
    S = config.shard_docs
    done = committed_shards(root, S)
    m = replace(m, shards=tuple(done[j] for j in sorted(done)))
    write_manifest(root, m)

    started = _start_ray(ray, ray_address, num_workers)
    actors: list = []
    try:
        n, resources, threads = _plan(ray, config, num_workers)
        remote_cls = ray.remote(ShardEncoderActor).options(max_restarts=max_retries, max_task_retries=max_retries,
                                                            **resources)
        model_ref = ray.put(b.model.cpu())  # CPU tensors: workers move it to their own device
        params_ref = ray.put(codec.to_params())
        fault = os.environ.get(FAULT_ENV)
        actors = [remote_cls.remote(model_ref, config, str(root), params_ref, threads, fault) for _ in range(n)]
        log.info("ray: %d actors (%s, %d torch threads each)", n, resources, threads)
        encoded, num_docs, m = _dispatch(ray, actors, b, done, m, progress)
        if dense is not None:
            worker_dense = ray.get(actors[0].info.remote())["dense"]
            assert worker_dense == dense, (worker_dense, dense)
    except ray.exceptions.RayActorError as exc:
        raise MiceIndexError(f"a Ray worker died more than {max_retries} times ({exc.__class__.__name__}); "
                             "re-run the same command to resume (committed shards are kept)") from None
    finally:
        for a in actors:
            ray.kill(a)
        if started:
            ray.shutdown()
    finalize(root, m, {int(e.name): e for e in m.shards}, num_docs, S, config.bm25, config.dense_kind,
             dense_nprobe=config.dense_nprobe)
    return encoded


def _dispatch(ray, actors: list, b: _Builder, done: dict[int, ShardEntry], m: Manifest, progress):
    """Stream the corpus, send uncommitted shards to actors, record commits in the manifest;
    returns (documents encoded, corpus size, the manifest listing every committed shard)."""
    S = b.cfg.shard_docs
    load = {i: 0 for i in range(len(actors))}
    in_flight: dict[Any, tuple[int, int]] = {}  # ref -> (actor, shard)
    entries = {j: e for j, e in done.items()}
    encoded = num_docs = 0

    def collect(block: bool) -> None:
        nonlocal encoded, m
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=None if block else 0)
        for ref in ready:
            i, j = in_flight.pop(ref)
            load[i] -= 1
            try:
                entry = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                if isinstance(getattr(exc, "cause", None), MiceIndexError):
                    raise exc.cause from None  # user-facing errors stay one clear line
                raise
            entries[j] = entry
            encoded += entry.num_docs
            m = replace(m, shards=tuple(entries[k] for k in sorted(entries)))
            write_manifest(b.root, m)  # progress is visible in `mice-index info`
            if progress:
                progress(entry.num_docs)

    try:
        for j, start, docs in shard_blocks(b.docs(), S):
            num_docs = start + len(docs)
            if j in done:
                check_same_ids(b.root, done[j], docs, b.corpus)
                if progress:
                    progress(len(docs))
                continue
            while min(load.values()) >= QUEUE_PER_ACTOR:
                collect(block=True)
            i = min(load, key=load.get)
            in_flight[actors[i].encode.remote(j, start, docs)] = (i, j)
            load[i] += 1
            if in_flight:
                collect(block=False)
    except MiceIndexError:  # bad input further on: let the shards already sent commit first
        while in_flight:
            collect(block=True)
        raise
    while in_flight:
        collect(block=True)
    return encoded, num_docs, m
