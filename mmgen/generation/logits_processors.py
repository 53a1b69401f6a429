"""Logits processors for sampling: modality masks, temperature, top-k, top-p.

Everything is batched tensor code without host synchronisation: the modality
state of every sequence is a tensor, and the allowed-token mask of each state
is one row of a precomputed additive table (0 or -inf) picked by indexing.
"""

from __future__ import annotations

import torch

# Modality states of a sequence during sampling (rows of modality_mask_table).
TEXT = 0  # text pieces and EOS
TEXT_OR_IMAGE = 1  # text pieces, EOS and BOI (an image still fits)
IMAGE = 2  # image codes only
END_IMAGE = 3  # EOI only (h·w codes emitted)
BEGIN_IMAGE = 4  # BOI only (force_image, first step)
DONE = 5  # finished; PAD only so the row stays finite
NUM_STATES = 6


def modality_mask_table(vocab, device: torch.device | str | None = None) -> torch.Tensor:
    """[NUM_STATES, V] float32 additive masks (0 allowed, -inf forbidden)."""
    allowed = torch.zeros(NUM_STATES, vocab.size, dtype=torch.bool)
    text = slice(*vocab.text_range)
    allowed[TEXT, text] = True
    allowed[TEXT, vocab.eos] = True
    allowed[TEXT_OR_IMAGE] = allowed[TEXT]
    allowed[TEXT_OR_IMAGE, vocab.boi] = True
    allowed[IMAGE, slice(*vocab.image_range)] = True
    allowed[END_IMAGE, vocab.eoi] = True
    allowed[BEGIN_IMAGE, vocab.boi] = True
    allowed[DONE, vocab.pad] = True
    table = torch.zeros(NUM_STATES, vocab.size)
    table[~allowed] = float("-inf")
    return table.to(device)


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches p."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop a token when the mass before it already reaches p (the top token always stays).
    drop_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def draw(
    logits: torch.Tensor,
    *,
    temperature: float,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """logits [B, V] float32 (already masked) -> token ids [B]; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    probs = logits.softmax(dim=-1)
    # Exponential-race sampling (argmax p/E, E ~ Exp(1)) equals multinomial sampling without a host sync.
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=-1)
