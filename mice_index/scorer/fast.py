"""Inference path of the MICE interaction for re-ranking: equal to `Interaction.forward`, cheaper.

`Interaction.forward` (model.py) is the reference and the training path; this module rewrites it,
exactly, for many (query, document) pairs at inference time:

1. Query-only work once per query. The first interaction layer's query self-attention and its
   cross-attention queries depend on the query alone, so they are computed per query and shared
   by all of that query's candidates instead of being repeated per pair.
2. Absorbed cross-attention. Projecting every document token to keys and values costs 2·D²
   multiply-adds per token and layer. Folding the query into the key projection,
   q_h·(W_k,h d + b_k,h) = (W_k,hᵀ q_h)·d + const, and applying the value projection after the
   attention average, Σ_j a_j (W_v,h d_j + b_v,h) = W_v,h (Σ_j a_j d_j) + b_v,h, costs 2·H·Tq·D
   per document token instead: cheaper whenever H·Tq < D (12 heads, D=384: queries of up to 31
   tokens). The constant q_h·b_k,h is the same for every key of a row, so softmax cancels it; the
   value bias passes through unchanged because the weights sum to 1. Longer queries take the
   standard path.
3. The [CLS] row never cross-attends, so only the query-token rows go through cross-attention.
4. The "cls+maxsim" head's late-interaction term projects and weights each query's tokens once,
   then needs one [Tq,Td] product per pair. Its query rows join the first cross-attention's
   score product (one pass over the document states for both), and the documents' L2
   normalisation is applied to the [Td] products (q·d/|d|) instead of to the states.

tests/test_scorer.py checks both paths against `Interaction.forward`.

These rewrites hold for the paper's form (`MiceConfig.is_paper_form`). A model with the reference
code's layer options (cross-attention first, a [CLS] that reads the document, ModernBERT; README
"Using the authors' MICE models") is scored exactly by `Interaction.forward` on each pair instead:
its [CLS] depends on the document from the first layer on, so no query-side pass is shared
(BENCHMARKS.md, "Layer options", measures the cost).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mice_index.model import Attention, Interaction, LateInteraction, key_padding_mask, query_self_mask

__all__ = ["score_pairs"]

MAX_RUNS = 16  # more runs of pairs sharing a query than this: one batched product instead of a loop


def score_pairs(inter: Interaction, q: torch.Tensor, q_mask: torch.Tensor, pair_query: torch.Tensor,
                docs: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """Scores P pairs. q [Q,Tq,D] layer-ℓ* states of Q distinct queries (mask [Q,Tq]);
    pair_query [P] the query index of each pair (pairs of one query best kept contiguous: each run
    of equal indices is one matrix product); docs [P,Td,D] layer-ℓ* states (mask [P,Td]) -> [P]."""
    assert not inter.training, "the inference path has no dropout; use Interaction.forward to train"
    if not inter.config.is_paper_form:  # exact: the model's own forward pass, per pair
        finite = torch.isfinite(docs).flatten(1).all(1)
        s = inter(q[pair_query], q_mask[pair_query], docs.to(q.dtype), d_mask).float()
        return torch.where(finite, s, torch.nan)
    self_mask = query_self_mask(q_mask, q.dtype)  # [Q,1,Tq,Tq]
    keys_mask = key_padding_mask(d_mask, q.dtype)[:, 0, 0]  # [P,Td] additive
    docs = docs.to(q.dtype)
    late_q = inter.late.query(q, q_mask) if inter.late is not None else None  # ([Q,Tq,D], [Q,Tq])
    if len(inter.layers) == 1:  # the [CLS] of a single interaction layer never sees the document
        late = _late(late_q, pair_query, docs, d_mask, _products(docs, late_q[0], pair_query)) if late_q else 0.0
        return _score_cls(inter, q, self_mask)[pair_query] + late
    first, *middle = inter.layers[:-1]
    x = first.self_attn(q, q, self_mask)  # once per query
    x, extra, finite = _cross(first.cross_attn, x, pair_query, docs, keys_mask, late_q[0] if late_q else None)
    late = _late(late_q, pair_query, docs, d_mask, extra) if late_q else 0.0
    x = first.ffn(x)  # per pair from here
    pair_self_mask = self_mask[pair_query]
    every = torch.arange(len(pair_query), device=docs.device)
    for layer in middle:
        x = layer.self_attn(x, x, pair_self_mask)
        x = layer.ffn(_cross(layer.cross_attn, x, every, docs, keys_mask)[0])
    # a non-finite document state gives a NaN score (the scorer then names the damaged shard) even
    # where later kernels would not propagate it (dynamic int8 quantization clamps NaN to a number)
    return torch.where(finite, _score_cls(inter, x, pair_self_mask) + late, torch.nan)


def _score_cls(inter: Interaction, x: torch.Tensor, self_mask: torch.Tensor) -> torch.Tensor:
    """`Interaction.score_cls` with the pooler and head in fp32 whatever the compute dtype: a
    bf16 score has ~3 significant digits (scores near 10 fall on a 0.06 grid and tie)."""
    last = inter.layers[-1]
    cls = last.ffn(last.self_attn(x[:, :1], x, self_mask[:, :, :1, :]))[:, 0].float()
    if inter.pooler is not None:
        cls = torch.tanh(F.linear(cls, inter.pooler.weight.float(), inter.pooler.bias.float()))
    return F.linear(cls, inter.head.weight.float(), inter.head.bias.float()).squeeze(-1)


def _late(late_q: tuple[torch.Tensor, torch.Tensor], pair_query: torch.Tensor, docs: torch.Tensor,
          d_mask: torch.Tensor, products: torch.Tensor) -> torch.Tensor:
    """The late-interaction term for P pairs -> [P], from the query side (projected unit tokens
    [Q,Tq,D], weights [Q,Tq]) and `products` [P,Td,Tq] of document states with those tokens."""
    inv_norm = 1.0 / torch.linalg.vector_norm(docs, dim=-1).clamp_min(1e-12)  # as F.normalize
    sim = (products * inv_norm[:, :, None]).transpose(1, 2)  # [P,Tq,Td] cosines
    return LateInteraction.combine(sim.float(), late_q[1][pair_query].float(), d_mask)  # summed in fp32


def _products(docs: torch.Tensor, mats: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """docs [P,Td,D] times mats [Q,K,D] transposed, pair p with mats[rows[p]] -> [P,Td,K]: one
    large product per run of pairs sharing their query, or one batched product for many runs."""
    runs = _runs(rows)
    if len(runs) > MAX_RUNS:  # e.g. per-pair query rows (after the first layer)
        return torch.matmul(docs, mats[rows].transpose(1, 2))
    out = docs.new_empty((*docs.shape[:2], mats.shape[1]))
    for a, b, i in runs:
        torch.matmul(docs[a:b], mats[i].T, out=out[a:b])
    return out


def _cross(attn: Attention, x: torch.Tensor, rows: torch.Tensor, docs: torch.Tensor, keys_mask: torch.Tensor,
           extra: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Cross-attention sublayer for pairs: x [Q,Tq,D] (pair p reads x[rows[p]]) -> [P,Tq,D], the
    [CLS] row (position 0) unchanged; plus, for `extra` rows [Q,E,D], their products with the
    document states [P,Td,E] (computed in the same pass on the absorbed path), else None; plus
    bool [P]: the pair's attention output is finite (False if its document holds NaN / inf)."""
    P, Td, D = docs.shape
    H, Tq = attn.num_heads, x.shape[1] - 1
    tokens = x[:, 1:]  # the [CLS] takes no part in cross-attention
    if H * Tq >= D:  # long query: projecting the documents is cheaper
        crossed = attn(tokens[rows], docs, keys_mask[:, None, None, :])
        products = _products(docs, extra, rows) if extra is not None else None
        finite = torch.isfinite(docs).flatten(1).all(1)
    else:
        dh = D // H
        q = attn._heads(attn.query(tokens)) * dh ** -0.5  # [Q,H,Tq,dh]
        qk = torch.einsum("qhtd,hde->qhte", q, attn.key.weight.view(H, dh, D)).reshape(-1, H * Tq, D)
        scores = _products(docs, qk if extra is None else torch.cat([qk, extra], dim=1), rows)
        products = scores[..., H * Tq:] if extra is not None else None
        logits = scores[..., : H * Tq].add_(keys_mask[:, :, None])  # in place: `scores` is ours
        weights = torch.softmax(logits, dim=1)  # over document tokens
        avg = torch.matmul(weights.transpose(1, 2), docs).view(P, H, Tq, D)  # weighted document states
        ctx = torch.einsum("phtd,hed->pthe", avg, attn.value.weight.view(H, dh, D)).reshape(P, Tq, D)
        finite = torch.isfinite(ctx).flatten(1).all(1)  # NaN / inf states reach every row of ctx
        crossed = attn.norm(tokens[rows] + attn.out(ctx + attn.value.bias))
    return torch.cat([x[rows, :1], crossed], dim=1), products, finite


def _runs(rows: torch.Tensor) -> list[tuple[int, int, int]]:
    """(start, end, value) of each run of equal consecutive values."""
    values, counts = torch.unique_consecutive(rows, return_counts=True)
    ends = counts.cumsum(0).tolist()
    return [(e - c, e, v) for e, c, v in zip(ends, counts.tolist(), values.tolist())]
