"""The early-fusion decoder: one Llama-2-style transformer over text and image tokens.

Chameleon's recipe: RMSNorm, SwiGLU, RoPE, no biases, untied output head,
QK-norm, and a choice of norm placement ('pre', or the 'swin' reordering of
Chameleon-34B). ``layers`` is an ``nn.ModuleDict`` of ``TransformerBlock`` so
torchtitan's FSDP2 and activation checkpointing can wrap each block.

The model owns no buffers (RoPE is computed from positions), so it can be
built on the meta device, moved with ``to_empty`` and filled by
``init_weights``. ``forward`` has two modes:
- training/scoring: ``forward(tokens, document_ids=..., positions=...)``;
- cached generation: ``setup_cache`` once, then ``forward(tokens,
  input_pos=...)`` with per-sequence cache slots (see kv_cache.py).
With ``return_hidden=True`` (what pretraining uses) it stops before the
output head and returns ``HiddenStates``, so the loss can fuse the head
matmul with the cross-entropy (``mmgen.model.loss.head_nll_and_logsumexp``)
instead of materialising float32 work on the full [tokens, vocab] logits.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from mmgen.config.schema import ModelConfig
from mmgen.model.attention import Attention
from mmgen.model.kv_cache import KVCache
from mmgen.model.masks import (
    PackedDocuments,
    cache_causal_mask,
    document_causal_mask,
    flex_block_mask,
    positions_from_document_ids,
)
from mmgen.model.norms import RMSNorm
from mmgen.model.rope import rope_rotation


class DecodeCache(NamedTuple):
    """What ``Transformer.setup_cache`` installs: each layer's KV cache and fused projection weights, and the
    slots' tokens of the grid embedding. ``install_cache`` puts these very tensors back, for a compiled graph
    that holds them by identity (inductor's freezing: mmgen/generation/frozen.py)."""

    layers: tuple[tuple[KVCache, torch.Tensor | None, torch.Tensor | None], ...]
    """Per block: (KV cache, fused q/k/v weight, fused gate/up weight)."""
    slot_tokens: torch.Tensor | None


class HiddenStates(NamedTuple):
    """What ``forward(..., return_hidden=True)`` returns instead of logits: logits = hidden @ head_weight.T."""

    hidden: torch.Tensor
    """[B, T, dim], after the final norm."""
    head_weight: torch.Tensor
    """[V, dim]: the output head's weight as this forward pass used it (under FSDP2, the gathered one)."""


def with_image_layout(cfg: ModelConfig, vocab) -> ModelConfig:
    """``cfg`` with the BOI id and code grid of ``vocab`` (a ``Vocab``) that ``image_grid_embedding`` needs; as it is
    when the embedding is off."""
    if not cfg.image_grid_embedding:
        return cfg
    return dataclasses.replace(cfg, image_layout=(vocab.boi, *vocab.grid))


def ffn_hidden_dim(cfg: ModelConfig) -> int:
    """SwiGLU width: cfg.ffn_hidden_dim, or 8/3·dim rounded up to a multiple of 64."""
    if cfg.ffn_hidden_dim:
        return cfg.ffn_hidden_dim
    return 64 * math.ceil(int(8 * cfg.dim / 3) / 64)


class FeedForward(nn.Module):
    def __init__(self, *, dim: int, hidden_dim: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden_dim, bias=False)  # gate
        self.w3 = nn.Linear(dim, hidden_dim, bias=False)  # up
        self.w2 = nn.Linear(hidden_dim, dim, bias=False)  # down
        self.fused_w13: torch.Tensor | None = None

    def fuse_projections(self, on: bool) -> None:
        """As ``Attention.fuse_projections``, for the gate and up projections (used by every forward while on)."""
        plain = type(self.w1) is nn.Linear and type(self.w3) is nn.Linear
        with torch.no_grad():
            self.fused_w13 = torch.cat([self.w1.weight, self.w3.weight]) if on and plain else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused_w13 is not None:
            gate, up = F.linear(x, self.fused_w13).chunk(2, dim=-1)
            return self.w2(F.silu(gate) * up)
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class TransformerBlock(nn.Module):
    """'pre': h = x + attn(norm(x)); out = h + ffn(norm(h)).
    'swin': h = x + norm(attn(x)); out = h + norm(ffn(h))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.norm_placement not in ("pre", "swin"):
            raise ValueError(f"norm_placement must be 'pre' or 'swin', got {cfg.norm_placement!r}")
        self.swin = cfg.norm_placement == "swin"
        self.attention = Attention(
            dim=cfg.dim,
            n_heads=cfg.n_heads,
            n_kv_heads=cfg.n_kv_heads or cfg.n_heads,
            qk_norm=cfg.qk_norm,
            norm_eps=cfg.qk_norm_eps,
            dropout=cfg.dropout if cfg.attention_dropout is None else cfg.attention_dropout,
        )
        self.feed_forward = FeedForward(dim=cfg.dim, hidden_dim=ffn_hidden_dim(cfg))
        self.attention_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x, rotation, mask=None, input_pos=None):
        if self.swin:
            h = x + self.dropout(self.attention_norm(self.attention(x, rotation, mask, input_pos)))
            return h + self.dropout(self.ffn_norm(self.feed_forward(h)))
        h = x + self.dropout(self.attention(self.attention_norm(x), rotation, mask, input_pos))
        return h + self.dropout(self.feed_forward(self.ffn_norm(h)))


def _one_document_per_row(document_ids: torch.Tensor) -> bool:
    """True when no row is packed from several documents, so plain causal attention is the document mask.

    Checked on CPU only, where reading the ids costs no device synchronisation:
    the causal kernels then run without building and applying a [B, 1, T, T] mask.
    """
    if document_ids.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return bool((document_ids == document_ids[:, :1]).all())


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        if cfg.attention_backend not in ("sdpa", "flex"):
            raise ValueError(f"attention_backend must be 'sdpa' or 'flex', got {cfg.attention_backend!r}")
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.head_dim = cfg.dim // cfg.n_heads
        self.tok_embeddings = nn.Embedding(vocab_size, cfg.dim)
        self.layers = nn.ModuleDict({str(i): TransformerBlock(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.dim, eps=cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, vocab_size, bias=False)
        if cfg.image_grid_embedding:
            _, rows, cols = cfg.image_layout
            if rows <= 0 or cols <= 0:
                raise ValueError("model.image_grid_embedding needs model.image_layout (BOI id, rows, columns), which the "
                                 "trainer sets from the run's vocabulary")
            self.image_rows = nn.Embedding(rows, cfg.dim)
            self.image_cols = nn.Embedding(cols, cfg.dim)
        # the token written at each KV-cache slot, while a cache is set up and the grid embedding is on: a decode
        # step needs the slot of its image's BOI, which an earlier call wrote
        self.slot_tokens: torch.Tensor | None = None
        self._tie()

    def _tie(self) -> None:
        # to_empty() from meta replaces each module's parameters separately, which unties them;
        # init_weights calls this again.
        if self.cfg.tie_embeddings and self.output.weight is not self.tok_embeddings.weight:
            self.output.weight = self.tok_embeddings.weight

    # ----- initialisation -----

    @torch.no_grad()
    def init_weights(self, buffer_device: torch.device | None = None, *, seed: int | None = None) -> None:
        """(Re)initialise every parameter from torch's RNG (or from ``seed`` without touching it).

        Works after ``to_empty`` from the meta device and on FSDP-sharded DTensor
        parameters. ``buffer_device`` is accepted for torchtitan's call signature;
        the model has no buffers (KV caches are made by ``setup_cache``).
        """
        del buffer_device
        if seed is not None:
            device = self.tok_embeddings.weight.device
            devices = [device] if device.type not in ("cpu", "meta") else []
            with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
                torch.manual_seed(seed)
                self.init_weights()
            return
        self._tie()
        std = self.cfg.init_std
        out_std = std / math.sqrt(2 * self.cfg.n_layers)
        nn.init.normal_(self.tok_embeddings.weight, std=std)
        for block in self.layers.values():
            attn, ffn = block.attention, block.feed_forward
            for linear in (attn.wq, attn.wk, attn.wv, ffn.w1, ffn.w3):
                nn.init.normal_(linear.weight, std=std)
            for linear in (attn.wo, ffn.w2):
                nn.init.normal_(linear.weight, std=out_std)
            for norm in (block.attention_norm, block.ffn_norm, attn.q_norm, attn.k_norm):
                if norm is not None:
                    norm.reset_parameters()
        self.norm.reset_parameters()
        if self.cfg.image_grid_embedding:
            nn.init.normal_(self.image_rows.weight, std=std)
            nn.init.normal_(self.image_cols.weight, std=std)
        if not self.cfg.tie_embeddings:
            nn.init.normal_(self.output.weight, std=std)

    # ----- forward -----

    def forward(
        self,
        tokens: torch.Tensor,
        *,
        document_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        input_pos: torch.Tensor | None = None,
        cache_span: int | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | HiddenStates:
        """tokens [B, T] -> logits [B, T, V] in the compute dtype.

        document_ids [B, T]: packed documents; attention stays inside each and
        positions restart per document unless ``positions`` is given.
        input_pos [B, T] or [T]: KV-cache slots to write (cached generation);
        positions default to the slots. cache_span: attention reads only the
        cache's first ``cache_span`` slots (None: all), which must hold every
        slot written so far and in this call: a decode loop reads what it has
        written, not the whole cache (unchecked: checking would sync the host).
        return_hidden: return ``HiddenStates`` (final-norm output and head
        weight) instead of logits, for a loss that applies the head itself.
        """
        B, T = tokens.shape
        if input_pos is not None:
            if document_ids is not None:
                raise ValueError("document_ids cannot be combined with the KV cache")
            input_pos = input_pos.expand(B, T) if input_pos.dim() == 1 else input_pos
            cache_span = min(cache_span or self._cache_len(), self._cache_len())
            mask = cache_causal_mask(input_pos, cache_span)
            if positions is None:
                positions = input_pos
        else:
            mask = self._training_mask(document_ids, B, T, tokens.device)
            if positions is None:
                if document_ids is not None:
                    positions = positions_from_document_ids(document_ids)
                else:
                    positions = torch.arange(T, device=tokens.device).expand(B, T)
        rotation = rope_rotation(positions, self.head_dim, self.cfg.rope_theta)
        h = self.tok_embeddings(tokens)
        if self.cfg.image_grid_embedding:
            h = h + self._grid_embedding(tokens, positions, input_pos, cache_span)
        for block in self.layers.values():
            h = block(h, rotation, mask, input_pos)
        h = self.norm(h)
        if return_hidden:
            return HiddenStates(h, self.output.weight)
        return self.output(h)

    def _grid_embedding(self, tokens: torch.Tensor, positions: torch.Tensor, input_pos: torch.Tensor | None,
                        cache_span: int | None = None) -> torch.Tensor:
        """Row plus column embedding of each image code's cell in its grid (codes follow their BOI in row-major
        order); zero for every other token. A code's cell is its distance from the last BOI of its document.
        Cached: the BOI is looked for in the first ``cache_span`` slots written (``forward``'s)."""
        boi, rows, cols = self.cfg.image_layout
        B, T = tokens.shape
        if input_pos is None:
            written, slots = tokens, torch.arange(T, device=tokens.device).expand(B, T)
        else:
            if self.slot_tokens is None:
                raise RuntimeError("input_pos given but no KV cache: call model.setup_cache first")
            self.slot_tokens[torch.arange(B, device=tokens.device)[:, None], input_pos] = tokens
            # the causal rule of the KV cache: every slot up to a query's was written by this sequence, so a running
            # maximum over the row never reads a stale slot
            written, slots = self.slot_tokens[:B, :cache_span], input_pos
        order = torch.arange(written.shape[1], device=tokens.device)
        last_boi = torch.where(written == boi, order, -1).cummax(dim=1).values.gather(1, slots)
        # positions restart with each packed document, so slots - positions is where the document starts
        last_boi = torch.where(last_boi >= slots - positions, last_boi, -1)
        cell = slots - last_boi - 1
        inside = (last_boi >= 0) & (cell >= 0) & (cell < rows * cols)
        cell = cell.clamp(0, rows * cols - 1)
        grid = self.image_rows(cell // cols) + self.image_cols(cell % cols)
        return grid * inside[..., None].to(grid.dtype)

    def _training_mask(self, document_ids, B, T, device):
        if self.cfg.attention_backend == "flex":
            return flex_block_mask(document_ids, B, T, device)
        if document_ids is None or _one_document_per_row(document_ids):
            return None
        # On CPU, attention per document costs ΣL² instead of the row's T² (PackedDocuments). Not where the
        # model or its blocks are compiled: they trace one static shape, and the buckets change with every batch.
        compiled = torch.compiler.is_compiling() or any(hasattr(block, "_orig_mod") for block in self.layers.values())
        if device.type == "cpu" and not compiled:
            return PackedDocuments(document_ids)
        return document_causal_mask(document_ids)

    # ----- KV cache -----

    def setup_cache(
        self,
        batch_size: int,
        max_seq_len: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> DecodeCache:
        """Allocate a static KV cache per layer (dtype/device default to the parameters'), and fuse the
        projections that take the same input into one matmul each until ``clear_cache`` (the weights must
        not change in between). Returns what it installed."""
        weight = self.tok_embeddings.weight
        for block in self.layers.values():
            attn = block.attention
            attn.fuse_projections(True)
            block.feed_forward.fuse_projections(True)
            attn.kv_cache = KVCache(
                batch_size=batch_size,
                max_seq_len=max_seq_len,
                n_kv_heads=attn.n_kv_heads,
                head_dim=attn.head_dim,
                dtype=dtype or weight.dtype,
                device=device or weight.device,
            )
        if self.cfg.image_grid_embedding:
            self.slot_tokens = torch.full((batch_size, max_seq_len), -1, dtype=torch.long, device=device or weight.device)
        return DecodeCache(tuple((block.attention.kv_cache, block.attention.fused_qkv, block.feed_forward.fused_w13)
                                 for block in self.layers.values()), self.slot_tokens)

    def install_cache(self, cache: DecodeCache) -> None:
        """Install again what an earlier ``setup_cache`` of this model returned, until ``clear_cache``. The fused
        weights are copies made then: the weights must not have changed since. Stale slots need no clearing: a
        query reads only slots its own sequence has written (kv_cache.py)."""
        for block, (kv_cache, fused_qkv, fused_w13) in zip(self.layers.values(), cache.layers, strict=True):
            block.attention.kv_cache = kv_cache
            block.attention.fused_qkv = fused_qkv
            block.feed_forward.fused_w13 = fused_w13
        self.slot_tokens = cache.slot_tokens

    def clear_cache(self) -> None:
        self.slot_tokens = None
        for block in self.layers.values():
            block.attention.kv_cache = None
            block.attention.fuse_projections(False)
            block.feed_forward.fuse_projections(False)

    def _cache_len(self) -> int:
        cache = next(iter(self.layers.values())).attention.kv_cache
        if cache is None:
            raise RuntimeError("input_pos given but no KV cache: call model.setup_cache first")
        return cache.max_seq_len

    # ----- accounting -----

    def num_params(self, *, exclude_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embedding and not self.cfg.tie_embeddings:
            n -= self.tok_embeddings.weight.numel()
        if exclude_embedding and self.cfg.image_grid_embedding:
            n -= self.image_rows.weight.numel() + self.image_cols.weight.numel()
        return n

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token, torchtitan's convention: 6·(non-embedding params) + 12·layers·dim·seq_len."""
        return 6 * self.num_params(exclude_embedding=True) + 12 * self.cfg.n_layers * self.cfg.dim * seq_len
