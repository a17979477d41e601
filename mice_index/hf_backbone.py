"""A MICE initialised from a plain Hugging Face encoder or cross-encoder, per backbone family.

The family comes from the checkpoint's config (`model_type`), through `BACKBONES`; each entry
returns the MICE config and our weights, mapped by a fixed name table and checked tensor by tensor:

    bert        `checkpoints.BertFamily` (BERT, MiniLM, ...; post-norm, absolute positions)
    modernbert  ModernBERT / Ettin: bottom = layers 1..ℓ*, interaction layers = the next n layers
                with their cross-attention seeded from the same layer's self-attention (Wqkv split
                into q/k/v, Wo copied), as the reference code's `InitMICEModernBERTFromHFID` does;
                final_norm, prediction head and classifier from a cross-encoder. Bottom states
                equal transformers' hidden states (sliding-window attention in the local layers).
"""

from __future__ import annotations

import torch

from mice_index.checkpoints import FAMILIES
from mice_index.errors import ModelError

__all__ = ["BACKBONES", "check_backbone", "map_backbone"]


def _bert(hf: dict, weights: dict[str, torch.Tensor], cross_encoder: bool, mice: dict):
    from dataclasses import replace

    from mice_index.model import MiceConfig

    cfg = MiceConfig.from_hf(hf, **mice)
    cfg = replace(cfg, has_pooler=any(k.endswith("pooler.dense.weight") for k in weights))
    return cfg, FAMILIES["bert"].map_hf_weights(weights, cfg, with_head=cross_encoder)


def _modernbert(hf: dict, weights: dict[str, torch.Tensor], cross_encoder: bool, mice: dict):
    from mice_index.authors import modernbert_config

    for name, default in (("max_query_length", 32), ("max_doc_length", 256)):
        mice.setdefault(name, min(default, hf.get("max_position_embeddings", 512)))
    cfg = modernbert_config(hf, mice, local_attention=True)
    w = {k.removeprefix("model."): v for k, v in weights.items()}
    table: dict[str, str] = {}
    for k in w:
        if k.startswith("embeddings."):
            table[f"bottom.{k}"] = k
        elif k.startswith("layers."):
            i, rest = int(k.split(".")[1]), k.split(".", 2)[2]
            if i < cfg.fusion_layer:
                table[f"bottom.layers.{i}.{rest}"] = k
            elif i < cfg.fusion_layer + cfg.num_interaction_layers:
                table[f"interaction.layers.{i - cfg.fusion_layer}.{rest}"] = k
        elif k.startswith("final_norm."):
            table[f"interaction.pre_head.{k}"] = k
        elif cross_encoder and k.startswith("head."):
            table[f"interaction.pre_head.{k}"] = k
        elif cross_encoder and k.startswith("classifier."):
            table[f"interaction.{k.replace('classifier.', 'head.')}"] = k
    own = {ours: w[theirs].float() for ours, theirs in table.items()}
    d = cfg.hidden_size
    for j in range(cfg.num_interaction_layers):
        src = f"layers.{cfg.fusion_layer + j}.attn."
        if src + "Wqkv.weight" not in w:
            raise ModelError(f"backbone checkpoint lacks {src}Wqkv.weight")
        for p in ("weight", "bias"):
            if src + f"Wqkv.{p}" in w:
                q, k, v = w[src + f"Wqkv.{p}"].float().split(d, dim=0)
                dst = f"interaction.layers.{j}.crossattention."
                own |= {dst + f"q_proj.{p}": q, dst + f"k_proj.{p}": k, dst + f"v_proj.{p}": v}
            if src + f"Wo.{p}" in w:
                own[f"interaction.layers.{j}.crossattention.Wo.{p}"] = w[src + f"Wo.{p}"].float()
    return cfg, own


# model_type -> (config, our weights) from an HF checkpoint
BACKBONES = {"bert": _bert, "modernbert": _modernbert}


def check_backbone(hf: dict) -> None:
    """ModelError for a config whose model_type has no entry in `BACKBONES`."""
    kind = hf.get("model_type")
    if kind not in BACKBONES:
        raise ModelError(f"unsupported backbone model_type {kind!r}; supported: {', '.join(sorted(BACKBONES))}")


def map_backbone(hf: dict, weights: dict[str, torch.Tensor], cross_encoder: bool, mice: dict):
    """(MiceConfig, our weights) of an HF checkpoint (config dict, safetensors weights);
    ModelError for an unsupported model_type."""
    check_backbone(hf)
    return BACKBONES[hf["model_type"]](hf, weights, cross_encoder, dict(mice))
