"""The MICE model in one file: sub-blocks, config, the two halves, weight loading.

MICE (Minimal Interaction Cross-Encoders) splits a cross-encoder at layer ℓ* ("fusion layer"):

    bottom (layers 1..ℓ*)        query and document are encoded *separately* with shared weights;
                                 a document's layer-ℓ* states are computed once, offline.
    interaction (ℓ*+1..ℓ*+n)     query tokens self-attend (not to the query's [CLS]) and
                                 cross-attend to the frozen layer-ℓ* document states; the [CLS]
                                 never reads document tokens. Documents are never updated.
    head                         [CLS] -> pooler (if the backbone has one) -> linear -> score.

Score heads (`MiceConfig.score_head`, recorded in every checkpoint):
    "cls"          the paper's: the [CLS] head alone.
    "cls+maxsim"   the [CLS] head plus a learned late-interaction term over the same layer-ℓ*
                   states (`LateInteraction`: ColBERT's MaxSim with a query-side projection and
                   per-token weights). It starts as parameter-free MaxSim (projection = I, weights 1,
                   [CLS] head zero), so training starts from matching signal instead of a random head.

Shapes: B batch, Tq query tokens, Td document tokens, D hidden size, H heads.
The BERT family's blocks (post-norm, absolute positions) are here; the ModernBERT family's are in
`mice_index/modernbert.py` (`ARCHITECTURES`). The reference code's layer options (cross-attention
first, a [CLS] that reads the document, separate bottoms; README "Using the authors' MICE models")
are `MiceConfig` fields whose defaults are the paper's form described above.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mice_index.checkpoints import load_safetensors as _load_safetensors
from mice_index.checkpoints import load_tokenizer as _load_tokenizer
from mice_index.checkpoints import read_json as _read_json
from mice_index.checkpoints import FAMILIES, resolve_model_path
from mice_index.errors import ModelError
from mice_index.text import bounded_texts


CONFIG_NAME = "mice_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
SCORE_HEADS = ("cls", "cls+maxsim")
# What the [CLS] does in a cross-attention sublayer (`MiceConfig.cls_cross_attention`):
#   "skip"    the paper's: it takes no part; its state passes unchanged.
#   "attend"  it attends to the document tokens like a query token (the reference code's
#             mask_cls_to_doc = false, its default).
#   "mean"    its row is fully masked, which gives equal weights to the document's tokens (the
#             reference code's mask_cls_to_doc = true); in the last layer of the self-attention-
#             first order the reference skips it instead.
CLS_MODES = ("skip", "attend", "mean")


# ----------------------------------------------------------------------------------------------
# Sub-blocks (BERT: post-LayerNorm residual blocks)


class Attention(nn.Module):
    """BERT attention sublayer: LN(x + W_o · softmax(q kᵀ/√d + mask) v), q from x, k/v from `kv`."""

    def __init__(self, cfg: MiceConfig):
        super().__init__()
        d = cfg.hidden_size
        self.num_heads = cfg.num_attention_heads
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.attn_dropout = cfg.attention_dropout
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # [B,T,D] -> [B,H,T,D/H]
        B, T, D = x.shape
        return x.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # mask: additive, broadcastable to [B,H,Tx,Tkv] (0 = attend, -inf = blocked)
        ctx = F.scaled_dot_product_attention(
            self._heads(self.query(x)), self._heads(self.key(kv)), self._heads(self.value(kv)),
            attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0,
        )
        ctx = ctx.transpose(1, 2).reshape(x.shape)
        return self.norm(x + self.dropout(self.out(ctx)))

    def uniform(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The sublayer with equal attention weights over the unmasked keys (a fully masked row in
        the reference code: every logit is the dtype's minimum): x [B,1,D], mask [B,1,1,Tkv]."""
        keep = (mask[:, 0, 0] == 0).to(kv.dtype)  # [B,Tkv]
        avg = (keep[:, :, None] * kv).sum(1, keepdim=True) / keep.sum(1).clamp_min(1)[:, None, None]
        return self.norm(x + self.dropout(self.out(self.value(avg))))


class FeedForward(nn.Module):
    """BERT feed-forward sublayer: LN(x + W_2 · gelu(W_1 x))."""

    def __init__(self, cfg: MiceConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.dropout(self.down(F.gelu(self.up(x)))))


class EncoderLayer(nn.Module):
    """A plain BERT layer (used in the bottom and in the dense tower)."""

    def __init__(self, cfg: MiceConfig):
        super().__init__()
        self.attn, self.ffn = Attention(cfg), FeedForward(cfg)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attn(x, x, mask))


class InteractionLayer(nn.Module):
    """Query self-attention -> cross-attention to frozen document states -> feed-forward (the
    paper's order), or cross-attention first (`cross_first`, the reference code's default)."""

    def __init__(self, cfg: MiceConfig, index: int = 0):
        super().__init__()
        self.self_attn, self.cross_attn, self.ffn = Attention(cfg), Attention(cfg), FeedForward(cfg)

    def forward(self, q, self_mask, docs, cross_mask, cls_mode: str = "skip", cross_first: bool = False,
                last: bool = False):
        # q [B,Tq,D]; docs [B,Td,D] (read-only); self_mask [B,1,Tq,Tq]; cross_mask [B,1,1,Td].
        # `last`: only the [CLS] row reaches the score, so only it is computed -> [B,1,D].
        if cross_first:
            q = self.cross(q, docs, cross_mask, cls_mode)
            q = self.self_attn(q[:, :1], q, self_mask[:, :, :1]) if last else self.self_attn(q, q, self_mask)
        else:
            q = self.self_attn(q[:, :1], q, self_mask[:, :, :1]) if last else self.self_attn(q, q, self_mask)
            # the reference code skips the last layer's cross-attention of a masked [CLS]
            q = self.cross(q, docs, cross_mask, "skip" if last and cls_mode == "mean" else cls_mode)
        return self.ffn(q)

    def cross_probs(self, q, self_mask, docs, cross_mask, cross_first: bool = False) -> torch.Tensor:
        """The cross-attention weights of this layer's query rows -> [B,H,Tq,Td] (explain)."""
        x = q if cross_first else self.self_attn(q, q, self_mask)
        attn = self.cross_attn
        scores = attn._heads(attn.query(x)) @ attn._heads(attn.key(docs)).transpose(-1, -2)
        return torch.softmax(scores * (q.shape[-1] // attn.num_heads) ** -0.5 + cross_mask, dim=-1)

    def cross(self, q, docs, cross_mask, cls_mode: str = "skip"):
        """Cross-attention sublayer; the [CLS] (row 0) as `cls_mode` says (see `CLS_MODES`)."""
        if cls_mode == "skip" and q.shape[1] == 1:  # the [CLS] row alone
            return q
        crossed = self.cross_attn(q, docs, cross_mask)
        if cls_mode == "attend":
            return crossed
        if cls_mode == "mean":
            cls = self.cross_attn.uniform(q[:, :1], docs, cross_mask)
            return torch.cat([cls, crossed[:, 1:]], dim=1)
        # The [CLS] (position 0) takes no part in cross-attention: its state passes unchanged, so
        # it learns about the document only through the query tokens of the next layer.
        is_token = torch.ones_like(q[:1, :, :1])
        is_token[:, 0] = 0
        return torch.where(is_token.bool(), crossed, q)


class Embeddings(nn.Module):
    def __init__(self, cfg: MiceConfig):
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, ids: torch.Tensor, token_type: int = 0) -> torch.Tensor:
        pos = torch.arange(ids.shape[1], device=ids.device)
        types = torch.full_like(ids, token_type)
        return self.dropout(self.norm(self.word(ids) + self.position(pos) + self.token_type(types)))


def key_padding_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B,T] 1/0 attention mask -> additive [B,1,1,T] mask."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
        mask == 0, torch.finfo(dtype).min)[:, None, None, :]


def query_self_mask(mask: torch.Tensor, dtype: torch.dtype, to_cls: bool = False) -> torch.Tensor:
    """[B,Tq] -> additive [B,1,Tq,Tq]: query tokens may not attend to the [CLS] (unless `to_cls`,
    the reference code's mask_query_to_cls = false); the [CLS] may."""
    allowed = (mask[:, None, :] != 0).expand(-1, mask.shape[1], -1).clone()  # [B,Tq(row),Tq(key)]
    if not to_cls:
        allowed[:, 1:, 0] = False
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)[:, None]


# ----------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class MiceConfig:
    # backbone architecture (copied from the HF config)
    vocab_size: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    num_hidden_layers: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    has_pooler: bool = True
    family: str = "bert"
    # MICE
    fusion_layer: int = 3  # ℓ*: bottom layers 1..ℓ*
    num_interaction_layers: int = 3  # backbone layers ℓ*+1 .. ℓ*+n (layer dropping)
    max_query_length: int = 32
    max_doc_length: int = 256
    doc_token_type: int = 0  # documents are encoded alone as `[CLS] d [SEP]`
    base_model: str | None = None  # where omitted (frozen) bottom weights come from
    score_head: str = "cls"  # "cls" (the paper's) or "cls+maxsim" (see the module docstring)
    # interpolation weight of the first-stage score recommended for this model (search --alpha)
    # and how it was chosen; None: pure MICE
    recommended_alpha: float | None = None
    recommended_alpha_note: str | None = None
    # layer options of the authors' reference code (xpmir/mice, src/MICE/modeling/mice.py); the
    # defaults are the paper's text. See README "Using the authors' MICE models".
    cross_attn_first: bool = False  # interaction layers: cross-attention before self-attention
    cls_cross_attention: str = "skip"  # one of CLS_MODES
    mask_query_to_cls: bool = True  # query tokens may not attend to the [CLS]
    shared_bottom: bool = True  # one bottom for queries and documents, else two (shared embeddings)
    doc_fusion_layer: int | None = None  # document-side bottom depth (separate bottoms); None: ℓ*
    # the family's HF backbone config, for families whose architecture the fields above do not
    # describe (modernbert); None for bert
    backbone: dict | None = None
    # modernbert: sliding-window attention in the bottom's local layers, as transformers runs it;
    # False: full attention in every layer, as the reference code runs it
    local_attention: bool = False

    @property
    def doc_layers(self) -> int:
        """Bottom layers of the document side: the depth of the stored states."""
        return self.doc_fusion_layer or self.fusion_layer

    def layer_options(self) -> dict:
        """The layer options that differ from the paper's defaults (for `info`)."""
        names = ("cross_attn_first", "cls_cross_attention", "mask_query_to_cls", "shared_bottom", "doc_fusion_layer")
        return {n: getattr(self, n) for n in names
                if getattr(self, n) != next(f.default for f in fields(self) if f.name == n)}

    @property
    def is_paper_form(self) -> bool:
        """The paper's interaction (the default options), which `scorer/fast.py` rewrites."""
        return (self.family == "bert" and not self.cross_attn_first and self.cls_cross_attention == "skip"
                and self.mask_query_to_cls)

    def __post_init__(self):
        if self.family not in ARCHITECTURES:
            raise ModelError(f"unsupported model family {self.family!r}; supported: {sorted(ARCHITECTURES)}")
        if not 1 <= self.fusion_layer < self.num_hidden_layers:
            raise ModelError(f"fusion_layer must be in 1..{self.num_hidden_layers - 1}, got {self.fusion_layer}")
        free = self.num_hidden_layers - self.fusion_layer
        if not 1 <= self.num_interaction_layers <= free:
            raise ModelError(f"num_interaction_layers must be in 1..{free} for fusion_layer="
                             f"{self.fusion_layer}, got {self.num_interaction_layers}")
        for name in ("max_query_length", "max_doc_length"):
            if not 3 <= getattr(self, name) <= self.max_position_embeddings:
                raise ModelError(f"{name} must be in 3..{self.max_position_embeddings}")
        if self.score_head not in SCORE_HEADS:
            raise ModelError(f"unknown score_head {self.score_head!r}; choose one of {', '.join(SCORE_HEADS)}")
        if self.recommended_alpha is not None and not 0.0 <= self.recommended_alpha <= 1.0:
            raise ModelError(f"recommended_alpha must be in [0, 1], got {self.recommended_alpha}")
        if self.cls_cross_attention not in CLS_MODES:
            raise ModelError(f"unknown cls_cross_attention {self.cls_cross_attention!r}; choose one of "
                             f"{', '.join(CLS_MODES)}")
        if self.doc_fusion_layer is not None:
            if not 1 <= self.doc_fusion_layer <= self.num_hidden_layers:
                raise ModelError(f"doc_fusion_layer must be in 1..{self.num_hidden_layers}, got {self.doc_fusion_layer}")
            if self.shared_bottom and self.doc_fusion_layer != self.fusion_layer:
                raise ModelError("doc_fusion_layer differs from fusion_layer: needs shared_bottom = false")
        if (self.backbone is None) != (self.family == "bert"):
            raise ModelError(f"family {self.family!r}: backbone config must be "
                             f"{'absent' if self.family == 'bert' else 'given'}")

    @classmethod
    def from_hf(cls, hf: dict, **mice) -> MiceConfig:
        if hf.get("model_type") != "bert":
            raise ModelError(f"unsupported backbone model_type {hf.get('model_type')!r}; supported: bert")
        if hf.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError("only absolute position embeddings are supported")
        if hf.get("hidden_act", "gelu") != "gelu":
            raise ModelError(f"unsupported hidden_act {hf.get('hidden_act')!r}; supported: gelu")
        arch = {f.name: hf[f.name] for f in fields(cls) if f.name in hf}
        arch["hidden_dropout"] = hf.get("hidden_dropout_prob", 0.1)
        arch["attention_dropout"] = hf.get("attention_probs_dropout_prob", 0.1)
        for name, default in (("max_query_length", 32), ("max_doc_length", 256)):
            mice.setdefault(name, min(default, arch.get("max_position_embeddings", 512)))
        return cls(**arch, **mice)


# ----------------------------------------------------------------------------------------------
# The model: bottom (shared, separate encodings) + interaction stack + head


class Bottom(nn.Module):
    """Embeddings + layers 1..ℓ*: encodes a query or a document on its own."""

    def __init__(self, cfg: MiceConfig, num_layers: int | None = None):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(num_layers or cfg.fusion_layer))

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, token_type: int = 0,
                layers: nn.ModuleList | None = None) -> torch.Tensor:
        """ids, mask [B,T] -> states [B,T,D] after `layers` (default: this bottom's own)."""
        x = self.embeddings(ids, token_type)  # [B,T,D]
        m = key_padding_mask(mask, x.dtype)
        for layer in self.layers if layers is None else layers:
            x = layer(x, m)
        return x


class BertArchitecture:
    """The BERT family's blocks (post-norm, absolute positions)."""

    bottom, encoder_layer, interaction_layer = Bottom, staticmethod(lambda cfg, i: EncoderLayer(cfg)), InteractionLayer

    @staticmethod
    def pre_head(cfg: MiceConfig) -> nn.Module | None:
        return None


# family -> "module:attribute" of its blocks, imported on first use (ModernBERT needs transformers)
ARCHITECTURES = {"bert": "mice_index.model:BertArchitecture",
                 "modernbert": "mice_index.modernbert:ModernBertArchitecture"}


def architecture(family: str):
    """The block classes of a backbone family (`ARCHITECTURES`)."""
    import importlib

    module, _, name = ARCHITECTURES[family].partition(":")
    return getattr(importlib.import_module(module), name)


def inner_tokens(mask: torch.Tensor) -> torch.Tensor:
    """[B,T] 1/0 mask of `[CLS] ... [SEP]` sequences -> bool mask of the tokens between them."""
    inner = mask.bool().clone()
    inner[:, 0] = False
    last = (mask.sum(1) - 1).clamp(min=0)
    inner[torch.arange(mask.shape[0], device=mask.device), last] = False
    return inner


class LateInteraction(nn.Module):
    """Learned MaxSim over layer-ℓ* states (score head "cls+maxsim"):

        s(q, d) = scale · Σ_i w_i · max_j cos(A q_i, d_j)

    over query tokens i and document tokens j, [CLS]/[SEP] excluded on both sides; A [D,D] is a
    query-side projection (documents are only L2-normalised, so stored states need no extra work),
    w_i = softplus(u·q_i + c) a per-token weight. At initialisation A = I, u = 0, softplus(c) = 1,
    scale = 1: exactly ColBERT's MaxSim (Khattab & Zaharia, SIGIR 2020) on the MICE bottom."""

    def __init__(self, cfg: MiceConfig):
        super().__init__()
        d = cfg.hidden_size
        self.proj = nn.Linear(d, d, bias=False)
        self.weight = nn.Linear(d, 1)
        self.scale = nn.Parameter(torch.ones(()))
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(d))
            self.weight.weight.zero_()
            self.weight.bias.fill_(math.log(math.e - 1.0))  # softplus(c) = 1

    def query(self, q: torch.Tensor, q_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q [B,Tq,D] -> (unit-norm projected tokens [B,Tq,D], weights [B,Tq], 0 off the inner tokens)."""
        w = F.softplus(self.weight(q).squeeze(-1)) * inner_tokens(q_mask).to(q.dtype)
        return F.normalize(self.proj(q), dim=-1), self.scale * w

    def forward(self, q, q_mask, docs, d_mask) -> torch.Tensor:
        """q [B,Tq,D], docs [B,Td,D] with masks -> [B]."""
        qn, w = self.query(q, q_mask)
        return self.combine(torch.matmul(qn, F.normalize(docs.to(q.dtype), dim=-1).transpose(1, 2)), w, d_mask)

    @staticmethod
    def combine(sim: torch.Tensor, w: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
        """sim [B,Tq,Td] cosines, w [B,Tq], d_mask [B,Td] -> Σ_i w_i max_j sim_ij [B] (0 for a
        document with no inner token)."""
        inner = inner_tokens(d_mask)
        best = sim.masked_fill(~inner[:, None, :], -2.0).amax(-1)
        return (w * torch.where(inner.any(1, keepdim=True), best, torch.zeros_like(best))).sum(-1)


class Interaction(nn.Module):
    """Interaction layers + pooler + linear head: (query states, document states) -> score."""

    def __init__(self, cfg: MiceConfig):
        super().__init__()
        self.config = cfg
        arch = architecture(cfg.family)
        self.layers = nn.ModuleList(arch.interaction_layer(cfg, i) for i in range(cfg.num_interaction_layers))
        self.pre_head = arch.pre_head(cfg)  # e.g. ModernBERT's final norm + prediction head
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size) if cfg.has_pooler else None
        self.dropout = nn.Dropout(cfg.hidden_dropout)
        self.head = nn.Linear(cfg.hidden_size, 1)
        self.late = LateInteraction(cfg) if cfg.score_head == "cls+maxsim" else None

    def masks(self, q_mask: torch.Tensor, d_mask: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive (query self-attention [B,1,Tq,Tq], cross-attention [B,1,1,Td]) masks."""
        return (query_self_mask(q_mask, dtype, to_cls=not self.config.mask_query_to_cls),
                key_padding_mask(d_mask, dtype))

    def forward(self, q, q_mask, docs, d_mask) -> torch.Tensor:
        # q [B,Tq,D] layer-ℓ* query states; docs [B,Td,D] layer-ℓ* document states -> [B]
        self_mask, cross_mask = self.masks(q_mask, d_mask, q.dtype)
        docs = docs.to(q.dtype)
        late = self.late(q, q_mask, docs, d_mask) if self.late is not None else 0.0
        if not self.config.is_paper_form:
            return self.forward_options(q, self_mask, docs, cross_mask) + late
        for layer in self.layers[:-1]:
            q = layer(q, self_mask, docs, cross_mask)
        return self.score_cls(q, self_mask) + late

    def forward_options(self, q, self_mask, docs, cross_mask) -> torch.Tensor:
        """The layers with the config's options (cross-attention first, the [CLS]'s cross-attention
        mode), as the reference code runs them -> [B]."""
        cfg, n = self.config, len(self.layers)
        for i, layer in enumerate(self.layers):
            q = layer(q, self_mask, docs, cross_mask, cfg.cls_cross_attention, cfg.cross_attn_first, last=i == n - 1)
        return self.head_score(q[:, 0])

    def score_cls(self, q, self_mask) -> torch.Tensor:
        """Last interaction layer + pooler + head on the second-to-last layer's query states -> [B]."""
        # In the last layer only the [CLS] row reaches the score, and the [CLS] skips cross-attention:
        # that layer's cross-attention and query-token rows are dead computation (exactly equal to
        # running it in full; tests/test_model.py checks it), so only the [CLS] row is computed.
        last = self.layers[-1]
        cls = last.ffn(last.self_attn(q[:, :1], q, self_mask[:, :, :1, :]))[:, 0]
        return self.head_score(cls)

    def head_score(self, cls: torch.Tensor) -> torch.Tensor:
        """Final [CLS] state [B,D] -> (pre-head) -> pooler (if any) -> dropout -> linear -> [B]."""
        if self.pre_head is not None:
            cls = self.pre_head(cls)
        if self.pooler is not None:
            cls = torch.tanh(self.pooler(cls))
        return self.head(self.dropout(cls)).squeeze(-1)


def pad_states(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of [T_i,D] -> zero-padded [B,Tmax,D] and mask [B,Tmax]."""
    lengths = torch.tensor([s.shape[0] for s in states])
    padded = nn.utils.rnn.pad_sequence(states, batch_first=True)
    mask = (torch.arange(padded.shape[1])[None, :] < lengths[:, None]).to(torch.long)
    return padded, mask.to(padded.device)


class MiceModel(nn.Module):
    """A MICE re-ranker. Build with `from_pretrained` (MICE checkpoint, HF encoder or cross-encoder);
    constructors return the model in eval mode (call .train() to fine-tune)."""

    def __init__(self, cfg: MiceConfig, tokenizer=None):
        super().__init__()
        self.config, self.tokenizer = cfg, tokenizer
        arch = architecture(cfg.family)
        self.bottom = arch.bottom(cfg, cfg.doc_layers)  # the document side: stored states
        # separate query-side bottom layers (over the shared embeddings), else None
        self.query_layers = None if cfg.shared_bottom else nn.ModuleList(
            arch.encoder_layer(cfg, i) for i in range(cfg.fusion_layer))
        self.interaction = Interaction(cfg)
        self._fingerprint: str | None = None

    @property
    def device(self) -> torch.device:
        return self.interaction.head.weight.device

    # -- tokenisation (the tokenizer adds [CLS] ... [SEP] and truncates) --
    def tokenize(self, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Texts -> (ids [B,T], mask [B,T]), truncated to max_length tokens; a long text is tokenized
        from a prefix with the same first tokens (`text.bounded_texts`); SourceError for a text that
        is not valid Unicode."""
        texts = bounded_texts(self.tokenizer, list(texts), max_length)
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length,
                             return_tensors="pt", return_token_type_ids=False)
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    # -- document side (offline) --
    def encode_document_batch(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids [B,Td] -> layer-ℓ* states [B,Td,D] (padding rows are garbage; use mask)."""
        return self.bottom(ids, mask, token_type=self.config.doc_token_type)

    @torch.inference_mode()
    def encode_documents(self, texts: list[str], prune: str = "none") -> list[torch.Tensor]:
        """Texts -> per-document layer-ℓ* states [T_i,D] without padding ([CLS] ... [SEP]), the
        tokens dropped by the build's `prune` rule left out (mice_index/prune.py)."""
        from mice_index.prune import TokenPruner

        keep = TokenPruner(self.tokenizer, prune).keep
        ids, mask = self.tokenize(texts, self.config.max_doc_length)
        states = self.encode_document_batch(ids, mask)
        return [s[: int(n)][torch.from_numpy(keep(i[: int(n)].tolist()))] for s, i, n in zip(states, ids, mask.sum(1))]

    # -- query side (online) --
    def encode_queries(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries -> (layer-ℓ* states [B,Tq,D], mask [B,Tq])."""
        ids, mask = self.tokenize(texts, self.config.max_query_length)
        return self.bottom(ids, mask, token_type=0, layers=self.query_layers), mask

    def score_states(self, q, q_mask, docs, d_mask) -> torch.Tensor:
        """Batched pairs: q [B,Tq,D] (or [1,Tq,D], broadcast), docs [B,Td,D] -> scores [B]."""
        B = docs.shape[0]
        if q.shape[0] == 1 and B > 1:
            q, q_mask = q.expand(B, -1, -1), q_mask.expand(B, -1)
        return self.interaction(q, q_mask, docs, d_mask)

    @torch.inference_mode()
    def score(self, query: str, doc_states: list[torch.Tensor]) -> torch.Tensor:
        """One query against documents given as stored layer-ℓ* states (each [T_i,D]) -> [B]."""
        q, q_mask = self.encode_queries([query])
        docs, d_mask = pad_states([d.to(self.device) for d in doc_states])
        return self.score_states(q, q_mask, docs, d_mask).float()

    @torch.inference_mode()
    def score_texts(self, query: str, documents: list[str]) -> torch.Tensor:
        """Same as `score`, computing the document states from text (reference path)."""
        return self.score(query, self.encode_documents(documents))

    def format_document(self, title: str, text: str) -> str:
        return f"{title} {text}".strip() if title else text

    # -- identity --
    def fingerprint(self) -> str:
        """Hash of tokenizer + embeddings + bottom weights + ℓ*: equal iff stored states are valid."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            c = self.config
            head = {"family": c.family, "fusion_layer": c.doc_layers, "doc_token_type": c.doc_token_type}
            if c.family != "bert":  # what else decides the stored states (absent for bert: unchanged)
                head |= {"local_attention": c.local_attention, "backbone": c.backbone}
            h.update(json.dumps(head).encode())
            if self.tokenizer is not None:
                # vocabulary and rules only: a fast tokenizer records the truncation/padding of its
                # last call in its state, which must not change the fingerprint
                spec = json.loads(self.tokenizer.backend_tokenizer.to_str())
                spec.pop("truncation", None), spec.pop("padding", None)
                h.update(json.dumps(spec, sort_keys=True).encode())
            for name, t in sorted(self.bottom.state_dict().items()):
                h.update(name.encode())
                h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    # -- construction and persistence --
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, **overrides) -> MiceModel:
        """A MICE checkpoint folder, the MICE authors' export (`mice_index/authors.py`), an HF BERT
        encoder or an HF cross-encoder (folder or hub id)."""
        from mice_index.authors import is_authors_export, load_authors_model

        path = resolve_model_path(name_or_path)
        if is_authors_export(path):
            if overrides:
                raise ModelError(f"{path} is the MICE authors' export; its architecture cannot be overridden "
                                 f"({sorted(overrides)})")
            return load_authors_model(path)
        if (path / CONFIG_NAME).exists():
            if overrides:
                raise ModelError(f"{path} is a MICE checkpoint; its architecture cannot be overridden "
                                 f"({sorted(overrides)}); train a new model instead")
            return cls.load(path)
        hf = _read_json(path / "config.json")
        is_cross = any(a.endswith("ForSequenceClassification") for a in hf.get("architectures") or [])
        return cls._from_hf(path, hf, cross_encoder=is_cross, **overrides)

    @classmethod
    def _from_hf(cls, path: Path, hf: dict, cross_encoder: bool, **mice) -> MiceModel:
        if cross_encoder and hf.get("num_labels", len(hf.get("id2label", {0: 0}))) != 1:
            raise ModelError(f"{path}: a cross-encoder must have exactly one label (a relevance score)")
        from mice_index.hf_backbone import check_backbone, map_backbone

        check_backbone(hf)  # refuse an unsupported architecture before reading weights
        if hf.get("model_type") == "bert":
            MiceConfig.from_hf(hf, **mice)
        cfg, own = map_backbone(hf, _load_safetensors(path), cross_encoder, mice)
        model = cls(cfg, _load_tokenizer(path))
        model._init_head(seed=0)
        # new modules keep their initialisation: the late-interaction term (identity MaxSim) and,
        # for a plain encoder, the head
        model._load_own(own, strict_except=("interaction.late.",) if cross_encoder
                        else ("interaction.late.", "interaction.head.", "interaction.pre_head.head."))
        return model.eval()

    @classmethod
    def load(cls, path: str | Path) -> MiceModel:
        path = Path(path)
        raw = _read_json(path / CONFIG_NAME)
        if raw.pop("format_version", None) != FORMAT_VERSION:
            raise ModelError(f"{path / CONFIG_NAME}: unsupported MICE checkpoint format version")
        cfg = MiceConfig(**raw)
        own = _load_safetensors(path, WEIGHTS_NAME)
        tok_path = path
        if not any(k.startswith("bottom.") for k in own):  # delta checkpoint: bottom = base model's
            if not cfg.base_model:
                raise ModelError(f"{path}: checkpoint has no bottom weights and no base_model")
            base = resolve_model_path(cfg.base_model)
            bottom = FAMILIES[cfg.family].map_hf_weights(_load_safetensors(base), cfg, with_head=False)
            own = {**{k: v for k, v in bottom.items() if k.startswith("bottom.")}, **own}
            tok_path = path if (path / "tokenizer_config.json").exists() else base
        model = cls(cfg, _load_tokenizer(tok_path))
        model._load_own(own)
        return model.eval()

    def save(self, path: str | Path, delta: bool = False) -> Path:
        """Write safetensors + JSON config + tokenizer. `delta`: omit the (frozen) bottom weights,
        which are then read from `config.base_model` at load time."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if delta and not self.config.base_model:
            raise ModelError("a delta checkpoint needs config.base_model")
        state = {k: v.detach().to("cpu", torch.float32).contiguous()
                 for k, v in self.state_dict().items() if not (delta and k.startswith("bottom."))}
        save_file(state, str(path / WEIGHTS_NAME))
        (path / CONFIG_NAME).write_text(json.dumps({"format_version": FORMAT_VERSION, **asdict(self.config)}, indent=2))
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(path))
        return path

    def with_config(self, **changes) -> MiceModel:
        """A copy with a changed MICE config (e.g. base_model) and the same weights."""
        model = MiceModel(replace(self.config, **changes), self.tokenizer)
        model.load_state_dict(self.state_dict())
        return model.train(self.training)

    def _init_head(self, seed: int) -> None:
        """A fresh [CLS] head: N(0, 0.02²), or zero when a late-interaction term carries the score
        at the start (then the model scores exactly like MaxSim until training moves the head)."""
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.interaction.head.weight.normal_(0.0, 0.02, generator=g)
            if self.interaction.late is not None:
                self.interaction.head.weight.zero_()
            self.interaction.head.bias.zero_()

    def _load_own(self, own: dict[str, torch.Tensor], strict_except: tuple[str, ...] = ()) -> None:
        expected = self.state_dict()
        missing = [k for k in expected if k not in own and not k.startswith(strict_except)]
        unexpected = [k for k in own if k not in expected]
        if missing or unexpected:
            raise ModelError(f"weights do not match the architecture: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for k, v in own.items():
            if v.shape != expected[k].shape:
                raise ModelError(f"weight {k}: shape {tuple(v.shape)} != expected {tuple(expected[k].shape)}")
        self.load_state_dict(own, strict=False)
