"""Distributed builds: static slices + merge and the Ray engine give the local build's index
(identical ids, states/codes, shard files and manifest), survive killed workers / failed shards,
and Ray stays optional."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mice_index.build import BuildConfig, build_index
from mice_index.distributed.shards import FAULT_ENV, committed_shards
from mice_index.errors import IndexError_, MiceIndexError
from mice_index.store.reader import IndexReader, read_manifest
from tests.conftest import write_tiny_bert

N_DOCS = 70  # 5 build shards of 16 (the last one partial)
# a trained codec (32 B/token); fp32 compute: bf16 kernels are JIT-compiled per shape (slow in tests)
CFG = BuildConfig(codec="pq32", shard_docs=16, dense="none", batch_tokens=512, window_docs=8, dtype="fp32")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, minilm_dir):
    from mice_index.model import MiceModel

    path = tmp_path_factory.mktemp("model") / "tiny-bert"
    write_tiny_bert(path, minilm_dir)
    return MiceModel.from_pretrained(path, fusion_layer=2, num_interaction_layers=2, max_doc_length=64,
                                     max_query_length=16)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    words = "protein cell gene virus cancer study result alpha beta receptor mouse dose".split()
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    with open(path, "w") as fh:
        for i in range(N_DOCS):
            text = " ".join(rng.choice(words) for _ in range(rng.randint(0, 50)))
            fh.write(json.dumps({"_id": f"d{i}", "title": f"title {i}" if i % 3 else "", "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory, corpus, tiny_model):
    path = tmp_path_factory.mktemp("ref") / "index"
    build_index(corpus, path, CFG, model=tiny_model)
    return path


def assert_same_index(ref, other, ignore=("corpus", "generation")) -> None:  # generation: random per build
    a, b = IndexReader.open(ref), IndexReader.open(other)
    assert a.doc_ids == b.doc_ids and len(a.doc_ids) == N_DOCS
    # shard.json holds the sha256 of every shard file: equal entries = byte-identical shards
    assert a.manifest.shards == b.manifest.shards
    assert a.manifest.codec == b.manifest.codec  # same trained parameters (fingerprint)
    assert {k: v for k, v in a.manifest.to_dict().items() if k not in ignore} == \
        {k: v for k, v in b.manifest.to_dict().items() if k not in ignore}
    rows = range(a.num_docs)
    for x, y in zip(a.get_encoded(rows), b.get_encoded(rows)):
        assert all(np.array_equal(x[k], y[k]) for k in x)
    for x, y in zip(a.get_states(rows), b.get_states(rows)):
        np.testing.assert_array_equal(x, y)
    assert b.bm25_path.is_dir()
    b.verify()


# ---------------------------------------------------------------- static slices (no Ray)

def test_static_slices_then_merge_equal_local(tmp_path, corpus, tiny_model, reference):
    from mice_index.distributed import build_slice, merge_index

    index = tmp_path / "sliced"
    r1 = build_slice(corpus, index, CFG, 2, 1, model=tiny_model)  # order does not matter
    assert r1.shards == [1, 3] and r1.encoded_docs == 32 and r1.num_docs == N_DOCS
    with pytest.raises(IndexError_, match=r"slice\(s\) 0 of 2 have not finished"):
        merge_index(index)
    assert read_manifest(index).complete is False
    r0 = build_slice(corpus, index, CFG, 2, 0, model=tiny_model)
    assert r0.shards == [0, 2, 4] and r0.encoded_docs == 38
    info = merge_index(index)
    assert info["complete"] and info["num_docs"] == N_DOCS
    assert not (index / "slices").exists()
    assert_same_index(reference, index)


def test_slice_failure_then_rerun_loses_nothing(tmp_path, corpus, tiny_model, reference, monkeypatch):
    from mice_index.distributed import build_slice, merge_index

    index = tmp_path / "sliced"
    build_slice(corpus, index, CFG, 2, 1, model=tiny_model)
    monkeypatch.setenv(FAULT_ENV, "fail:2")  # slice 0 fails on its second shard
    with pytest.raises(MiceIndexError, match="injected failure on build shard 2"):
        build_slice(corpus, index, CFG, 2, 0, model=tiny_model)
    assert (index / "shards" / "00000").is_dir() and not (index / "shards" / "00002").exists()
    assert not list((index / "shards").glob(".tmp-*"))
    with pytest.raises(IndexError_, match="slice"):
        merge_index(index)
    monkeypatch.delenv(FAULT_ENV)
    again = build_slice(corpus, index, CFG, 2, 0, model=tiny_model)
    assert again.encoded_docs == N_DOCS - 32 - 16  # shard 0 kept, shards 2 and 4 encoded
    merge_index(index)
    assert_same_index(reference, index)


def test_merge_names_a_damaged_shard(tmp_path, corpus, tiny_model):
    from mice_index.distributed import build_slice, merge_index

    index = tmp_path / "sliced"
    build_slice(corpus, index, CFG, 1, 0, model=tiny_model)
    docs = index / "shards" / "00001" / "docs.parquet"
    data = bytearray(docs.read_bytes())
    data[len(data) // 2] ^= 0xFF
    docs.write_bytes(bytes(data))
    with pytest.raises(IndexError_, match=r"00001/docs.parquet: checksum mismatch"):
        merge_index(index)


def test_slice_options_are_checked(tmp_path, corpus, tiny_model):
    from mice_index.distributed import build_slice

    with pytest.raises(MiceIndexError, match=r"--shard-id must be in 0..1"):
        build_slice(corpus, tmp_path / "i", CFG, 2, 2, model=tiny_model)
    with pytest.raises(MiceIndexError, match="fsspec URLs are not supported"):
        build_slice(corpus, "s3://bucket/index", CFG, 2, 0, model=tiny_model)


def test_cli_slices_and_merge(tmp_path, corpus, tiny_model, reference):
    from typer.testing import CliRunner

    from mice_index.cli import app

    model_dir = tiny_model.save(tmp_path / "mice")
    index = tmp_path / "cli"
    base = ["build", "--corpus", str(corpus), "--index", str(index), "--model", str(model_dir), "--codec", "pq32",
            "--shard-docs", "16", "--dense", "none", "--batch-tokens", "512", "--dtype", "fp32", "--quiet",
            "--num-shards", "2"]
    out = CliRunner().invoke(app, ["merge", "--index", str(index)])
    assert out.exit_code != 0  # nothing built yet
    for i in (0, 1):
        run = CliRunner().invoke(app, base + ["--shard-id", str(i)])
        assert run.exit_code == 0, run.output
        assert f"slice {i} of 2 done" in run.output
    run = CliRunner().invoke(app, ["merge", "--index", str(index), "--json"])
    assert run.exit_code == 0, run.output
    assert json.loads(run.output)["complete"] is True
    a = IndexReader.open(reference)
    b = IndexReader.open(index)
    assert a.doc_ids == b.doc_ids  # (bit-identity is proven above; the CLI has no --window-docs)
    assert [(s.start_row, s.num_tokens) for s in a.manifest.shards] == \
        [(s.start_row, s.num_tokens) for s in b.manifest.shards]
    b.verify()
    bad = CliRunner().invoke(app, base + ["--shard-id", "0", "--engine", "ray"])
    assert bad.exit_code != 0 and "drop --num-shards" in str(bad.exception)


# ---------------------------------------------------------------- Ray stays optional

def test_importing_the_package_does_not_import_ray():
    code = ("import sys, mice_index, mice_index.build, mice_index.distributed, mice_index.cli; "
            "from mice_index.distributed import build_slice, merge_index; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_engine_ray_without_ray_gives_install_hint(monkeypatch):
    from mice_index.distributed import require_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(MiceIndexError, match=r"pip install mice-index\[ray\]"):
        require_ray()
    from typer.testing import CliRunner

    from mice_index.cli import app

    sample = str(Path(__file__).parent.parent / "mice_index" / "data" / "sample")
    run = CliRunner().invoke(app, ["build", "--corpus", sample, "--index", "/nonexistent/idx", "--engine", "ray"])
    assert isinstance(run.exception, MiceIndexError) and "pip install mice-index[ray]" in str(run.exception)
    run = CliRunner().invoke(app, ["build", "--corpus", sample, "--index", "/nonexistent/idx", "--engine", "spark"])
    assert "--engine must be one of local, ray" in str(run.exception)


# ---------------------------------------------------------------- Ray engine (local 2-CPU cluster)

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_engine_equals_local_and_survives_a_killed_worker(tmp_path, corpus, tiny_model, reference,
                                                              ray_cluster, monkeypatch):
    from mice_index.distributed import build_index_ray

    marker = tmp_path / "killed"
    # the worker encoding shard 1 is SIGKILLed just before committing it; Ray restarts the actor
    # and retries the shard on it
    monkeypatch.setenv(FAULT_ENV, f"kill:1:{marker}")
    index = tmp_path / "ray"
    result = build_index_ray(corpus, index, CFG, model=tiny_model, num_workers=2)
    assert marker.exists()  # the kill really happened
    assert result.info["complete"] and result.encoded_docs == N_DOCS
    assert_same_index(reference, index)


@pytest.mark.slow  # ~15-45 s on 2 shared cores; the same resume logic is covered fast by the slice test
def test_ray_failed_shard_then_resume(tmp_path, corpus, tiny_model, reference, ray_cluster, monkeypatch):
    from mice_index.distributed import build_index_ray

    index = tmp_path / "ray"
    monkeypatch.setenv(FAULT_ENV, "fail:3")
    with pytest.raises(MiceIndexError, match="injected failure on build shard 3"):
        build_index_ray(corpus, index, CFG, model=tiny_model, num_workers=2)
    m = read_manifest(index)
    assert m.complete is False and "00003" not in {s.name for s in m.shards}
    monkeypatch.delenv(FAULT_ENV)
    done = sum(e.num_docs for e in committed_shards(index, CFG.shard_docs).values())  # on disk
    assert 0 < done < N_DOCS
    result = build_index_ray(corpus, index, CFG, model=tiny_model, num_workers=2)
    assert result.encoded_docs == N_DOCS - done  # committed shards were skipped
    assert_same_index(reference, index)


def test_ray_worker_plan_fits_the_cluster():
    from types import SimpleNamespace

    from mice_index.distributed.ray_engine import _plan

    def fake(**res):
        return SimpleNamespace(cluster_resources=lambda: res)

    assert _plan(fake(CPU=2.0), CFG, None) == (2, {"num_cpus": 1}, 1)
    assert _plan(fake(CPU=2.0), CFG, 1) == (1, {"num_cpus": 2}, 2)
    assert _plan(fake(CPU=2.0), CFG, 4) == (4, {"num_cpus": 0.5}, 1)  # all four schedulable
    assert _plan(fake(CPU=16.0, GPU=2.0), CFG, None) == (2, {"num_gpus": 1, "num_cpus": 1}, 8)
    with pytest.raises(MiceIndexError, match="no GPUs"):
        _plan(fake(CPU=2.0), BuildConfig(device="cuda"), None)
