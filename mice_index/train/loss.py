"""Distillation losses over a candidate list per query.

Both take student scores and teacher scores of shape [B, L] (L documents per query; position 0 is
the positive / teacher's pick for MarginMSE) and an optional validity mask [B, L].

- MarginMSE (Hofstätter et al. 2020): mean over j>0 of ((s_0 - s_j) - (t_0 - t_j))^2. With L = 2
  this is exactly the (query, doc+, doc-) triplet loss of the paper.
- Listwise KL: KL(softmax(t / tau) || softmax(s)) per query, averaged over queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def margin_mse(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    s_margin = student[:, :1] - student[:, 1:]
    t_margin = teacher[:, :1] - teacher[:, 1:]
    err = (s_margin - t_margin) ** 2
    if mask is None:
        return err.mean()
    m = mask[:, 1:].to(err.dtype) * mask[:, :1].to(err.dtype)
    return (err * m).sum() / m.sum().clamp(min=1)


def listwise_kl(student: torch.Tensor, teacher: torch.Tensor, mask: torch.Tensor | None = None,
                temperature: float = 1.0) -> torch.Tensor:
    t = teacher / temperature
    if mask is not None:
        neg = torch.finfo(student.dtype).min
        student = student.masked_fill(~mask.bool(), neg)
        t = t.masked_fill(~mask.bool(), neg)
    log_p_student = F.log_softmax(student, dim=-1)
    p_teacher = F.softmax(t, dim=-1)
    log_p_teacher = F.log_softmax(t, dim=-1)
    kl = p_teacher * (log_p_teacher - log_p_student)
    if mask is not None:
        kl = kl.masked_fill(~mask.bool(), 0.0)
    return kl.sum(-1).mean()


def compute_loss(name: str, student, teacher, mask=None, temperature: float = 1.0) -> torch.Tensor:
    return LOSSES[name](student, teacher, mask, temperature)


LOSSES = {
    "marginmse": lambda s, t, m, tau: margin_mse(s, t, m),
    "kl": lambda s, t, m, tau: listwise_kl(s, t, m, tau),
}
