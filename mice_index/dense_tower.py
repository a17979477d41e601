"""The dense tower: the backbone's own upper layers over layer-ℓ* states (one bottom pass gives
both the MICE states and the all-MiniLM-L6-v2 sentence embedding of the dense first stage)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mice_index.checkpoints import BertFamily, resolve_model_path
from mice_index.checkpoints import load_safetensors as _load_safetensors
from mice_index.errors import ModelError
from mice_index.model import EncoderLayer, MiceConfig, key_padding_mask

__all__ = ["DenseTower"]

class DenseTower(nn.Module):
    """Backbone layers ℓ*+1..L + mean pooling + L2 norm: a sentence embedding from layer-ℓ*
    states, equal to the full backbone's (e.g. all-MiniLM-L6-v2) when the bottoms are the same."""

    def __init__(self, cfg: MiceConfig):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_hidden_layers - cfg.fusion_layer))

    @classmethod
    def from_backbone(cls, name_or_path: str | Path, cfg: MiceConfig) -> DenseTower:
        path = resolve_model_path(name_or_path)
        hf = {k.removeprefix("bert."): v for k, v in _load_safetensors(path).items()}
        tower = cls(cfg)
        table = {}
        for i in range(len(tower.layers)):
            table |= BertFamily.layer_table(f"layers.{i}", cfg.fusion_layer + i, ("attn",))
        try:
            tower.load_state_dict({ours: hf[theirs].float() for ours, theirs in table.items()})
        except (KeyError, RuntimeError) as exc:
            raise ModelError(f"{path}: cannot build the dense tower: {exc}") from exc
        return tower.eval()

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x, m = states, key_padding_mask(mask, states.dtype)
        for layer in self.layers:
            x = layer(x, m)
        w = mask.to(x.dtype).unsqueeze(-1)
        return F.normalize((x * w).sum(1) / w.sum(1).clamp(min=1), dim=-1)
