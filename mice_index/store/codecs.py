"""The index's codec, loaded from its stored parameters (INDEX/codec/*.npy) and checked."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mice_index.codec import Codec, codec_from_params
from mice_index.store import layout as L

if TYPE_CHECKING:
    from mice_index.store.manifest import Manifest

__all__ = ["load_codec", "save_codec"]


def save_codec(root: Path, codec: Codec) -> None:
    """Write `codec`'s trained parameters to INDEX/codec/*.npy (a tmp folder committed by rename;
    an existing INDEX/codec is replaced). Its config goes into the manifest (`CodecInfo.of`)."""
    _, arrays = codec.to_params()
    tmp, final = Path(root) / (L.TMP_PREFIX + L.CODEC_DIR), Path(root) / L.CODEC_DIR
    L.remove(tmp)
    tmp.mkdir()  # not parents=True: an index folder removed meanwhile is an error
    for name, a in arrays.items():
        np.save(tmp / f"{name}.npy", a, allow_pickle=False)
    L.remove(final)
    L.commit_dir(tmp, final)


def load_codec(root: Path, manifest: Manifest) -> Codec:
    """The index's codec from its stored parameters, checked against the manifest's fingerprint."""
    arrays = {}
    for name in manifest.codec.arrays:
        path = Path(root) / L.CODEC_DIR / f"{name}.npy"
        try:
            arrays[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise L.damaged(path, f"cannot read codec parameters ({exc})", root) from None
    codec = codec_from_params(manifest.codec.config, arrays)
    want = manifest.codec.fingerprint
    if want is not None and codec.fingerprint() != want:
        raise L.damaged(Path(root) / L.CODEC_DIR, f"codec parameters changed (fingerprint {codec.fingerprint()}, "
                        f"manifest {want})", root)
    return codec
