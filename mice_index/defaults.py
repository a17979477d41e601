"""Which model to use when the user names none, and how the dense tower is found.

The default MICE model ships inside the package as a delta checkpoint (interaction layers, pooler
and head only; the frozen bottom comes from the packaged all-MiniLM-L6-v2). Because its bottom is
the backbone's own, one bottom pass over a document yields both the MICE states and, through the
backbone's upper layers (DenseTower), the all-MiniLM-L6-v2 sentence embedding.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mice_index.dense_tower import DenseTower
from mice_index.errors import ModelError
from mice_index.model import MiceModel

log = logging.getLogger(__name__)

DEFAULT_BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"  # resolves to the packaged offline copy
DEFAULT_MODEL_DIR = Path(__file__).parent / "models" / "mice-minilm-l6"
DEFAULT_ARCH = {"fusion_layer": 3, "num_interaction_layers": 3}


def load_model(name_or_path: str | Path | None = None, **overrides) -> MiceModel:
    """`None`/"default": the shipped MICE model (or, before one is trained, the backbone with a
    fresh head — a warning says its scores are untrained). Otherwise: MICE checkpoint folder, HF
    encoder or cross-encoder (folder or hub id)."""
    if name_or_path in (None, "default"):
        if (DEFAULT_MODEL_DIR / "mice_config.json").exists() and not overrides:
            return MiceModel.load(DEFAULT_MODEL_DIR)
        log.warning("no trained default MICE model is installed; using %s with an untrained head",
                    DEFAULT_BACKBONE)
        return MiceModel.from_pretrained(DEFAULT_BACKBONE, **{**DEFAULT_ARCH, **overrides})
    return MiceModel.from_pretrained(name_or_path, **overrides)


def load_dense_tower(model: MiceModel, backbone: str | Path = DEFAULT_BACKBONE) -> DenseTower | None:
    """The backbone's upper layers if `model`'s bottom equals `backbone`'s bottom (so layer-ℓ* states
    can be continued into the backbone's sentence embedding); None if they differ."""
    if model.config.family != "bert" or not model.config.shared_bottom:
        return None  # another family's or a separate document bottom: never the backbone's
    try:
        reference = MiceModel.from_pretrained(backbone, fusion_layer=model.config.fusion_layer,
                                              num_interaction_layers=1)
    except ModelError:  # e.g. ℓ* deeper than the backbone
        return None
    if reference.fingerprint() != model.fingerprint():
        return None
    return DenseTower.from_backbone(backbone, reference.config)
