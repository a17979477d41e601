"""faiss on the GPU where `faiss-gpu` is installed: dense search and IVF training (k-means).

faiss-gpu and faiss-cpu are the same `faiss` module; only the GPU build has
`StandardGpuResources`. Where it is missing, or no GPU is visible to it, everything stays on
faiss-cpu; if a CUDA device is visible to torch meanwhile, that is said in one log line per
process (install faiss-gpu, e.g. `pip install faiss-gpu-cu12`, to use it). Results: the GPU's
flat and IVF searches return the same neighbours as the CPU's up to float rounding of ties.
"""

from __future__ import annotations

import functools
import logging

import faiss

log = logging.getLogger(__name__)

__all__ = ["gpu_count", "search_index", "train_on_gpu"]

GPU_KINDS = ("flat", "ivf")  # faiss has GPU versions of these; HNSW and 4-bit fast-scan PQ have none


def gpu_count() -> int:
    """GPUs usable by faiss (0 for faiss-cpu); logs once when CUDA is there but faiss-gpu is not."""
    n = faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0
    if n == 0:
        _say_cpu_once()
    return n


@functools.cache
def _say_cpu_once() -> None:
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a dependency
        cuda = False
    if cuda:
        log.info("faiss: no GPU build installed (faiss-cpu); dense candidates and IVF training run on the "
                 "CPU (pip install faiss-gpu-cu12 to move them to the GPU)")


@functools.cache
def _resources():
    return faiss.StandardGpuResources()


def search_index(index, kind: str):
    """`index` copied to GPU 0 when faiss-gpu and a GPU are there and `kind` has a GPU version
    (flat, ivf), else `index` itself."""
    if kind not in GPU_KINDS or gpu_count() == 0:
        return index
    gpu = faiss.index_cpu_to_gpu(_resources(), 0, index)
    log.info("faiss: %s index of %d vectors on the GPU", kind, index.ntotal)
    return gpu


def train_on_gpu(index) -> bool:
    """Let an IVF index's coarse k-means run on the GPU (faiss's clustering_index) when faiss-gpu
    and a GPU are there; True if it will. The trained index stays a CPU index (saved as before)."""
    if gpu_count() == 0:
        return False
    ivf = faiss.extract_index_ivf(index)
    ivf.clustering_index = faiss.index_cpu_to_gpu(_resources(), 0, faiss.IndexFlatL2(ivf.d))
    return True
