"""Codec stage: compress per-token document states [T, D] into fixed-width per-token columns.

    codec = make_codec("compact", dim=384)       # or "fp32", "fp16", "int8", "int8-dim", "rq32", ...
    codec.fit(sample)                            # no-op unless codec.needs_fit
    parts = codec.encode(states)                 # {column: [T, width]} matching codec.columns()
    states_hat = codec.decode(parts)             # float32 [T, D]
    config, arrays = codec.to_params()           # store config in the manifest, arrays as .npy
    codec = codec_from_params(config, arrays)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mice_index.codec.base import Codec, CodecError, ColumnSpec, Parts
from mice_index.codec.quantized import OPQCodec, PQCodec, ResidualCodec
from mice_index.codec.scalar import Fp16Codec, Fp32Codec, Int8Codec, Int8DimCodec


def _preset(base: type[Codec], name: str, doc: str, **defaults: Any) -> type[Codec]:
    """A named subclass of `base` whose constructor defaults are `defaults` (still overridable)."""

    def __init__(self, dim: int = 384, **options: Any) -> None:
        base.__init__(self, dim, **{**defaults, **options})

    return type(base.__name__ + "_" + name.replace("-", "_"), (base,), {"name": name, "__init__": __init__, "__doc__": doc})


RQ32 = _preset(ResidualCodec, "rq32", "2-byte centroid id + 24x10-bit residual PQ = 32 B/token at D=384.",
               M=24, nbits=10, n_centroids=2048, norm="center")
RQ26 = _preset(ResidualCodec, "rq26", "2-byte centroid id + 24x8-bit residual PQ = 26 B/token at D=384.",
               M=24, nbits=8, n_centroids=2048, norm="center")
PQ32 = _preset(PQCodec, "pq32", "32x8-bit PQ of mean-centred states = 32 B/token.", M=32, nbits=8, norm="center")
OPQ32 = _preset(OPQCodec, "opq32", "OPQ rotation + 32x8-bit PQ of mean-centred states = 32 B/token.",
                M=32, nbits=8, norm="center")

CODECS: dict[str, type[Codec]] = {
    c.name: c
    for c in (Fp32Codec, Fp16Codec, Int8Codec, Int8DimCodec, PQCodec, OPQCodec, ResidualCodec, RQ32, RQ26, PQ32, OPQ32)
}
ALIASES: dict[str, str] = {"compact": "rq32"}


def codec_names() -> list[str]:
    return sorted(CODECS) + sorted(ALIASES)


def resolve_codec_name(name: str) -> str:
    """Canonical codec name for `name` (aliases resolved); CodecError listing valid names otherwise."""
    canonical = ALIASES.get(name, name)
    if canonical not in CODECS:
        raise CodecError(f"unknown codec {name!r}; valid codecs: {', '.join(codec_names())}")
    return canonical


def make_codec(name: str, dim: int = 384, **options: Any) -> Codec:
    """A fresh (unfitted) codec by name or alias, for `dim`-dimensional states."""
    return CODECS[resolve_codec_name(name)](dim=dim, **options)


def codec_from_params(config: dict[str, Any], arrays: dict[str, np.ndarray]) -> Codec:
    """Rebuild a (fitted) codec from `Codec.to_params()` output."""
    if not isinstance(config, dict) or "codec" not in config:
        raise CodecError("codec params: config must be a dict with a 'codec' entry")
    return CODECS[resolve_codec_name(config["codec"])].from_params(config, arrays)


__all__ = [
    "ALIASES", "CODECS", "Codec", "CodecError", "ColumnSpec", "Fp16Codec", "Fp32Codec", "Int8Codec",
    "Int8DimCodec", "OPQCodec", "PQCodec", "Parts", "ResidualCodec", "codec_from_params", "codec_names",
    "make_codec", "resolve_codec_name",
]
