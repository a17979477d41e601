"""Trained compact codecs built on faiss: product quantization (PQ), OPQ-rotated PQ, and
ColBERTv2-style residual quantization (k-means centroid id + PQ of the residual).

All of them first normalise each dimension with statistics fitted on the sample:
  - "center":      x - mean             (removes the per-dimension bias of BERT states)
  - "standardize": (x - mean) / std     (equal weight per dimension; spreads error into the
                                          high-variance dimensions, worse in plain L2)
  - "none":        x
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import faiss
import numpy as np

from mice_index.codec.base import Codec, CodecError, ColumnSpec, Parts

log = logging.getLogger(__name__)

Norm = Literal["none", "center", "standardize"]
CODES_TABLE_BYTES = 512 << 20  # bound on faiss's distance table while encoding (see _PQFamily._codes)
U8 = np.dtype(np.uint8)
U16 = np.dtype(np.uint16)
F32 = np.dtype(np.float32)


def _fit_norm(x: np.ndarray, norm: str) -> tuple[np.ndarray, np.ndarray]:
    d = x.shape[1]
    fitters = {
        "none": lambda: (np.zeros(d, F32), np.ones(d, F32)),
        "center": lambda: (x.mean(0, dtype=np.float64).astype(F32), np.ones(d, F32)),
        "standardize": lambda: (
            x.mean(0, dtype=np.float64).astype(F32),
            np.maximum(x.std(0, dtype=np.float64), 1e-6).astype(F32),
        ),
    }
    return fitters[norm]()


FAISS_MIN_POINTS = 39  # faiss's default min_points_per_centroid (it warns below it)


def min_points(n: int, k: int, what: str) -> int:
    """min_points_per_centroid for k-means of `n` points into `k` centroids: faiss's 39, lowered to
    what the sample has. faiss would otherwise print a warning per k-means to stderr (25 lines for
    rq on a small corpus, also under --quiet); one log line says it instead."""
    if n >= k * FAISS_MIN_POINTS:
        return FAISS_MIN_POINTS
    log.info("%s: %d training points for %d centroids (faiss suggests >= %d); a larger corpus gives a "
             "better codec", what, n, k, k * FAISS_MIN_POINTS)
    return max(1, n // k)


def _new_pq(dim: int, m: int, nbits: int, seed: int = 0, n: int | None = None) -> faiss.ProductQuantizer:
    """A PQ to train (on `n` points, when known: see min_points)."""
    pq = faiss.ProductQuantizer(dim, m, nbits)
    pq.cp.seed = seed
    pq.cp.niter = 25
    if n is not None:
        pq.cp.min_points_per_centroid = min_points(n, pq.ksub, f"PQ with nbits={nbits}")
    return pq


def _pq_centroids(pq: faiss.ProductQuantizer) -> np.ndarray:
    return faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub).astype(F32)


def _set_pq_centroids(pq: faiss.ProductQuantizer, c: np.ndarray, name: str) -> None:
    want = (pq.M, pq.ksub, pq.dsub)
    if c.shape != want:
        raise CodecError(f"codec {name!r}: 'pq_centroids' must have shape {list(want)}, got {list(c.shape)}")
    faiss.copy_array_to_vector(np.ascontiguousarray(c, dtype=F32).ravel(), pq.centroids)


class _PQFamily(Codec):
    """Shared machinery: per-dim normalisation, optional rotation, PQ codes of (residual) vectors."""

    needs_fit = True
    _PARAMS: tuple[str, ...] = ("mean", "std", "pq_centroids")

    def __init__(self, dim: int = 384, M: int = 32, nbits: int = 8, norm: Norm = "center") -> None:
        super().__init__(dim)
        if not isinstance(M, int) or M <= 0 or self.dim % M:
            raise CodecError(f"codec {self.name!r}: M={M!r} must be a positive divisor of dim={self.dim}")
        if not isinstance(nbits, int) or not 1 <= nbits <= 16:
            raise CodecError(f"codec {self.name!r}: nbits={nbits!r} must be in 1..16")
        if norm not in ("none", "center", "standardize"):
            raise CodecError(f"codec {self.name!r}: norm={norm!r} must be one of none, center, standardize")
        self.M, self.nbits, self.norm = M, nbits, norm
        self.pq = _new_pq(self.dim, M, nbits)
        self.mean = np.zeros(self.dim, F32)
        self.std = np.ones(self.dim, F32)

    def options(self) -> dict[str, Any]:
        return {"M": self.M, "nbits": self.nbits, "norm": self.norm}

    def _pq_columns(self) -> ColumnSpec:
        return {"codes": (U8, int(self.pq.code_size))}

    def _codes(self, z: np.ndarray) -> np.ndarray:
        """PQ codes of z [T, D], in blocks: faiss's BLAS path holds a [T, M, 2^nbits] float32
        distance table (6.4 GB for a 65,536-token window at M=24, nbits=10); blocks bound it to
        CODES_TABLE_BYTES. Each row's code does not depend on the blocking."""
        rows = max(256, CODES_TABLE_BYTES // (4 * self.M * self.pq.ksub))
        if z.shape[0] <= rows:
            return self.pq.compute_codes(np.ascontiguousarray(z, dtype=F32))
        return np.concatenate([self.pq.compute_codes(np.ascontiguousarray(z[i:i + rows], dtype=F32))
                               for i in range(0, z.shape[0], rows)])

    def _pq_decode_device(self, codes):
        """faiss `ProductQuantizer.decode` on a torch device: codes uint8 [T, code_size] (M codes
        of nbits each, packed least significant bit first as faiss's BitstringWriter does) ->
        normalised (residual) vectors float32 [T, D]."""
        import torch

        table = self._device_params(codes.device, pq=_pq_centroids(self.pq))["pq"]  # [M, ksub, dsub]
        if self.nbits == 8:
            ids = codes[:, : self.M].long()
        else:
            shifts = torch.arange(8, device=codes.device, dtype=torch.uint8)
            bits = ((codes[:, :, None] >> shifts) & 1).flatten(1)[:, : self.M * self.nbits]
            weights = (1 << torch.arange(self.nbits, device=codes.device, dtype=torch.int64))
            ids = (bits.view(-1, self.M, self.nbits).long() * weights).sum(-1)  # [T, M]
        sub = table[torch.arange(self.M, device=codes.device), ids]  # [T, M, dsub]
        return sub.reshape(len(codes), self.dim)

    def _denormalise_device(self, z):
        p = self._device_params(z.device, mean=self.mean, std=self.std)
        return z * p["std"] + p["mean"]

    def _need(self, x: np.ndarray, k: int, what: str) -> None:
        if x.shape[0] < k:
            raise CodecError(f"codec {self.name!r}: fit sample has {x.shape[0]} tokens, {what} needs >= {k} "
                             "(a larger corpus, or an untrained codec such as --codec fp16 or int8-dim)")

    def _normalise(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((x - self.mean) / self.std, dtype=F32)

    def _denormalise(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean

    def _fit_pq(self, z: np.ndarray, seed: int) -> None:
        self._need(z, self.pq.ksub, f"PQ with nbits={self.nbits}")
        self.pq = _new_pq(self.dim, self.M, self.nbits, seed, n=z.shape[0])
        self.pq.train(np.ascontiguousarray(z, dtype=F32))

    def _params(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "pq_centroids": _pq_centroids(self.pq)}

    def _param_names(self) -> tuple[str, ...]:
        return self._PARAMS

    def _load_params(self, arrays: dict[str, np.ndarray]) -> None:
        for k in ("mean", "std"):
            if arrays[k].shape != (self.dim,):
                raise CodecError(f"codec {self.name!r}: {k!r} must have shape [{self.dim}], got {list(arrays[k].shape)}")
        self.mean = arrays["mean"].astype(F32)
        self.std = arrays["std"].astype(F32)
        _set_pq_centroids(self.pq, arrays["pq_centroids"], self.name)


class PQCodec(_PQFamily):
    """Plain product quantization of normalised states: M sub-vectors, nbits each."""

    name = "pq"

    def columns(self) -> ColumnSpec:
        return self._pq_columns()

    def _fit(self, x: np.ndarray, seed: int) -> None:
        self.mean, self.std = _fit_norm(x, self.norm)
        self._fit_pq(self._normalise(x), seed)

    def _encode(self, x: np.ndarray) -> Parts:
        return {"codes": self._codes(self._normalise(x))}

    def _decode(self, parts: Parts) -> np.ndarray:
        return self._denormalise(self.pq.decode(parts["codes"]))

    def decode_device(self, parts):
        return self._denormalise_device(self._pq_decode_device(parts["codes"]))


class OPQCodec(_PQFamily):
    """PQ after a learned orthogonal rotation (faiss OPQMatrix) that balances sub-space variance."""

    name = "opq"
    _PARAMS = ("mean", "std", "pq_centroids", "rotation")

    def __init__(self, dim: int = 384, M: int = 32, nbits: int = 8, norm: Norm = "center", niter: int = 20) -> None:
        super().__init__(dim, M, nbits, norm)
        self.niter = int(niter)
        self.rotation = np.eye(self.dim, dtype=F32)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "niter": self.niter}

    def columns(self) -> ColumnSpec:
        return self._pq_columns()

    def _fit(self, x: np.ndarray, seed: int) -> None:
        self.mean, self.std = _fit_norm(x, self.norm)
        z = self._normalise(x)
        self._need(z, self.pq.ksub, f"PQ with nbits={self.nbits}")
        opq = faiss.OPQMatrix(self.dim, self.M)
        opq.niter = self.niter
        opq.max_train_points = max(opq.max_train_points, 65536)
        opq_pq = _new_pq(self.dim, self.M, self.nbits, seed, n=min(z.shape[0], opq.max_train_points))  # train the rotation for *our* PQ size
        opq.pq = opq_pq  # (faiss keeps a raw pointer: opq_pq must outlive train())
        rng = np.random.default_rng(seed)
        sub = z if z.shape[0] <= opq.max_train_points else z[rng.choice(z.shape[0], opq.max_train_points, replace=False)]
        opq.train(np.ascontiguousarray(sub))
        self.rotation = faiss.vector_to_array(opq.A).reshape(self.dim, self.dim).astype(F32)
        self._fit_pq(z @ self.rotation.T, seed)

    def _encode(self, x: np.ndarray) -> Parts:
        return {"codes": self._codes(self._normalise(x) @ self.rotation.T)}

    def _decode(self, parts: Parts) -> np.ndarray:
        return self._denormalise(self.pq.decode(parts["codes"]) @ self.rotation)

    def decode_device(self, parts):
        z = self._pq_decode_device(parts["codes"])
        return self._denormalise_device(z @ self._device_params(z.device, rotation=self.rotation)["rotation"])

    def _params(self) -> dict[str, np.ndarray]:
        return {**super()._params(), "rotation": self.rotation}

    def _load_params(self, arrays: dict[str, np.ndarray]) -> None:
        super()._load_params(arrays)
        r = np.asarray(arrays["rotation"], dtype=F32)
        if r.shape != (self.dim, self.dim):
            raise CodecError(f"codec 'opq': 'rotation' must have shape [{self.dim}, {self.dim}], got {list(r.shape)}")
        self.rotation = r


class ResidualCodec(_PQFamily):
    """ColBERTv2-style: uint16 id of the nearest k-means centroid + PQ codes of the residual."""

    name = "rq"
    _PARAMS = ("mean", "std", "pq_centroids", "centroids")

    def __init__(
        self, dim: int = 384, M: int = 24, nbits: int = 10, norm: Norm = "center", n_centroids: int = 2048
    ) -> None:
        super().__init__(dim, M, nbits, norm)
        if not isinstance(n_centroids, int) or not 1 <= n_centroids <= 65536:
            raise CodecError(f"codec {self.name!r}: n_centroids={n_centroids!r} must be in 1..65536")
        self.n_centroids = n_centroids
        self.centroids = np.zeros((n_centroids, self.dim), F32)
        self._index: faiss.IndexFlatL2 | None = None

    def options(self) -> dict[str, Any]:
        return {**super().options(), "n_centroids": self.n_centroids}

    def columns(self) -> ColumnSpec:
        return {"centroid": (U16, 1), **self._pq_columns()}

    def _set_centroids(self, c: np.ndarray) -> None:
        self.centroids = np.ascontiguousarray(c, dtype=F32)
        self._index = faiss.IndexFlatL2(self.dim)
        self._index.add(self.centroids)

    def _assign(self, z: np.ndarray) -> np.ndarray:
        _, ids = self._index.search(z, 1)
        return ids[:, 0]

    def _fit(self, x: np.ndarray, seed: int) -> None:
        self.mean, self.std = _fit_norm(x, self.norm)
        z = self._normalise(x)
        self._need(z, self.n_centroids, f"n_centroids={self.n_centroids}")
        km = faiss.Kmeans(self.dim, self.n_centroids, niter=20, seed=seed, max_points_per_centroid=256,
                          min_points_per_centroid=min_points(z.shape[0], self.n_centroids,
                                                             f"n_centroids={self.n_centroids}"))
        km.train(z)
        self._set_centroids(km.centroids)
        self._fit_pq(z - self.centroids[self._assign(z)], seed)

    def _encode(self, x: np.ndarray) -> Parts:
        z = self._normalise(x)
        ids = self._assign(z)
        codes = self._codes(z - self.centroids[ids])
        return {"centroid": ids.astype(U16)[:, None], "codes": codes}

    def _decode(self, parts: Parts) -> np.ndarray:
        ids = parts["centroid"][:, 0]
        if ids.size and int(ids.max()) >= self.n_centroids:
            raise CodecError(f"codec 'rq': centroid id {int(ids.max())} >= n_centroids={self.n_centroids}")
        return self._denormalise(self.centroids[ids] + self.pq.decode(parts["codes"]))

    def decode_device(self, parts):
        ids = parts["centroid"][:, 0].long() & 0xFFFF  # uint16 travels as int16 (torch lacks uint16 ops)
        if ids.numel() and int(ids.max()) >= self.n_centroids:
            raise CodecError(f"codec 'rq': centroid id {int(ids.max())} >= n_centroids={self.n_centroids}")
        centroids = self._device_params(ids.device, centroids=self.centroids)["centroids"]
        return self._denormalise_device(centroids[ids] + self._pq_decode_device(parts["codes"]))

    def _params(self) -> dict[str, np.ndarray]:
        return {**super()._params(), "centroids": self.centroids}

    def _load_params(self, arrays: dict[str, np.ndarray]) -> None:
        super()._load_params(arrays)
        c = np.asarray(arrays["centroids"])
        if c.shape != (self.n_centroids, self.dim):
            raise CodecError(
                f"codec 'rq': 'centroids' must have shape [{self.n_centroids}, {self.dim}], got {list(c.shape)}"
            )
        self._set_centroids(c)
