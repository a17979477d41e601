"""The ModernBERT family (e.g. Ettin) of MICE: pre-norm blocks, rotary positions, gated MLP.

Reuses transformers' ModernBERT modules (`ModernBertEmbeddings`, `ModernBertEncoderLayer`,
`ModernBertAttention`, `ModernBertMLP`, `ModernBertRotaryEmbedding`, `ModernBertPredictionHead`),
so bottom states equal transformers' hidden states (tests/test_authors.py). Imported only for this
family (`model.ARCHITECTURES`), since it needs `transformers`.

The interaction layer follows the authors' reference code (xpmir/mice, src/MICE/modeling/mice.py,
`ModernBertCrossAttentionLayer`): each sublayer adds its output to the residual stream; the
cross-attention reads `attn_norm(query)` against `attn_norm(documents)` (the same norm as the
self-attention, no rotary positions), with separate q/k/v projections and `Wo`. The score is
final_norm -> prediction head (dense, activation, norm) -> dropout -> linear, on the [CLS].

Shapes: B batch, Tq query tokens, Td document tokens, D hidden size, H heads.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.modernbert.configuration_modernbert import ModernBertConfig
from transformers.models.modernbert.modeling_modernbert import (
    ModernBertAttention,
    ModernBertEmbeddings,
    ModernBertEncoderLayer,
    ModernBertMLP,
    ModernBertPredictionHead,
    ModernBertRotaryEmbedding,
)

from mice_index.errors import ModelError
from mice_index.model import MiceConfig, key_padding_mask

__all__ = ["ModernBertArchitecture", "hf_config"]


def hf_config(cfg: MiceConfig) -> ModernBertConfig:
    """transformers' config of the backbone recorded in `cfg.backbone` (SDPA attention)."""
    try:
        hf = ModernBertConfig(**{k: v for k, v in cfg.backbone.items() if k not in ("architectures", "model_type")})
    except (TypeError, ValueError) as exc:
        raise ModelError(f"invalid ModernBERT backbone config ({exc})") from exc
    hf._attn_implementation = "sdpa"
    return hf


class ModernBertBottom(nn.Module):
    """Embeddings + the first `num_layers` ModernBERT layers: encodes a query or a document alone."""

    def __init__(self, cfg: MiceConfig, num_layers: int):
        super().__init__()
        hf = hf_config(cfg)
        self.local_attention = cfg.local_attention
        self.window = hf.local_attention // 2  # half window, as transformers' sliding mask
        self.embeddings = ModernBertEmbeddings(hf)
        self.layers = nn.ModuleList(ModernBertEncoderLayer(hf, i) for i in range(num_layers))
        self.rotary = ModernBertRotaryEmbedding(hf)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, token_type: int = 0,
                layers: nn.ModuleList | None = None) -> torch.Tensor:
        """ids, mask [B,T] -> states [B,T,D] (no final norm) after `layers` (default: own)."""
        x = self.embeddings(ids)  # [B,T,D]
        full = key_padding_mask(mask, x.dtype)  # [B,1,1,T]
        pos = torch.arange(ids.shape[1], device=ids.device)[None]
        masks = {"full_attention": full, "sliding_attention": full}
        if self.local_attention:
            far = (pos[0, :, None] - pos[0, None, :]).abs() > self.window  # [T,T]
            masks["sliding_attention"] = full.masked_fill(far[None, None], torch.finfo(x.dtype).min)
        layers = self.layers if layers is None else layers
        rope = {t: self.rotary(x, pos, t) for t in {layer.attention_type for layer in layers}}
        for layer in layers:
            x = layer(x, attention_mask=masks[layer.attention_type], position_embeddings=rope[layer.attention_type])
        return x


class CrossAttention(nn.Module):
    """Multi-head attention of query rows over document states: W_o · softmax(q kᵀ/√dh + mask) v,
    with q = W_q x, k = W_k kv, v = W_v kv (no rotary positions). Names as the reference code."""

    def __init__(self, hf: ModernBertConfig):
        super().__init__()
        d, bias = hf.hidden_size, hf.attention_bias
        self.num_heads = hf.num_attention_heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(d, d, bias), nn.Linear(d, d, bias), nn.Linear(d, d, bias)
        self.Wo = nn.Linear(d, d, bias)
        self.attn_dropout = hf.attention_dropout

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B,T,D] -> [B,H,T,D/H]
        B, T, D = x.shape
        return x.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        ctx = nn.functional.scaled_dot_product_attention(
            self._heads(self.q_proj(x)), self._heads(self.k_proj(kv)), self._heads(self.v_proj(kv)),
            attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.Wo(ctx.transpose(1, 2).reshape(x.shape))

    def uniform(self, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Equal weights over the unmasked keys (a fully masked row): kv [B,Tkv,D] -> [B,1,D]."""
        keep = (mask[:, 0, 0] == 0).to(kv.dtype)  # [B,Tkv]
        avg = (keep[:, :, None] * kv).sum(1, keepdim=True) / keep.sum(1).clamp_min(1)[:, None, None]
        return self.Wo(self.v_proj(avg))


class ModernBertInteractionLayer(nn.Module):
    """A ModernBERT layer with cross-attention to frozen document states (reference code's
    `ModernBertCrossAttentionLayer`), run with the MICE layer options (`InteractionLayer`)."""

    def __init__(self, cfg: MiceConfig, index: int):
        super().__init__()
        hf = hf_config(cfg)
        layer_idx = cfg.fusion_layer + index  # position in the backbone: never 0, so attn_norm is a norm
        self.attn_norm = nn.LayerNorm(hf.hidden_size, eps=hf.norm_eps, bias=hf.norm_bias)
        self.attn = ModernBertAttention(hf, layer_idx=layer_idx)
        self.crossattention = CrossAttention(hf)
        self.mlp_norm = nn.LayerNorm(hf.hidden_size, eps=hf.norm_eps, bias=hf.norm_bias)
        self.mlp = ModernBertMLP(hf)
        self.attention_type = hf.layer_types[layer_idx]
        self.rotary = ModernBertRotaryEmbedding(hf)

    def forward(self, q, self_mask, docs, cross_mask, cls_mode: str = "skip", cross_first: bool = False,
                last: bool = False):
        # q [B,Tq,D]; docs [B,Td,D]; self_mask [B,1,Tq,Tq]; cross_mask [B,1,1,Td]; `last`: -> [B,1,D]
        rope = self.rotary(q, torch.arange(q.shape[1], device=q.device)[None], self.attention_type)
        if cross_first:
            q = self.cross(q, docs, cross_mask, cls_mode)
            q = q + self.attn(self.attn_norm(q), position_embeddings=rope, attention_mask=self_mask)[0]
            q = q[:, :1] if last else q
        else:
            q = q + self.attn(self.attn_norm(q), position_embeddings=rope, attention_mask=self_mask)[0]
            q = q[:, :1] if last else q
            q = self.cross(q, docs, cross_mask, "skip" if last and cls_mode == "mean" else cls_mode)
        return q + self.mlp(self.mlp_norm(q))

    def cross_probs(self, q, self_mask, docs, cross_mask, cross_first: bool = False) -> torch.Tensor:
        """The cross-attention weights of this layer's query rows -> [B,H,Tq,Td] (explain)."""
        if not cross_first:
            rope = self.rotary(q, torch.arange(q.shape[1], device=q.device)[None], self.attention_type)
            q = q + self.attn(self.attn_norm(q), position_embeddings=rope, attention_mask=self_mask)[0]
        a = self.crossattention
        scores = a._heads(a.q_proj(self.attn_norm(q))) @ a._heads(a.k_proj(self.attn_norm(docs))).transpose(-1, -2)
        return torch.softmax(scores * (q.shape[-1] // a.num_heads) ** -0.5 + cross_mask, dim=-1)

    def cross(self, q, docs, cross_mask, cls_mode: str = "skip"):
        """Cross-attention residual; the [CLS] (row 0) as `cls_mode` says (`model.CLS_MODES`)."""
        if cls_mode == "skip" and q.shape[1] == 1:
            return q
        d = self.attn_norm(docs)
        out = self.crossattention(self.attn_norm(q), d, cross_mask)
        if cls_mode == "skip":
            out = torch.cat([torch.zeros_like(out[:, :1]), out[:, 1:]], dim=1)
        elif cls_mode == "mean":
            out = torch.cat([self.crossattention.uniform(d, cross_mask), out[:, 1:]], dim=1)
        return q + out


class PreHead(nn.Module):
    """final_norm -> prediction head (dense, activation, norm): [B,D] -> [B,D]."""

    def __init__(self, cfg: MiceConfig):
        super().__init__()
        hf = hf_config(cfg)
        if hf.classifier_pooling != "cls":
            raise ModelError(f"ModernBERT classifier_pooling {hf.classifier_pooling!r} is not supported; "
                             "MICE scores from the [CLS] (cls)")
        self.final_norm = nn.LayerNorm(hf.hidden_size, eps=hf.norm_eps, bias=hf.norm_bias)
        self.head = ModernBertPredictionHead(hf)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.head(self.final_norm(cls))


class ModernBertArchitecture:
    """The ModernBERT family's blocks (`model.ARCHITECTURES`)."""

    bottom = ModernBertBottom
    interaction_layer = ModernBertInteractionLayer
    pre_head = PreHead

    @staticmethod
    def encoder_layer(cfg: MiceConfig, i: int) -> nn.Module:
        return ModernBertEncoderLayer(hf_config(cfg), i)
