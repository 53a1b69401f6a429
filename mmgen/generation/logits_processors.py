"""Logits processors for sampling: modality masks, temperature, top-k, top-p,
repetition penalty, classifier-free guidance and contrastive decoding (CD-K).

Everything is batched tensor code without host synchronisation: the modality
state of every sequence is a tensor, and the allowed-token mask of each state
is one row of a precomputed additive table (0 or -inf) picked by indexing.

Guidance is written as ``cond + (s - 1)·(cond - uncond)`` rather than
``uncond + s·(cond - uncond)``: the two are equal, but only the first returns
``cond`` bit for bit at ``s = 1``, so guided sampling at scale 1 reproduces
unguided sampling exactly.
"""

from __future__ import annotations

import math

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
    """logits [..., V] float32 (already masked) -> token ids [...]; temperature 0 is greedy."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    return race(sampling_probs(logits, temperature=temperature, top_k=top_k, top_p=top_p), generator)


def sampling_probs(logits: torch.Tensor, *, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The distribution ``draw`` samples from (temperature > 0): [..., V] probabilities."""
    return top_p_filter(top_k_filter(logits / temperature, top_k), top_p).softmax(dim=-1)


def race(weights: torch.Tensor, generator: torch.Generator | None = None, *,
         times: torch.Tensor | None = None) -> torch.Tensor:
    """One index per row of ``weights`` [..., V] (non-negative, not necessarily normalised), drawn with
    probability proportional to its weight.

    Exponential race (argmax w/E, E ~ Exp(1)) equals multinomial sampling without a host sync. ``times``
    (``race_times`` of the same shape) are the E drawn beforehand: a compiled graph then holds no random
    op, and draws with them exactly what the generator would have drawn in their place.
    """
    if times is None:
        times = race_times(weights.shape, generator, device=weights.device, dtype=weights.dtype)
    return (weights / times).argmax(dim=-1)


def race_times(shape, generator: torch.Generator | None = None, *, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Exp(1) times for ``race`` over weights of ``shape``, from ``generator``."""
    return torch.empty(shape, device=device, dtype=dtype).exponential_(1.0, generator=generator)


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty: logits of tokens in ``seen`` [B, V] (bool) are divided by ``penalty`` when
    positive and multiplied by it when negative, so a seen token always becomes less likely."""
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


def guide(
    cond: torch.Tensor,
    uncond: torch.Tensor,
    scale: float,
    *,
    image_only: torch.Tensor | None = None,
    image_scale: float = 1.0,
) -> torch.Tensor:
    """Classifier-free guidance of raw logits.

    Two streams: ``uncond + s·(cond - uncond)``. With Chameleon's image-only
    stream (the prompt's images without its text) the text and image
    conditions get their own scales:
    ``uncond + s_img·(image_only - uncond) + s·(cond - image_only)``.
    """
    if image_only is None:
        return cond + (scale - 1.0) * (cond - uncond)
    return cond + (scale - 1.0) * (cond - image_only) + (image_scale - 1.0) * (image_only - uncond)


def contrastive_top_k(expert: torch.Tensor, amateur: torch.Tensor, *, k: int, alpha: float) -> torch.Tensor:
    """CM3leon's CD-K: contrastive decoding whose plausibility head is set by the k-th best token.

    Candidates are tokens with p_expert >= alpha · (k-th largest p_expert); each
    candidate is scored log p_expert - log p_amateur, the rest get -inf.
    Inputs are logits [B, V] (masked entries -inf); returns scores to sample from.
    """
    log_expert = expert.float().log_softmax(dim=-1)
    log_amateur = amateur.float().log_softmax(dim=-1)
    k = max(1, min(k, expert.shape[-1]))
    kth = torch.topk(log_expert, k, dim=-1).values[..., -1:]
    head = log_expert >= kth + math.log(alpha) if alpha > 0 else torch.isfinite(log_expert)
    # an amateur that rules a token out (-inf) must not make it infinitely good
    score = log_expert - log_amateur.clamp(min=-1e4)
    return score.masked_fill(~head, float("-inf"))
