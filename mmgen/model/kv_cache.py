"""Static, preallocated KV cache (gpt-fast style).

One cache per attention layer, shape [B, n_kv_heads, max_seq_len, head_dim].
Every sequence of the batch owns its row and its own write positions
(``input_pos`` [B, t]), so a batch of prompts of different lengths is handled
by *right* padding: the prompts are prefilled together at slots 0..P-1, and
sequence b then decodes at slots len_b, len_b+1, ... overwriting its padding.
The causal mask over slots (a query at slot p sees slots <= p) never exposes a
padding or stale entry, because every slot <= p has been (re)written by a real
token of that sequence by the time the query at p runs. RoPE positions equal
the slot indices, so no per-sequence offsets or validity masks are needed.

Writes use index_put with tensor indices and the mask is built from tensors,
so a decode step has no host synchronisation and a fixed shape, which lets
torch.compile capture it.
"""

from __future__ import annotations

import torch
from torch import nn


class KVCache(nn.Module):
    def __init__(
        self,
        *,
        batch_size: int,
        max_seq_len: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        shape = (batch_size, n_kv_heads, max_seq_len, head_dim)
        # Non-persistent: caches never enter state dicts or checkpoints.
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        # the write's row and head indices, made once: a small model's decode step is hundreds of tiny ops, each counts
        self.register_buffer("rows", torch.arange(batch_size, device=device)[:, None, None], persistent=False)
        self.register_buffer("heads", torch.arange(n_kv_heads, device=device)[None, :, None], persistent=False)

    @property
    def max_seq_len(self) -> int:
        return self.k.shape[2]

    def update(
        self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor, span: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write k, v [B, H, t, D] at slots input_pos [B, t] (all below ``span``); return the cache's first
        ``span`` slots (None: all of them)."""
        slots = input_pos[:, None, :]
        self.k[self.rows[: k.shape[0]], self.heads, slots] = k.to(self.k.dtype)
        self.v[self.rows[: v.shape[0]], self.heads, slots] = v.to(self.v.dtype)
        return self.k[:, :, :span], self.v[:, :, :span]
