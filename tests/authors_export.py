"""Test oracle: the MICE authors' reference forward pass, transcribed from xpmir/mice
(src/MICE/modeling/mice.py at b4dc361: `BertMiceCrossEncoder`, `ModernBertMiceCrossEncoder`,
`ModernBertCrossAttentionLayer`), built on transformers' own layers (BertLayer with cross-attention,
ModernBERT modules), written independently of mice_index's model. `write_export` saves a random-
weight model in the authors' export layout (experimaestro.json, model/model.safetensors, the two
layer configs, the tokenizer)."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel, ModernBertConfig
from transformers.models.bert.modeling_bert import BertLayer
from transformers.models.modernbert.modeling_modernbert import (
    ModernBertAttention, ModernBertEmbeddings, ModernBertEncoderLayer, ModernBertMLP, ModernBertPredictionHead,
    ModernBertRotaryEmbedding)


def ext_mask(mask, dtype):  # get_extended_attention_mask
    inv = 1.0 - mask[:, None, None, :].to(dtype)
    return inv.masked_fill(inv.to(torch.bool), torch.finfo(dtype).min)


def self_mask(opts, mask, dtype):  # get_self_attention_mask
    b = mask.to(torch.bool)
    valid = b[:, None, :, None] & b[:, None, None, :]
    if opts["mask_query_to_cls"]:
        valid[:, :, 1:, 0] = False
    return torch.zeros(valid.shape, dtype=dtype).masked_fill_(~valid, torch.finfo(dtype).min)


def cross_mask(opts, qm, dm, dtype):  # get_cross_attention_mask
    valid = qm.to(torch.bool)[:, :, None] & dm.to(torch.bool)[:, None, :]
    if opts["mask_cls_to_doc"]:
        valid[:, 0, :] = False
    return torch.zeros((valid.size(0), 1, valid.size(1), valid.size(2)), dtype=dtype).masked_fill_(
        ~valid[:, None], torch.finfo(dtype).min)


class RefBert(nn.Module):
    def __init__(self, config: BertConfig, opts: dict):
        super().__init__()
        self.opts, self.config = opts, config
        self.head_config = deepcopy(config)
        self.head_config.is_decoder, self.head_config.add_cross_attention = True, True
        base = BertModel(config)
        self.embeddings = base.embeddings
        n_ctx, n_doc = opts["n_contextualization_layers"], opts["n_docs_ctx_layers"] or opts["n_contextualization_layers"]
        if opts["bound_bottom_layers"]:
            self.bottom_layers = nn.ModuleList(BertLayer(config) for _ in range(n_ctx))
        else:
            self.query_bottom_layers = nn.ModuleList(BertLayer(config) for _ in range(n_ctx))
            self.document_bottom_layers = nn.ModuleList(BertLayer(config) for _ in range(n_doc))
        n_top = opts["n_interaction_layers"] or config.num_hidden_layers - n_ctx
        self.top_layers = nn.ModuleList(BertLayer(self.head_config) for _ in range(n_top))
        self.pooler = base.pooler
        self.classifier = nn.Linear(config.hidden_size, 1)

    def _bottom(self, ids, mask, side):
        x = self.embeddings(ids)
        m = ext_mask(mask, x.dtype)
        for layer in self.bottom_layers if self.opts["bound_bottom_layers"] else getattr(self, f"{side}_bottom_layers"):
            x = layer(x, m)
        return x

    @torch.no_grad()
    def forward(self, q_ids, q_mask, d_ids, d_mask):
        o = self.opts
        q, d = self._bottom(q_ids, q_mask, "query"), self._bottom(d_ids, d_mask, "document")
        qm, dm = self_mask(o, q_mask, q.dtype), cross_mask(o, q_mask, d_mask, q.dtype)
        n = len(self.top_layers)
        for i, layer in enumerate(self.top_layers):
            if o["cross_attn_first"]:
                q = layer.crossattention(hidden_states=q, encoder_hidden_states=d, encoder_attention_mask=dm)[0]
                q = layer.attention(q, qm)[0]
                if i == n - 1:
                    q = q[:, 0:1, :]
                q = layer.output(layer.intermediate(q), q)
            elif i == n - 1:
                q = layer.attention(q, qm)[0][:, 0:1, :]
                if not o["mask_cls_to_doc"]:
                    q = layer.crossattention(hidden_states=q, encoder_hidden_states=d,
                                             encoder_attention_mask=dm[:, :, 0:1, :])[0]
                q = layer.output(layer.intermediate(q), q)
            else:
                q = layer(hidden_states=q, attention_mask=qm, encoder_hidden_states=d, encoder_attention_mask=dm)
        return self.classifier(self.pooler(q)).squeeze(-1)


class RefCrossAttention(nn.Module):  # ModernBertCrossAttention
    def __init__(self, config):
        super().__init__()
        self.head_dim = config.hidden_size // config.num_attention_heads
        d, b = config.hidden_size, config.attention_bias
        self.q_proj, self.k_proj, self.v_proj, self.Wo = (nn.Linear(d, d, bias=b) for _ in range(4))

    def forward(self, query, key, value, attention_mask):
        sh = lambda x, p: p(x).view(*x.shape[:-1], -1, self.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = sh(query, self.q_proj), sh(key, self.k_proj), sh(value, self.v_proj)
        w = torch.matmul(q, k.transpose(2, 3)) * self.head_dim ** -0.5 + attention_mask  # eager attention
        out = torch.matmul(torch.softmax(w, dim=-1, dtype=torch.float32), v).transpose(1, 2)
        return self.Wo(out.reshape(*query.shape[:-1], -1)), None


class RefCrossLayer(nn.Module):  # ModernBertCrossAttentionLayer
    def __init__(self, config, layer_id):
        super().__init__()
        self.attn_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.attn = ModernBertAttention(config=config, layer_idx=layer_id)
        self.crossattention = RefCrossAttention(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.mlp = ModernBertMLP(config)
        self.attention_type = config.layer_types[layer_id]

    def forward(self, h, attention_mask, encoder_hidden_states, encoder_attention_mask, position_embeddings):
        h = h + self.attn(self.attn_norm(h), attention_mask=attention_mask, position_embeddings=position_embeddings)[0]
        e = self.attn_norm(encoder_hidden_states)
        h = h + self.crossattention(self.attn_norm(h), e, e, encoder_attention_mask)[0]
        return h + self.mlp(self.mlp_norm(h))


class RefModernBert(nn.Module):
    def __init__(self, config: ModernBertConfig, opts: dict):
        super().__init__()
        self.opts, self.config = opts, config
        self.rotary_emb = ModernBertRotaryEmbedding(config)
        self.embeddings = ModernBertEmbeddings(config)
        n_ctx, n_doc = opts["n_contextualization_layers"], opts["n_docs_ctx_layers"] or opts["n_contextualization_layers"]
        if opts["bound_bottom_layers"]:
            self.bottom_layers = nn.ModuleList(ModernBertEncoderLayer(config, i) for i in range(n_ctx))
        else:
            self.query_bottom_layers = nn.ModuleList(ModernBertEncoderLayer(config, i) for i in range(n_ctx))
            self.document_bottom_layers = nn.ModuleList(ModernBertEncoderLayer(config, i) for i in range(n_doc))
        n_top = opts["n_interaction_layers"] or config.num_hidden_layers - n_ctx
        self.top_layers = nn.ModuleList(RefCrossLayer(config, n_ctx + i) for i in range(n_top))
        self.final_norm = nn.LayerNorm(config.hidden_size, eps=config.norm_eps, bias=config.norm_bias)
        self.head = ModernBertPredictionHead(config)
        self.classifier = nn.Linear(config.hidden_size, 1)

    def _rope(self, x, s):
        pos = torch.arange(s).unsqueeze(0).expand(x.shape[0], s)
        return {lt: self.rotary_emb(x, pos, layer_type=lt) for lt in set(self.config.layer_types)}

    def _bottom(self, ids, mask, side):
        x = self.embeddings(ids)
        m, pe = ext_mask(mask, torch.float32), self._rope(x, ids.shape[1])
        for layer in self.bottom_layers if self.opts["bound_bottom_layers"] else getattr(self, f"{side}_bottom_layers"):
            x = layer(x, m, position_embeddings=pe[layer.attention_type])
        return x

    @torch.no_grad()
    def forward(self, q_ids, q_mask, d_ids, d_mask):
        o = self.opts
        x_q, x_d = self._bottom(q_ids, q_mask, "query"), self._bottom(d_ids, d_mask, "document")
        pe = self._rope(x_q, x_q.shape[1])
        qs, cm = self_mask(o, q_mask, x_q.dtype), cross_mask(o, q_mask, d_mask, x_q.dtype)
        n = len(self.top_layers)
        for i, layer in enumerate(self.top_layers):
            p = pe[layer.attention_type]
            if o["cross_attn_first"]:
                e = layer.attn_norm(x_d)
                x_q = x_q + layer.crossattention(layer.attn_norm(x_q), e, e, cm)[0]
                x_q = x_q + layer.attn(layer.attn_norm(x_q), attention_mask=qs, position_embeddings=p)[0]
                if i == n - 1:
                    x_q = x_q[:, 0:1, :]
                x_q = x_q + layer.mlp(layer.mlp_norm(x_q))
            elif i == n - 1:
                x_q = (x_q + layer.attn(layer.attn_norm(x_q), attention_mask=qs, position_embeddings=p)[0])[:, 0:1, :]
                if not o["mask_cls_to_doc"]:
                    e = layer.attn_norm(x_d)
                    x_q = x_q + layer.crossattention(layer.attn_norm(x_q), e, e, cm[:, :, 0:1, :])[0]
                x_q = x_q + layer.mlp(layer.mlp_norm(x_q))
            else:
                x_q = layer(x_q, qs, x_d, cm, p)
        return self.classifier(self.head(self.final_norm(x_q)[:, 0])).squeeze(-1)


DEFAULTS = {"n_contextualization_layers": 6, "n_docs_ctx_layers": None, "n_interaction_layers": None,
            "bound_bottom_layers": True, "cross_attn_first": True, "mask_cls_to_doc": False, "mask_query_to_cls": True}


def tiny_config(family: str):
    if family == "bert":
        return BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
                          intermediate_size=48, max_position_embeddings=128)
    return ModernBertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=5, num_attention_heads=4,
                            intermediate_size=48, max_position_embeddings=128, global_attn_every_n_layers=2,
                            local_attention=16, pad_token_id=0, cls_token_id=101, sep_token_id=102, bos_token_id=101,
                            eos_token_id=102, classifier_pooling="cls")


def build(family: str, seed: int = 0, **options):
    """A random-weight reference model (LayerNorms and biases perturbed too), in eval mode."""
    opts = {**DEFAULTS, **options}
    torch.manual_seed(seed)
    config = tiny_config(family)
    model = (RefBert if family == "bert" else RefModernBert)(config, opts)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(torch.randn_like(p) * (0.2 if p.dim() == 1 else 0.05))
    return model.eval()


def write_export(model, path: Path, tokenizer, max_query_length=16, max_doc_length=64) -> Path:
    """The reference export layout: experimaestro.json (options not at their default only, as
    experimaestro's ignore_default writes them), model/model.safetensors, model/{contextualization,
    interaction}_layers/config.json, the tokenizer in model/."""
    from safetensors.torch import save_file

    family = "bert" if isinstance(model, RefBert) else "modernbert"
    (path / "model").mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model" / "model.safetensors"))
    tokenizer.save_pretrained(str(path / "model"))
    head = deepcopy(model.config)
    head.is_decoder, head.add_cross_attention = True, True
    head.save_pretrained(str(path / "model" / "interaction_layers"))
    model.config.save_pretrained(str(path / "model" / "contextualization_layers"))
    fields = {k: v for k, v in model.opts.items() if DEFAULTS[k] != v}
    cls = "BertMiceCrossEncoder" if family == "bert" else "ModernBertMiceCrossEncoder"
    objects = [
        {"id": 1, "module": "MICE.modeling.mice", "type": "MICE.modeling.mice.MICEQueryDocTokenizer",
         "fields": {"model_id": "tiny", "max_query_length": max_query_length, "max_doc_length": max_doc_length}},
        {"id": 2, "module": "MICE.modeling.mice", "type": f"MICE.modeling.mice.{cls}",
         "fields": {"hf_id": "tiny", "tokenizer": {"type": "python", "value": 1}, **fields}},
    ]
    (path / "experimaestro.json").write_text(json.dumps({"objects": objects, "data": {"type": "python", "value": 2}}))
    return path
