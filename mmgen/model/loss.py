"""Language-model losses, computed in float32 whatever the logits' dtype.

``per_token_loss`` gives the unreduced cross-entropy (zeros where targets
are ignored) for scoring. Training (``mmgen.train.components.ModalityLoss``)
adds Chameleon's z-loss ``weight · logsumexp(logits)²`` per token, which keeps
the softmax normaliser near 1 (logit drift is what destabilised Chameleon
training), and reports text-token and image-token losses separately.

Both, on logits, go through ``nll_and_logsumexp``, a fused autograd function: it keeps
the logits in their own dtype, upcasts one block of rows at a time (sized to
stay in the CPU cache), and writes the gradient ``softmax·(g_nll + g_lse) −
onehot·g_nll`` in one pass per block. With Chameleon's 65,536-id vocabulary
that is 4x cheaper on CPU than logsumexp + gather in autograd, and saves no
float32 copy of the logits for backward.

Training goes one step further with ``head_nll_and_logsumexp``, which takes
the final hidden states and the output head's weight instead of logits: the
head matmul, the loss and its gradient live in one autograd function. Its
forward pass turns the logits buffer, block by block, into the exponentials
``exp(logit − rowmax)`` that both the logsumexp and the gradient need, so
the exponential is computed once per logit instead of twice, and its
backward pass scales that same buffer into the gradient of the logits in
place, in one pass, before the two gradient matmuls. One [tokens, vocab]
buffer is allocated per step instead of two (logits, then their gradient).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _row_block(logits: torch.Tensor) -> int:
    # CPU: 8 MB of float32 rows at a time stays in cache; elsewhere blocks only bound the temporary memory.
    budget = 2**23 if logits.device.type == "cpu" else 2**30
    return max(1, budget // (4 * logits.shape[-1]))


class _NllAndLogsumexp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor):
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        block = _row_block(logits)
        for start in range(0, logits.shape[0], block):
            lse[start : start + block] = torch.logsumexp(logits[start : start + block].float(), dim=-1)
        nll = lse - logits.gather(-1, targets[:, None]).squeeze(-1).float()
        ctx.save_for_backward(logits, targets, lse)
        return nll, lse

    @staticmethod
    def backward(ctx, g_nll: torch.Tensor, g_lse: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        scale = (g_nll + g_lse)[:, None]
        block = _row_block(logits)
        for start in range(0, logits.shape[0], block):
            end = start + block
            # a copy even of float32 logits (.float() would return them and the in-place ops overwrite the input)
            g = logits[start:end].to(torch.float32, copy=True).sub_(lse[start:end, None]).exp_().mul_(scale[start:end])
            g.scatter_add_(1, targets[start:end, None], -g_nll[start:end, None])
            grad[start:end] = g
        return grad, None


def nll_and_logsumexp(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [..., V] (any dtype), valid targets [...] -> float32 (−log p(target), logsumexp(logits)), each [...]."""
    shape = targets.shape
    nll, lse = _NllAndLogsumexp.apply(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return nll.view(shape), lse.view(shape)


class _HeadNllAndLogsumexp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
        # the very logits the unfused path computes (same kernel), then overwritten block by block
        buf = F.linear(hidden, weight)
        target_logit = buf.gather(-1, targets[:, None]).squeeze(-1).float()
        lse = torch.empty(buf.shape[0], dtype=torch.float32, device=buf.device)
        inv_total = torch.empty_like(lse)
        block = _row_block(buf)
        scratch = torch.empty(min(block, buf.shape[0]), buf.shape[1], dtype=torch.float32, device=buf.device)
        for start in range(0, buf.shape[0], block):
            rows = buf[start : start + block]
            x = scratch[: rows.shape[0]].copy_(rows)
            top = x.amax(-1, keepdim=True)
            total = x.sub_(top).exp_().sum(-1)
            lse[start : start + block] = top.squeeze(-1) + total.log()
            inv_total[start : start + block] = total.reciprocal()
            rows.copy_(x)  # exp(logit − rowmax): softmax = rows · inv_total
        nll = lse - target_logit
        ctx.save_for_backward(hidden, weight, targets, buf, inv_total, nll)
        return nll, lse

    @staticmethod
    def backward(ctx, g_nll: torch.Tensor, g_lse: torch.Tensor):
        if getattr(ctx, "consumed", False):
            raise RuntimeError("head_nll_and_logsumexp: backward ran twice (its buffer becomes the gradient in place)")
        ctx.consumed = True
        hidden, weight, targets, buf, inv_total, nll = ctx.saved_tensors
        # d/dlogits = softmax·(g_nll + g_lse) − onehot(target)·g_nll, written over the exponentials block by
        # block (a bf16 tensor times a float32 factor in one call goes through full-size float32 copies)
        scale = g_nll + g_lse
        factor = (scale * inv_total)[:, None]
        grad = buf
        block = _row_block(buf)
        scratch = torch.empty(min(block, buf.shape[0]), buf.shape[1], dtype=torch.float32, device=buf.device)
        for start in range(0, buf.shape[0], block):
            rows = buf[start : start + block]
            rows.copy_(scratch[: rows.shape[0]].copy_(rows).mul_(factor[start : start + block]))
        # at the target the two terms nearly cancel when p(target) → 1: form it from the float32 nll instead
        at_target = torch.exp(-nll) * scale - g_nll
        # (index_put_, not scatter_: on CPU, scatter_ into a bf16 tensor copies the whole tensor twice)
        grad.index_put_((torch.arange(grad.shape[0], device=grad.device), targets), at_target.to(grad.dtype))
        grad_hidden = grad @ weight if ctx.needs_input_grad[0] else None
        grad_weight = grad.t() @ hidden if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None


def head_nll_and_logsumexp(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``nll_and_logsumexp(F.linear(hidden, weight), targets)`` with the head matmul fused in.

    hidden [..., D] (final normalised hidden states), weight [V, D] (the
    output head), valid targets [...] -> float32 (−log p(target),
    logsumexp(logits)), each [...]. Gradients flow to hidden and weight.
    """
    shape = targets.shape
    nll, lse = _HeadNllAndLogsumexp.apply(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1))
    return nll.view(shape), lse.view(shape)


def per_token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """logits [..., V], targets [...] -> float32 cross-entropy [...] (0 where ignored)."""
    keep = targets != ignore_index
    ce, _ = nll_and_logsumexp(logits, torch.where(keep, targets, torch.zeros_like(targets)))
    return torch.where(keep, ce, torch.zeros_like(ce))
