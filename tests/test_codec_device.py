"""Codec.decode_device (decoding on the scorer's device) equals Codec.decode, for every codec."""

import numpy as np
import pytest
import torch

from mice_index.codec import CODECS, CodecError, make_codec
from mice_index.scorer.feed import device_column


@pytest.fixture(scope="module")
def sample():
    rng = np.random.default_rng(0)
    return (rng.standard_normal((2048, 64)) * rng.uniform(0.2, 2.0, 64)).astype(np.float32)


OPTIONS = {"fp32": {}, "fp16": {}, "int8": {}, "int8-dim": {}, "pq": {"M": 16}, "opq": {"M": 16, "niter": 3},
           "rq": {"M": 16, "n_centroids": 64}}  # the presets (rq32, pq32, ...) are these classes


def test_every_codec_class_is_covered():
    assert {type(make_codec(n)).__mro__[0 if n in OPTIONS else 1] for n in CODECS} == \
        {type(make_codec(n)) for n in OPTIONS}


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_decode_device_equals_decode(name, sample):
    options = OPTIONS[name]
    codec = make_codec(name, dim=64, **options).fit(sample, seed=0)
    parts = codec.encode(sample[:300])
    want = codec.decode(parts)
    got = codec.decode_device({k: device_column(v, torch.device("cpu")) for k, v in parts.items()})
    assert got.dtype == torch.float32 and got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_decode_device_packed_10_bit_codes(sample):
    """nbits=10 codes are bit-packed by faiss: unpacking on the device must match faiss."""
    codec = make_codec("pq", dim=64, M=16, nbits=10).fit(sample, seed=0)
    parts = codec.encode(sample[:200])
    assert parts["codes"].shape[1] == 20  # 16 x 10 bits
    got = codec.decode_device({"codes": torch.from_numpy(parts["codes"])})
    np.testing.assert_allclose(got.numpy(), codec.decode(parts), rtol=1e-5, atol=1e-5)


def test_decode_device_rejects_bad_centroid_id(sample):
    codec = make_codec("rq", dim=64, M=16, n_centroids=64).fit(sample, seed=0)
    parts = codec.encode(sample[:10])
    parts["centroid"][3] = 64
    with pytest.raises(CodecError, match="centroid id 64"):
        codec.decode_device({k: device_column(v, torch.device("cpu")) for k, v in parts.items()})
