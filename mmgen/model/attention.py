"""Multi-head attention with GQA, Chameleon QK-norm, RoPE and two kernels.

The mask argument decides the kernel, so one module serves training and
generation:
- ``None``: causal SDPA (``is_causal=True``), the unpacked training case;
- a boolean tensor [B, 1, T, S]: SDPA with that mask (packed documents, or
  the KV-cache decode mask);
- a FlexAttention ``BlockMask``: ``flex_attention`` (GPU; compiled on first
  use). FlexAttention has no attention-probability dropout, so
  ``dropout`` only acts on the residual branches with that backend.
QK-norm runs after the projections and before RoPE, as in Chameleon.

CPU training in bfloat16 at sequence lengths up to ``BLOCKED_MAX_SEQ_LEN``
(causal or document mask, no attention dropout) does not call SDPA: SDPA's
CPU flash kernel runs at a fraction of the bf16 matmul rate, and forward +
backward it takes ~2x the time of ``_BlockedCausalAttention`` below at
seq 512 / head_dim 64 (~80 vs ~35-45 ms for 8 x 4 heads, one thread), ~1.6x
at seq 1024. That kernel computes the same softmax attention with batched bf16
matmuls over query blocks, skipping the blocks above the diagonal, with
float32-accurate scores (see its docstring). Everything else (GPU, float32,
inference, the KV cache, longer sequences) goes through SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.model.kv_cache import KVCache
from mmgen.model.masks import PackedDocuments
from mmgen.model.norms import HeadLayerNorm
from mmgen.model.rope import apply_rope

_compiled_flex_attention = None


def _flex_attention(q, k, v, block_mask, enable_gqa):
    global _compiled_flex_attention
    if _compiled_flex_attention is None:
        from torch.nn.attention.flex_attention import flex_attention

        # Uncompiled flex_attention materialises the full score matrix; compiled it is a fused kernel.
        _compiled_flex_attention = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex_attention(q, k, v, block_mask=block_mask, enable_gqa=enable_gqa)


# Longest sequence for the blocked CPU kernel. It keeps the bf16 probabilities (~batch·heads·T²/2 values per
# layer) for backward instead of recomputing them: T/(2·head_dim) times one [B, T, dim] activation (4x at 512,
# head_dim 64), acceptable up to here; it was still faster than SDPA at 2048, but its memory grows with T².
BLOCKED_MAX_SEQ_LEN = 1024
_BLOCK = 128  # query/key block: big enough for efficient matmuls, small enough to skip most of the upper triangle


class _BlockedCausalAttention(torch.autograd.Function):
    """Causal softmax attention on [B, T, H, D] bf16 tensors from bf16 matmuls, forward and backward.

    The precision problem with a plain matmul formulation is that a bf16
    matmul rounds its output: bf16 scores lose 2^-9 of their magnitude, a
    large error for large logits, where SDPA's flash kernel keeps float32
    scores. Both places where that matters are fixed inside the matmul,
    whose accumulator is float32, with ``baddbmm``'s bias term:
    - scores: a first product gives each row's maximum m, the second
      computes ``scale·q·k − scale·m`` before rounding, so the entries that
      carry probability mass are near 0 and round with a small absolute
      error (softmax does not change under a per-row shift);
    - backward, ``dP − rowsum(dO·O)`` (the cancelling difference in the
      softmax gradient) is likewise formed in the accumulator; the shift is
      split into a bf16 part in the matmul and a bf16 remainder subtracted
      afterwards, so it is exact to float32 precision.
    Probabilities and dS are rounded to bf16 for the following matmuls, as
    the flash kernel does. Each query block's probabilities [BH, block, end]
    are kept for backward and then hold dS in place; dK and dV are summed
    over query blocks in float32.

    Layout: torch's CPU bmm copies any operand that is not compact (batch
    stride = matrix size) on every call, and writes strided outputs through
    a copy. So each block's operands are gathered once into compact
    [BH, rows, D] copies straight from the projections' [B, T, H, D] layout,
    and results are written back into that layout: no whole-tensor
    transposes before or after, forward or backward.
    """

    @staticmethod
    def forward(ctx, q, k, v, bias):
        B, T, H, D = q.shape
        scale = 1.0 / math.sqrt(D)
        if bias is None:
            upper = torch.ones(_BLOCK, _BLOCK, dtype=torch.bool, device=q.device).triu(1)
            bias = torch.zeros(_BLOCK, _BLOCK, dtype=q.dtype, device=q.device).masked_fill_(upper, float("-inf"))
        out = q.new_empty(B, T, H, D)
        probs = []
        for s, e in _blocks(T):
            qb, kp = _heads(q, s, e), _heads(k, 0, e)
            rough = torch.bmm(qb, kp.mT)
            _mask(rough, bias, s, e)
            shift = rough.amax(-1, keepdim=True).mul_(scale)
            p = torch.baddbmm(shift.expand(-1, -1, e), qb, kp.mT, beta=-1, alpha=scale)
            _mask(p, bias, s, e)
            torch.softmax(p, -1, out=p)
            out[:, s:e] = torch.bmm(p, _heads(v, 0, e)).view(B, H, e - s, D).transpose(1, 2)
            probs.append(p)
        ctx.save_for_backward(q, k, v, out, *probs)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, out, *probs = ctx.saved_tensors
        B, T, H, D = q.shape
        scale = 1.0 / math.sqrt(D)
        row = (grad_out.float() * out.float()).sum(-1, keepdim=True).mul_(scale)  # [B, T, H, 1]
        row_hi = row.to(q.dtype)
        row_lo = (row - row_hi.float()).to(q.dtype)
        dq = torch.empty_like(q)
        dk = torch.zeros(B, T, H, D, dtype=torch.float32, device=k.device)
        dv = torch.zeros(B, T, H, D, dtype=torch.float32, device=v.device)
        for (s, e), p in zip(_blocks(T), probs):
            g = _heads(grad_out, s, e)
            dv[:, :e] += torch.bmm(p.mT, g).view(B, H, e, D).transpose(1, 2)
            # dS = P·(dP − rowsum(dO·O))·scale, in place of P
            diff = torch.baddbmm(_heads(row_hi, s, e).expand(-1, -1, e), g, _heads(v, 0, e).mT, beta=-1, alpha=scale)
            p.mul_(diff.sub_(_heads(row_lo, s, e)))
            dq[:, s:e] = torch.bmm(p, _heads(k, 0, e)).view(B, H, e - s, D).transpose(1, 2)
            dk[:, :e] += torch.bmm(p.mT, _heads(q, s, e)).view(B, H, e, D).transpose(1, 2)
        return dq, dk.to(k.dtype), dv.to(v.dtype), None


def _blocks(T: int):
    return [(s, min(s + _BLOCK, T)) for s in range(0, T, _BLOCK)]


def _heads(x: torch.Tensor, s: int, e: int) -> torch.Tensor:
    """Rows s:e of x [B, T, H, D] as a compact [B·H, e − s, D] copy."""
    B, _, H, D = x.shape
    return x[:, s:e].transpose(1, 2).reshape(B * H, e - s, D)


def _mask(scores: torch.Tensor, bias: torch.Tensor, s: int, e: int) -> None:
    """Add −inf where query rows s:e may not attend: ``bias`` is the diagonal block's [block, block]
    triangle (causal) or the whole [B, 1, T, T] document mask as 0 / −inf.

    (Adding a bias is ~3x faster on CPU than masked_fill_ with a broadcast boolean mask.)
    """
    if bias.dim() == 2:
        scores[..., s:e].add_(bias[: e - s, : e - s])
    else:
        scores.view(bias.shape[0], -1, e - s, e).add_(bias[:, :, s:e, :e])


def _use_blocked(q: torch.Tensor, mask, dropout: float) -> bool:
    """q [B, T, H, D]: whether this attention call runs the blocked kernel (see the module docstring)."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and q.requires_grad
        and torch.is_grad_enabled()
        and dropout == 0.0
        and (mask is None or (isinstance(mask, torch.Tensor) and mask.dtype == torch.bool))
        and q.shape[1] <= BLOCKED_MAX_SEQ_LEN
    )


def blocked_causal_attention(q, k, v, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """q [B, T, H, D], k/v [B, T, Hkv, D] (bf16, CPU) -> [B, T, H, D]; causal, or ``allowed`` [B, 1, T, T] (bool).

    The layout is the projections' (heads second to last), not SDPA's.
    ``allowed`` must be causal (blocks above the diagonal are never computed)
    and let every query see at least one key, as document_causal_mask does.
    """
    H = q.shape[2]
    if k.shape[2] != H:  # grouped-query attention: each key/value head serves H/Hkv query heads
        k = k.repeat_interleave(H // k.shape[2], dim=2)
        v = v.repeat_interleave(H // v.shape[2], dim=2)
    bias = None
    if allowed is not None:
        if not torch.compiler.is_compiling() and allowed.triu(1).any():
            raise ValueError("blocked_causal_attention: the mask lets a query attend to a later key")
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
    return _BlockedCausalAttention.apply(q, k, v, bias)


def per_document_attention(q, k, v, docs: PackedDocuments, dropout: float) -> torch.Tensor:
    """q [B, T, H, D], k/v [B, T, Hkv, D] -> [B, T, H·D]: causal attention inside each document of ``docs``,
    one kernel call per bucket of equal padded length (see ``PackedDocuments``)."""
    B, T, H, D = q.shape
    q, k, v = (x.reshape(B * T, x.shape[2], D) for x in (q, k, v))
    outs = []
    for length, index in docs.buckets:
        qb, kb, vb = (x.index_select(0, index).view(-1, length, x.shape[1], D) for x in (q, k, v))
        if _use_blocked(qb, None, dropout):
            out = blocked_causal_attention(qb, kb, vb)
        else:
            out = F.scaled_dot_product_attention(
                qb.transpose(1, 2),
                kb.transpose(1, 2),
                vb.transpose(1, 2),
                is_causal=True,
                dropout_p=dropout,
                enable_gqa=kb.shape[2] != H,
            ).transpose(1, 2)
        outs.append(out.reshape(-1, H * D))
    return torch.cat(outs).index_select(0, docs.inverse).view(B, T, H * D)


CACHED_MATH_MAX_QUERIES = 16
"""Cached forwards of at most this many tokens per row (decode steps, Jacobi windows) take
``cached_math_attention`` on CPU."""


def _use_cached_math(q: torch.Tensor, mask) -> bool:
    """q [B, H, t, D] of a cached forward: whether it runs ``cached_math_attention``."""
    return q.device.type == "cpu" and q.shape[2] <= CACHED_MATH_MAX_QUERIES and isinstance(mask, torch.Tensor)


def cached_math_attention(q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """q [B, H, t, D] (a few new tokens), k/v [B, Hkv, L, D] (the whole KV cache), ``allowed`` [B, 1, t, L]
    (bool) -> [B, H, t, D]: attention written out as two batched products and a softmax.

    On CPU, SDPA's flash kernel sets up its query and key blocks on every call, which for one query token
    costs more than the arithmetic (a third of a compiled demo decode step at batch 8); written out, a
    compiled decode step fuses the products, the mask and the softmax into its own kernels
    (docs/BENCHMARKS.md, "decode on the AMX Xeon"). Query heads that share a key/value head (grouped-query
    attention) are stacked on the query axis, so the cache is never copied.
    """
    B, H, t, D = q.shape
    Hkv, L = k.shape[1], k.shape[2]
    grouped = q.reshape(B, Hkv, (H // Hkv) * t, D)
    scores = (grouped @ k.transpose(-1, -2)).float().view(B, Hkv, H // Hkv, t, L) * D**-0.5
    scores = scores.masked_fill(~allowed[:, :, None], float("-inf"))
    probs = scores.softmax(dim=-1).to(v.dtype).view(B, Hkv, (H // Hkv) * t, L)
    return (probs @ v).view(B, H, t, D)


class Attention(nn.Module):
    def __init__(
        self,
        *,
        dim: int,
        n_heads: int,
        n_kv_heads: int,
        qk_norm: bool,
        norm_eps: float,
        dropout: float = 0.0,
    ):
        """norm_eps: QK-norm epsilon; dropout: on attention probabilities, SDPA only."""
        super().__init__()
        if dim % n_heads or n_heads % n_kv_heads:
            raise ValueError(f"dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv_heads} do not divide")
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim // n_heads
        self.dropout = dropout
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.q_norm = HeadLayerNorm(n_heads, self.head_dim, eps=norm_eps) if qk_norm else None
        self.k_norm = HeadLayerNorm(n_kv_heads, self.head_dim, eps=norm_eps) if qk_norm else None
        self.kv_cache: KVCache | None = None
        self.fused_qkv: torch.Tensor | None = None

    def fuse_projections(self, on: bool) -> None:
        """With ``on``, cached forwards compute q, k and v with one matmul over a copy of the three weights
        (a small model's decode step is hundreds of tiny ops, and each saved op counts); off drops the copy. Projections
        that are not plain ``nn.Linear`` (LoRA adapters) stay separate."""
        plain = all(type(m) is nn.Linear for m in (self.wq, self.wk, self.wv))
        with torch.no_grad():
            self.fused_qkv = torch.cat([self.wq.weight, self.wk.weight, self.wv.weight]) if on and plain else None

    def _project(self, x: torch.Tensor, cached: bool):
        if cached and self.fused_qkv is not None:
            q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
            return F.linear(x, self.fused_qkv).split([q_dim, kv_dim, kv_dim], dim=-1)
        return self.wq(x), self.wk(x), self.wv(x)

    def forward(
        self,
        x: torch.Tensor,
        rotation: torch.Tensor,
        mask=None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self._project(x, input_pos is not None)
        q = q.view(B, T, self.n_heads, self.head_dim)
        k = k.view(B, T, self.n_kv_heads, self.head_dim)
        v = v.view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rotation, x.dtype), apply_rope(k, rotation, x.dtype)
        dropout = self.dropout if self.training else 0.0
        if isinstance(mask, PackedDocuments):
            if not torch.compiler.is_compiling():
                return self.wo(per_document_attention(q, k, v, mask, dropout))
            mask = mask.dense()  # a block compiled in place (Module.compile) traces one static shape
        if input_pos is None and _use_blocked(q, mask, dropout):
            return self.wo(blocked_causal_attention(q, k, v, mask).view(B, T, self.n_heads * self.head_dim))
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("input_pos given but no KV cache: call model.setup_cache first")
            # the cache mask's width is the slots this forward reads (Transformer.forward's cache_span)
            k, v = self.kv_cache.update(input_pos, k, v, None if mask is None else mask.shape[-1])
            q = q.to(k.dtype)
        gqa = self.n_kv_heads != self.n_heads
        if input_pos is not None and _use_cached_math(q, mask):
            out = cached_math_attention(q, k, v, mask)
        elif mask is None or isinstance(mask, torch.Tensor):
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None,
                dropout_p=dropout,
                enable_gqa=gqa,
            )
        else:
            out = _flex_attention(q, k, v, mask, gqa)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim).to(x.dtype)
        return self.wo(out)
