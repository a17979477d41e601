"""Scalar codecs: fp32 (reference), fp16, int8 with a per-token scale, int8 with per-dim scales."""

from __future__ import annotations

import numpy as np

from mice_index.codec.base import Codec, CodecError, ColumnSpec, Parts

F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
I8 = np.dtype(np.int8)
_F16_MAX = float(np.finfo(np.float16).max)


def _f16_ceil(scale: np.ndarray) -> np.ndarray:
    """Round positive float32 scales to float16, never downwards (so |x / s| <= 127 still holds)."""
    s16 = scale.astype(F16)
    low = s16.astype(F32) < scale
    s16[low] = np.nextafter(s16[low], F16.type(np.inf))
    return s16


class Fp32Codec(Codec):
    """Lossless reference: the states as float32."""

    name = "fp32"

    def columns(self) -> ColumnSpec:
        return {"values": (F32, self.dim)}

    def _encode(self, x: np.ndarray) -> Parts:
        return {"values": x.copy()}

    def _decode(self, parts: Parts) -> np.ndarray:
        return parts["values"].astype(F32, copy=True)

    def decode_device(self, parts):
        return parts["values"].float()


class Fp16Codec(Codec):
    """Half precision: relative error per element <= 2**-11 inside the float16 normal range."""

    name = "fp16"

    def columns(self) -> ColumnSpec:
        return {"values": (F16, self.dim)}

    def _encode(self, x: np.ndarray) -> Parts:
        if np.abs(x).max(initial=0.0) > _F16_MAX:
            raise CodecError(f"codec 'fp16': states exceed the float16 range (|x| > {_F16_MAX:g})")
        return {"values": x.astype(F16)}

    def _decode(self, parts: Parts) -> np.ndarray:
        return parts["values"].astype(F32)

    def decode_torch(self, parts: Parts):
        import torch

        self._check_parts(parts)
        return torch.from_numpy(np.ascontiguousarray(parts["values"])).float()

    def decode_device(self, parts):
        return parts["values"].float()


class Int8Codec(Codec):
    """Symmetric int8 with one float16 absmax scale per token: |x - x^| <= scale / 2 per element.

    Cheap and untrained, but a single outlier dimension sets the scale of the whole token.
    """

    name = "int8"

    def columns(self) -> ColumnSpec:
        return {"values": (I8, self.dim), "scale": (F16, 1)}

    def _encode(self, x: np.ndarray) -> Parts:
        absmax = np.abs(x).max(axis=1, keepdims=True)
        if absmax.max(initial=0.0) / 127.0 > _F16_MAX:
            raise CodecError("codec 'int8': states exceed the float16 scale range")
        scale = _f16_ceil(np.where(absmax > 0, absmax / 127.0, 1.0).astype(F32))
        q = np.clip(np.rint(x / scale.astype(F32)), -127, 127).astype(I8)
        return {"values": q, "scale": scale}

    def _decode(self, parts: Parts) -> np.ndarray:
        return parts["values"].astype(F32) * parts["scale"].astype(F32)

    def decode_device(self, parts):
        return parts["values"].float() * parts["scale"].float()


class Int8DimCodec(Codec):
    """Symmetric int8 with per-dimension float32 scales fitted on a sample (absmax / 127).

    Values beyond the fitted range are clipped. Outlier dimensions get their own scale, so they do
    not destroy the resolution of the others. Per element: |x - x^| <= scale_d / 2 inside the range.
    """

    name = "int8-dim"
    needs_fit = True

    def __init__(self, dim: int = 384) -> None:
        super().__init__(dim)
        self.scale: np.ndarray | None = None

    def columns(self) -> ColumnSpec:
        return {"values": (I8, self.dim)}

    def _fit(self, x: np.ndarray, seed: int) -> None:
        absmax = np.abs(x).max(axis=0)
        self.scale = np.where(absmax > 0, absmax / 127.0, 1.0).astype(F32)

    def _encode(self, x: np.ndarray) -> Parts:
        return {"values": np.clip(np.rint(x / self.scale), -127, 127).astype(I8)}

    def _decode(self, parts: Parts) -> np.ndarray:
        return parts["values"].astype(F32) * self.scale

    def decode_device(self, parts):
        values = parts["values"]
        return values.float() * self._device_params(values.device, scale=self.scale)["scale"]

    def _params(self) -> dict[str, np.ndarray]:
        return {"scale": self.scale}

    def _param_names(self) -> tuple[str, ...]:
        return ("scale",)

    def _load_params(self, arrays: dict[str, np.ndarray]) -> None:
        s = np.asarray(arrays["scale"], dtype=F32)
        if s.shape != (self.dim,) or not (np.isfinite(s).all() and (s > 0).all()):
            raise CodecError(f"codec 'int8-dim': 'scale' must be positive float32[{self.dim}], got {list(s.shape)}")
        self.scale = s
