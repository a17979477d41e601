"""The codec contract: how per-token hidden states [T, D] become fixed-width per-token columns.

A codec emits a small dict of per-token arrays ("columns"), each of shape [T, width] with a fixed
dtype, so the store can lay them out generically (one .npy / zarr array per column). Trained
codecs (PQ, residual quantization, ...) carry parameters that the store saves inside the index via
`to_params()` and restores with `from_params()`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from mice_index.errors import MiceIndexError

ColumnSpec = dict[str, tuple[np.dtype, int]]
Parts = dict[str, np.ndarray]


class CodecError(MiceIndexError):
    """Unknown codec, bad codec parameters, or states/parts that do not fit the codec."""


class Codec(ABC):
    """Abstract per-token codec for `dim`-dimensional float32 states.

    Subclasses set `name`, implement `columns`, `encode`, `decode` and, when trained,
    `needs_fit = True`, `_fit`, `_params` / `_load_params`.
    """

    name: ClassVar[str] = "?"
    needs_fit: ClassVar[bool] = False

    def __init__(self, dim: int = 384) -> None:
        if not isinstance(dim, (int, np.integer)) or dim <= 0:
            raise CodecError(f"codec {self.name!r}: dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self._fitted = not self.needs_fit

    # ---- description -------------------------------------------------------------------------
    @abstractmethod
    def columns(self) -> ColumnSpec:
        """Per-token columns this codec emits: {column: (dtype, width)}."""

    @property
    def bytes_per_token(self) -> int:
        return int(sum(np.dtype(dt).itemsize * w for dt, w in self.columns().values()))

    @property
    def is_fitted(self) -> bool:
        return self._fitted

    def options(self) -> dict[str, Any]:
        """Constructor keyword arguments (besides dim) that recreate this codec; JSON-able."""
        return {}

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options().items())
        return f"{type(self).__name__}(dim={self.dim}{', ' if opts else ''}{opts})"

    # ---- training ----------------------------------------------------------------------------
    def fit(self, sample: np.ndarray, seed: int = 0) -> Codec:
        """Train on a sample of token states [N, D] (no-op for untrained codecs). Returns self."""
        if not self.needs_fit:
            return self
        x = self._check_states(sample, what="fit sample")
        self._fit(x, int(seed))
        self._fitted = True
        return self

    def _fit(self, x: np.ndarray, seed: int) -> None:  # pragma: no cover - trained codecs only
        raise NotImplementedError

    # ---- coding ------------------------------------------------------------------------------
    def encode(self, states: np.ndarray) -> Parts:
        """Encode float32 states [T, D] into {column: [T, width]} arrays."""
        self._require_fitted("encode")
        x = self._check_states(states, what="states")
        parts = self._encode(x)
        assert set(parts) == set(self.columns()), (set(parts), self.columns())
        return parts

    def decode(self, parts: Parts) -> np.ndarray:
        """Decode {column: [T, width]} arrays back to float32 states [T, D]."""
        self._require_fitted("decode")
        t = self._check_parts(parts)
        if t == 0:
            return np.zeros((0, self.dim), np.float32)
        out = self._decode({k: np.ascontiguousarray(parts[k]) for k in self.columns()})
        return np.ascontiguousarray(out, dtype=np.float32)

    def decode_torch(self, parts: Parts):  # -> torch.Tensor
        """Decode to a float32 torch tensor (CPU); override where a faster path exists."""
        import torch

        return torch.from_numpy(self.decode(parts))

    def decode_device(self, parts):  # dict[str, torch.Tensor] -> torch.Tensor
        """Decode columns that already lie on a torch device (e.g. CUDA: 32 B/token codes cross
        PCIe instead of 768 B/token float16 states) -> float32 [T, D] on that device. Equals
        `decode` within float32 rounding (tests/test_codec_device.py). Parameters are copied to
        each device once. This default decodes on the host and copies back."""
        import torch

        device = next(iter(parts.values())).device
        host = {k: v.cpu().numpy() for k, v in parts.items()}
        return torch.from_numpy(self.decode(host)).to(device)

    def _device_params(self, device, **arrays: np.ndarray) -> dict:
        """`arrays` as float32 torch tensors on `device`, converted once per device (cached)."""
        import torch

        cache = self.__dict__.setdefault("_on_device", {})
        key = (str(device), tuple(id(v) for v in arrays.values()))  # refit / reload: new arrays
        if key not in cache:
            cache.clear()
            cache[key] = {k: torch.as_tensor(np.ascontiguousarray(v), dtype=torch.float32).to(device)
                          for k, v in arrays.items()}
        return cache[key]

    @abstractmethod
    def _encode(self, x: np.ndarray) -> Parts: ...

    @abstractmethod
    def _decode(self, parts: Parts) -> np.ndarray: ...

    # ---- persistence -------------------------------------------------------------------------
    def to_params(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """(JSON-able config, named arrays) that `from_params` turns back into this codec."""
        self._require_fitted("to_params")
        config = {"codec": self.name, "dim": self.dim, "options": self.options()}
        arrays = {k: np.ascontiguousarray(v) for k, v in self._params().items()} if self.needs_fit else {}
        return config, arrays

    @classmethod
    def from_params(cls, config: dict[str, Any], arrays: dict[str, np.ndarray]) -> Codec:
        if config.get("codec") != cls.name:
            raise CodecError(f"codec params are for {config.get('codec')!r}, not {cls.name!r}")
        try:
            codec = cls(dim=int(config["dim"]), **config.get("options", {}))
        except TypeError as e:
            raise CodecError(f"codec {cls.name!r}: bad options in params: {e}") from None
        except KeyError as e:
            raise CodecError(f"codec {cls.name!r}: params lack {e}") from None
        if cls.needs_fit:
            missing = sorted(set(codec._param_names()) - set(arrays))
            if missing:
                raise CodecError(f"codec {cls.name!r}: params lack arrays {missing}")
            codec._load_params({k: np.asarray(arrays[k]) for k in codec._param_names()})
            codec._fitted = True
        return codec

    def _params(self) -> dict[str, np.ndarray]:
        return {}

    def _param_names(self) -> tuple[str, ...]:
        return ()

    def _load_params(self, arrays: dict[str, np.ndarray]) -> None:  # pragma: no cover
        pass

    def fingerprint(self) -> str:
        """Short sha256 of config + parameter arrays: equal fingerprints decode identically."""
        config, arrays = self.to_params()
        h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
        for k in sorted(arrays):
            a = np.ascontiguousarray(arrays[k])
            h.update(f"{k}:{a.dtype.str}:{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()[:16]

    # ---- validation --------------------------------------------------------------------------
    def _require_fitted(self, op: str) -> None:
        if not self._fitted:
            raise CodecError(f"codec {self.name!r} must be fitted before {op}() (call fit(sample) first)")

    def _check_states(self, states: np.ndarray, what: str) -> np.ndarray:
        x = np.asarray(states)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise CodecError(f"codec {self.name!r}: {what} must have shape [T, {self.dim}], got {list(x.shape)}")
        if not np.issubdtype(x.dtype, np.floating):
            raise CodecError(f"codec {self.name!r}: {what} must be floating point, got {x.dtype}")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise CodecError(f"codec {self.name!r}: {what} contain NaN or infinite values")
        return x

    def _check_parts(self, parts: Parts) -> int:
        cols = self.columns()
        if set(parts) != set(cols):
            raise CodecError(f"codec {self.name!r}: parts have columns {sorted(parts)}, expected {sorted(cols)}")
        t = None
        for k, (dt, w) in cols.items():
            a = parts[k]
            if a.ndim != 2 or a.shape[1] != w or a.dtype != dt:
                raise CodecError(
                    f"codec {self.name!r}: column {k!r} must be {np.dtype(dt).name}[T, {w}], "
                    f"got {a.dtype}{list(a.shape)}"
                )
            if t is not None and a.shape[0] != t:
                raise CodecError(f"codec {self.name!r}: columns have different token counts")
            t = a.shape[0]
        return int(t or 0)
