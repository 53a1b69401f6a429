"""Attention masks and RoPE positions for packed sequences.

A packed row holds several documents, labelled by ``document_ids`` [B, T]
(equal ids on contiguous spans). Attention is block-diagonal causal: a token
sees earlier tokens of its own document only. Positions restart at 0 on each
document. Everything is vectorised (no Python loop over tokens), so it works
under torch.compile and on any device.
"""

from __future__ import annotations

import torch


def positions_from_document_ids(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] document ids -> [B, T] position of each token inside its document."""
    T = document_ids.shape[1]
    index = torch.arange(T, device=document_ids.device).expand_as(document_ids)
    starts = torch.ones_like(document_ids, dtype=torch.bool)
    starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
    # The start index of the current document is the running max of start indices.
    doc_start = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    return index - doc_start


def document_causal_mask(document_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] document ids -> boolean SDPA mask [B, 1, T, T] (True = may attend)."""
    T = document_ids.shape[1]
    same_doc = document_ids[:, :, None] == document_ids[:, None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=document_ids.device).tril()
    return (same_doc & causal)[:, None]


def cache_causal_mask(input_pos: torch.Tensor, cache_len: int) -> torch.Tensor:
    """[B, t] cache slots being written -> [B, 1, t, cache_len] mask over the whole cache.

    A query at slot p sees slots 0..p. Slots past p may hold stale or padding
    entries (see kv_cache.py) and are never seen.
    """
    slots = torch.arange(cache_len, device=input_pos.device)
    return (slots[None, None, :] <= input_pos[:, :, None])[:, None]


def flex_block_mask(document_ids: torch.Tensor | None, batch_size: int, seq_len: int, device: torch.device):
    """FlexAttention BlockMask for causal (optionally same-document) attention. GPU use."""
    from torch.nn.attention.flex_attention import create_block_mask

    if document_ids is None:

        def causal(b, h, q_idx, kv_idx):
            return q_idx >= kv_idx

        return create_block_mask(causal, None, None, seq_len, seq_len, device=device)

    def document_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (document_ids[b, q_idx] == document_ids[b, kv_idx])

    return create_block_mask(document_causal, batch_size, None, seq_len, seq_len, device=device)


class PackedDocuments:
    """Where the documents of packed rows lie, so attention can run on each document alone (CPU training).

    A document mask over a packed row of T tokens makes SDPA's CPU kernel score all T² pairs (it skips
    no masked block), while a row of documents of length L needs only their ΣL²/2. So the documents are
    gathered into buckets of equal padded length (lengths rounded up to ``granule``), each bucket runs
    plain causal attention, and the outputs are gathered back. Padding goes at the end of a document
    and may be any token (here: whatever follows it): causal attention never lets a real query see a
    later key, the padded outputs are dropped, and so their gradients are zero.
    """

    def __init__(self, document_ids: torch.Tensor, granule: int = 32):
        B, T = document_ids.shape
        self.document_ids = document_ids
        starts = torch.ones(B, T, dtype=torch.bool, device=document_ids.device)
        starts[:, 1:] = document_ids[:, 1:] != document_ids[:, :-1]
        first = starts.flatten().nonzero().squeeze(1)  # flat index of each document's first token
        lengths = torch.diff(first, append=first.new_tensor([B * T]))
        padded = (lengths + granule - 1) // granule * granule
        self.buckets: list[tuple[int, torch.Tensor]] = []  # (padded length, flat token indices [n · length])
        inverse = torch.empty(B * T, dtype=torch.long, device=document_ids.device)
        offset = 0
        for length in padded.unique().tolist():
            chosen = padded == length
            steps = torch.arange(length, device=document_ids.device)
            index = first[chosen][:, None] + steps
            real = steps < lengths[chosen][:, None]
            slots = offset + torch.arange(index.numel(), device=document_ids.device).view_as(index)
            inverse[index[real]] = slots[real]
            self.buckets.append((length, index.clamp_(max=B * T - 1).flatten()))
            offset += index.numel()
        self.inverse = inverse
        """For each token of the rows, flattened, its place in the buckets' outputs concatenated."""

    def dense(self) -> torch.Tensor:
        """The same attention as a boolean SDPA mask [B, 1, T, T]."""
        return document_causal_mask(self.document_ids)
