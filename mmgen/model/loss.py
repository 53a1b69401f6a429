"""Language-model losses, computed in float32 whatever the logits' dtype.

``lm_loss`` is cross-entropy averaged over non-ignored targets plus the
Chameleon z-loss ``weight · mean(logsumexp(logits)²)`` that keeps the
softmax normaliser near 1 (logit drift is what destabilised Chameleon
training). ``per_token_loss`` gives the unreduced cross-entropy so the trainer
can report text-token and image-token losses separately. With every target
ignored both return zeros instead of NaN.
"""

from __future__ import annotations

import torch


def _token_terms(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int):
    logits = logits.float()
    keep = targets != ignore_index
    safe_targets = torch.where(keep, targets, torch.zeros_like(targets))
    lse = torch.logsumexp(logits, dim=-1)
    target_logit = logits.gather(-1, safe_targets.unsqueeze(-1)).squeeze(-1)
    return lse, lse - target_logit, keep


def per_token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """logits [..., V], targets [...] -> float32 cross-entropy [...] (0 where ignored)."""
    _, ce, keep = _token_terms(logits, targets, ignore_index)
    return torch.where(keep, ce, torch.zeros_like(ce))


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    ignore_index: int = -100,
    z_loss_weight: float = 0.0,
) -> torch.Tensor:
    """Mean cross-entropy over non-ignored targets + z_loss_weight · mean(logsumexp²)."""
    lse, ce, keep = _token_terms(logits, targets, ignore_index)
    count = keep.sum().clamp(min=1)
    zero = torch.zeros_like(ce)
    loss = torch.where(keep, ce, zero).sum() / count
    if z_loss_weight:
        loss = loss + z_loss_weight * torch.where(keep, lse.square(), zero).sum() / count
    return loss
