"""The index's codec, loaded from its stored parameters (INDEX/codec/*.npy) and checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mice_index.codec import Codec, codec_from_params
from mice_index.store import layout as L

__all__ = ["load_codec"]


def load_codec(root: Path, manifest: dict[str, Any]) -> Codec:
    """The index's codec from its stored parameters, checked against the manifest's fingerprint."""
    arrays = {}
    for name in manifest["codec"].get("arrays", []):
        path = Path(root) / L.CODEC_DIR / f"{name}.npy"
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise L.damaged(path, f"cannot read codec parameters ({exc})", root) from None
    codec = codec_from_params(manifest["codec"]["config"], arrays)
    want = manifest["codec"].get("fingerprint")
    if want is not None and codec.fingerprint() != want:
        raise L.damaged(Path(root) / L.CODEC_DIR, f"codec parameters changed (fingerprint {codec.fingerprint()}, "
                        f"manifest {want})", root)
    return codec
