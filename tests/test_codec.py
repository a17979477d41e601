"""Codec stage: shapes/dtypes, numeric error bounds, persistence, determinism, user errors.

Synthetic "BERT-like" states: clustered low-rank signal + noise + a per-dimension bias with a few
huge outlier dimensions. Trained codecs use small settings (few centroids, 6-bit PQ) for speed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from mice_index.codec import ALIASES, CODECS, Codec, CodecError, codec_from_params, make_codec, resolve_codec_name
from mice_index.errors import MiceIndexError

D = 96  # divisible by every preset M (16, 24, 32)
OUTLIER_DIMS = (5, 40, 77)

# Small, fast settings for trained codecs (the defaults target D=384 and ~50k-token samples).
SMALL: dict[str, dict] = {
    "int8-dim": {},
    "pq": {"M": 16, "nbits": 4},
    "pq32": {"nbits": 4},
    "opq": {"M": 16, "nbits": 4, "niter": 2},
    "opq32": {"nbits": 4, "niter": 2},
    "rq": {"M": 16, "nbits": 4, "n_centroids": 32},
    "rq26": {"nbits": 4, "n_centroids": 32},
    "rq32": {"nbits": 4, "n_centroids": 32},
}
ALL_NAMES = sorted(CODECS)


def structured(n: int, d: int = D, seed: int = 0, data_seed: int = 123, bias: bool = True) -> np.ndarray:
    """Clustered low-rank states with per-dim bias; `data_seed` fixes the distribution, `seed` the draw."""
    g = np.random.default_rng(data_seed)
    basis = g.normal(size=(8, d)) / np.sqrt(8)
    centers = g.normal(size=(16, d)) * 0.8
    shift = g.normal(size=d) * 0.2
    shift[list(OUTLIER_DIMS)] = [25.0, -18.0, 12.0]
    r = np.random.default_rng(seed)
    x = centers[r.integers(0, 16, n)] + r.normal(size=(n, 8)) @ basis + 0.05 * r.normal(size=(n, d))
    # outlier dims: huge mean and a larger spread (like BERT's few massive dimensions)
    x[:, list(OUTLIER_DIMS)] += shift[list(OUTLIER_DIMS)] * 0.1 * r.normal(size=(n, len(OUTLIER_DIMS)))
    return (x + shift * bias).astype(np.float32)


def small_codec(name: str, dim: int = D) -> Codec:
    canonical = resolve_codec_name(name)
    return make_codec(name, dim=dim, **SMALL.get(canonical, {}))


@pytest.fixture(scope="module", autouse=True)
def _one_faiss_thread():
    import faiss

    n = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # small problems: threads only add overhead on a shared machine
    yield
    faiss.omp_set_num_threads(n)


@pytest.fixture(scope="module")
def sample() -> np.ndarray:
    return structured(2000, seed=1)


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    return structured(500, seed=2)


@pytest.fixture(scope="module")
def fitted(sample) -> dict[str, Codec]:
    return {name: small_codec(name).fit(sample, seed=0) for name in ALL_NAMES}


def rel_err(x: np.ndarray, xh: np.ndarray) -> float:
    return float((np.linalg.norm(x - xh, axis=1) / np.linalg.norm(x, axis=1)).mean())


# ---- registry ---------------------------------------------------------------------------------
def test_registry_has_required_codecs():
    for name in ("fp32", "fp16", "int8", "int8-dim", "compact"):
        assert make_codec(name).name in CODECS
    assert ALIASES["compact"] in CODECS
    assert make_codec("compact").name == ALIASES["compact"]
    assert all(CODECS[n].name == n for n in CODECS)


def test_unknown_codec_name_lists_valid_ones():
    with pytest.raises(CodecError, match=r"unknown codec 'fp8'.*fp16.*compact") as ei:
        make_codec("fp8")
    assert isinstance(ei.value, MiceIndexError)
    with pytest.raises(CodecError, match="unknown codec"):
        codec_from_params({"codec": "nope", "dim": 4}, {})


@pytest.mark.parametrize("name", ["compact", "pq32", "opq32", "rq26", "rq32"])
def test_compact_codecs_fit_32_bytes_at_384(name):
    c = make_codec(name, dim=384)
    assert c.needs_fit and not c.is_fitted
    assert c.bytes_per_token <= 32


def test_bytes_per_token_of_scalar_codecs():
    assert [make_codec(n, dim=384).bytes_per_token for n in ("fp32", "fp16", "int8", "int8-dim")] == [1536, 768, 386, 384]


# ---- round trip --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_NAMES)
def test_round_trip_shapes_and_dtypes(name, fitted, held_out):
    c = fitted[name]
    cols = c.columns()
    parts = c.encode(held_out)
    assert set(parts) == set(cols)
    for k, (dt, w) in cols.items():
        assert parts[k].dtype == dt and parts[k].shape == (len(held_out), w)
    assert c.bytes_per_token == sum(np.dtype(dt).itemsize * w for dt, w in cols.values())
    xh = c.decode(parts)
    assert xh.dtype == np.float32 and xh.shape == held_out.shape
    assert np.array_equal(c.decode_torch(parts).numpy(), xh)
    empty = c.encode(np.zeros((0, D), np.float32))
    assert all(v.shape[0] == 0 for v in empty.values())
    assert c.decode(empty).shape == (0, D)
    # float64 input is accepted and coded like float32
    assert all(np.array_equal(c.encode(held_out.astype(np.float64))[k], parts[k]) for k in parts)


def test_fp32_is_exact(fitted, held_out):
    assert np.array_equal(fitted["fp32"].decode(fitted["fp32"].encode(held_out)), held_out)


def test_fp16_error_bound(fitted, held_out):
    x = np.concatenate([held_out, np.array([[1e-7] * D, [-3e4] * D], np.float32)])
    xh = fitted["fp16"].decode(fitted["fp16"].encode(x))
    # round-to-nearest: relative 2^-11 for normal numbers, absolute 2^-25 below the normal range
    assert np.all(np.abs(x - xh) <= 2.0**-11 * np.abs(x) + 2.0**-25)
    with pytest.raises(CodecError, match="float16 range"):
        fitted["fp16"].encode(np.full((1, D), 1e6, np.float32))


def test_int8_per_token_error_bound(fitted, held_out):
    x = np.concatenate([held_out, np.zeros((1, D), np.float32)])
    parts = fitted["int8"].encode(x)
    xh = fitted["int8"].decode(parts)
    absmax = np.abs(x).max(axis=1, keepdims=True)
    # |err| <= scale/2 with scale = absmax/127 rounded *up* to float16 (rel. step 2^-10)
    assert np.all(np.abs(x - xh) <= absmax / 254 * (1 + 2.0**-10) + 1e-7)
    assert np.array_equal(xh[-1], np.zeros(D, np.float32))
    assert np.abs(parts["values"].astype(int)).max() <= 127
    # the token absmax is hit exactly (up to float16 scale rounding) by a code of +-127
    assert np.all(np.abs(parts["values"][:-1]).max(axis=1) >= 126)


def test_int8_dim_error_bound_and_clipping(fitted, sample, held_out):
    c = fitted["int8-dim"]
    scale = c.to_params()[1]["scale"]
    np.testing.assert_allclose(scale, np.abs(sample).max(axis=0) / 127, rtol=1e-6)
    xh = c.decode(c.encode(sample))  # inside the fitted range
    assert np.all(np.abs(sample - xh) <= scale / 2 * (1 + 1e-5))
    # per-dim scales beat the per-token scale when a few dimensions are huge
    assert rel_err(held_out, c.decode(c.encode(held_out))) < 0.5 * rel_err(
        held_out, fitted["int8"].decode(fitted["int8"].encode(held_out))
    )
    big = np.full((1, D), 1e3, np.float32)
    np.testing.assert_allclose(c.decode(c.encode(big))[0], 127 * scale, rtol=1e-6)


# max ||x - x^|| / ||x - mean||: tiny 4-bit test settings (8-16 B/token at D=96), measured ~0.40-0.62
BASELINE_RATIO = {"pq": 0.75, "opq": 0.6, "rq": 0.55, "pq32": 0.55, "opq32": 0.5, "rq26": 0.5, "rq32": 0.5}


@pytest.mark.parametrize("name", sorted(BASELINE_RATIO))
def test_trained_codecs_beat_mean_baseline(name, fitted, sample, held_out):
    """Held-out error well below the mean-only reconstruction (which keeps all per-dim bias)."""
    mean = sample.mean(0)
    xh = fitted[name].decode(fitted[name].encode(held_out))
    ratio = np.linalg.norm(held_out - xh, axis=1).mean() / np.linalg.norm(held_out - mean, axis=1).mean()
    assert ratio < BASELINE_RATIO[name], ratio
    # and the trained codecs improve on untrained per-token int8 noise only at far fewer bytes
    assert fitted[name].bytes_per_token <= 16


def test_compact_is_not_hurt_by_outlier_bias(sample, held_out):
    """The error does not grow with the huge per-dim bias of a few dims (centring + shift-equivariant
    k-means: the codec sees the same residuals with or without the bias)."""
    def abs_err(fit, ev, **opts):
        c = make_codec("compact", dim=D, **{**SMALL[ALIASES["compact"]], **opts}).fit(fit)
        return float(np.linalg.norm(ev - c.decode(c.encode(ev)), axis=1).mean())

    unbiased = abs_err(structured(2000, seed=1, bias=False), structured(500, seed=2, bias=False))
    assert abs_err(sample, held_out) < 1.05 * unbiased


# ---- persistence and determinism ---------------------------------------------------------------
@pytest.mark.parametrize("name", ALL_NAMES)
def test_params_round_trip_decodes_identically(name, fitted, held_out):
    c = fitted[name]
    config, arrays = c.to_params()
    config = json.loads(json.dumps(config))
    assert all(isinstance(a, np.ndarray) for a in arrays.values())
    c2 = codec_from_params(config, {k: a.copy() for k, a in arrays.items()})
    assert type(c2) is type(c) and c2.is_fitted
    parts = c.encode(held_out)
    assert np.array_equal(c2.decode(parts), c.decode(parts))
    assert all(np.array_equal(c2.encode(held_out)[k], parts[k]) for k in parts)
    assert c2.fingerprint() == c.fingerprint()


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if CODECS[n].needs_fit])
def test_fit_is_deterministic_with_seed(name, fitted, sample):
    assert small_codec(name).fit(sample, seed=0).fingerprint() == fitted[name].fingerprint()


# ---- user errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in ALL_NAMES if CODECS[n].needs_fit])
def test_encode_before_fit_is_a_clear_error(name, held_out):
    c = small_codec(name)
    with pytest.raises(CodecError, match=r"must be fitted before encode\(\)"):
        c.encode(held_out)
    with pytest.raises(CodecError, match="must be fitted"):
        c.to_params()


@pytest.mark.parametrize("name", ALL_NAMES)
def test_wrong_input_shape_is_a_clear_error(name, fitted):
    c = fitted[name]
    with pytest.raises(CodecError, match=rf"shape \[T, {D}\], got \[5, {D + 1}\]"):
        c.encode(np.zeros((5, D + 1), np.float32))
    with pytest.raises(CodecError, match="shape"):
        c.encode(np.zeros(D, np.float32))
    with pytest.raises(CodecError, match="NaN"):
        c.encode(np.full((2, D), np.nan, np.float32))
    if c.needs_fit:
        with pytest.raises(CodecError, match="fit sample must have shape"):
            small_codec(name).fit(np.zeros((10, D - 1), np.float32))


def test_bad_parts_are_clear_errors(fitted, held_out):
    c = fitted["rq32"]
    parts = c.encode(held_out[:10])
    with pytest.raises(CodecError, match="columns"):
        c.decode({"codes": parts["codes"]})
    with pytest.raises(CodecError, match="'codes' must be uint8"):
        c.decode({**parts, "codes": parts["codes"].astype(np.int16)})
    with pytest.raises(CodecError, match="different token counts"):
        c.decode({**parts, "codes": parts["codes"][:5]})


def test_bad_options_and_params_are_clear_errors(sample):
    with pytest.raises(CodecError, match="divisor"):
        make_codec("pq", dim=100, M=32)
    with pytest.raises(CodecError, match="norm"):
        make_codec("rq", dim=D, M=16, norm="whiten")
    with pytest.raises(CodecError, match="needs >= 64"):
        make_codec("pq", dim=D, M=16, nbits=6).fit(sample[:20])
    with pytest.raises(CodecError, match="n_centroids=32 needs >= 32"):
        small_codec("rq").fit(sample[:20])
    config, arrays = small_codec("pq").fit(sample).to_params()
    with pytest.raises(CodecError, match=r"lack arrays \['pq_centroids'\]"):
        codec_from_params(config, {k: v for k, v in arrays.items() if k != "pq_centroids"})
    with pytest.raises(CodecError, match="not 'fp16'"):
        CODECS["fp16"].from_params(config, arrays)


@pytest.mark.parametrize("name", [n for n in ALL_NAMES if CODECS[n].needs_fit])
def test_pq_codes_in_blocks_equal_one_pass(name, fitted, held_out, monkeypatch):
    """Encoding bounds faiss's distance table by cutting the tokens into blocks; codes don't change."""
    from mice_index.codec import quantized

    whole = fitted[name].encode(held_out)
    monkeypatch.setattr(quantized, "CODES_TABLE_BYTES", 1)  # the smallest blocks (256 tokens)
    x = np.concatenate([held_out] * (1 + 600 // held_out.shape[0]))[:600]  # 3 blocks, the last partial
    blocked = fitted[name].encode(x)
    assert all(np.array_equal(blocked[k][: held_out.shape[0]], whole[k]) for k in whole)
    assert all(blocked[k].shape[0] == 600 for k in blocked)
