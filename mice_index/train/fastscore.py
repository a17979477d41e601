"""Training/evaluation forward of the interaction stack without its dead computations.

In MICE the [CLS] never cross-attends and reads the document only through query tokens of the
*next* layer, so in the last interaction layer nothing but the [CLS] row reaches the score: the
last layer's cross-attention and its query-token rows have no effect on the output (and get zero
gradient). `interaction_scores` computes only what reaches the score — the same function as
`Interaction.forward`, checked in tests — which saves one of n cross-attention passes over the
document tokens (a third of the document-side work at n = 3).
"""

from __future__ import annotations

import torch

from mice_index.model import key_padding_mask, query_self_mask


def interaction_scores(model, q: torch.Tensor, q_mask: torch.Tensor, docs: torch.Tensor,
                       d_mask: torch.Tensor) -> torch.Tensor:
    """Scores [B] of query states q [B,Tq,D] against document states docs [B,Td,D]."""
    inter = model.interaction
    self_mask, cross_mask = query_self_mask(q_mask, q.dtype), key_padding_mask(d_mask, q.dtype)
    docs = docs.to(q.dtype)
    *full, last = inter.layers
    for layer in full:
        q = layer(q, self_mask, docs, cross_mask)
    cls = last.ffn(last.self_attn(q[:, :1], q, self_mask[:, :, :1, :]))[:, 0]
    if inter.pooler is not None:
        cls = torch.tanh(inter.pooler(cls))
    return inter.head(inter.dropout(cls)).squeeze(-1)
