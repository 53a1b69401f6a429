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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.model.kv_cache import KVCache
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

    def forward(
        self,
        x: torch.Tensor,
        rotation: torch.Tensor,
        mask=None,
        input_pos: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, rotation, x.dtype), apply_rope(k, rotation, x.dtype)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if input_pos is not None:
            if self.kv_cache is None:
                raise RuntimeError("input_pos given but no KV cache: call model.setup_cache first")
            k, v = self.kv_cache.update(input_pos, k, v)
            q = q.to(k.dtype)
        gqa = self.n_kv_heads != self.n_heads
        if mask is None or isinstance(mask, torch.Tensor):
            out = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                is_causal=mask is None,
                dropout_p=self.dropout if self.training else 0.0,
                enable_gqa=gqa,
            )
        else:
            out = _flex_attention(q, k, v, mask, gqa)
        out = out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim).to(x.dtype)
        return self.wo(out)
