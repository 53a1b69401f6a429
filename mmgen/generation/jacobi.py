"""Speculative Jacobi decoding of image codes: several codes per forward pass, the same distribution.

Each forward pass of the sampler's decode loop feeds a *window*: the token just
decided, followed by ``L`` guessed codes (drafts) for the positions after it,
at consecutive cache slots. Because attention is causal, one pass yields the
model's distribution at every one of those positions as if the guesses before
it were right. The guesses are then checked in order with the rule of
speculative sampling (Leviathan et al.; Chen et al.): a draft ``y`` drawn from
a proposal ``q`` is accepted with probability ``min(1, p(y) / q(y))``, ``p``
being the model's (guided, masked, temperature / top-k / top-p) distribution
there; at the first rejection the token is drawn from ``max(0, p - q)``
normalised, and when every draft is accepted one more token comes from the
distribution after the last. Each decided token is thereby distributed exactly
as plain sampling would draw it, whatever the proposals were, as long as every
draft was drawn from the ``q`` it is judged against. Greedy decoding (temperature
0) accepts a draft while it equals the argmax.

The proposals are Jacobi iteration's (Song et al. 2021; Teng et al. 2024,
"Accelerating auto-regressive text-to-image generation with training-free
speculative Jacobi decoding"): the distributions the last pass computed for the
positions after the decided ones — conditioned on guesses that may have been
wrong, and improving as the prefix settles — and, past the end of the window,
the last position's distribution. Rejected drafts leave their keys and values
in the KV cache past the accepted prefix; the sampler simply writes the next
window from the first undecided slot, and the causal mask over slots never
shows a later query anything past its own slot, so nothing needs erasing (the
rollback is the slot counter).

Only image codes are guessed: a sequence in text mode (or about to close its
image) decides one token per pass, exactly as without this option, and the
sampler feeds one-token windows while no sequence is inside an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mmgen.generation.logits_processors import race


@dataclass
class Drafts:
    """Guessed tokens for the positions after the token being fed, with the proposals they were drawn from."""

    tokens: torch.Tensor
    """[B, L] token ids."""
    proposals: torch.Tensor | None
    """[B, L, V] the distribution each draft was drawn from; None when decoding greedily."""


@dataclass
class Verdict:
    tokens: torch.Tensor
    """[B, n + 1] the decided tokens of each sequence, left-aligned: its ``count`` first entries count."""
    count: torch.Tensor
    """[B] tokens decided this pass: the accepted drafts and one token after them (at least 1)."""


def verify(target: torch.Tensor, probs: torch.Tensor | None, drafts: Drafts | None, limit: torch.Tensor,
           generator: torch.Generator | None) -> Verdict:
    """Accept each sequence's drafts in order and decide the token after the last accepted one.

    ``target`` [B, n + 1, V]: the final logits (masked, guided) at the window's positions, position j
    judging draft j (``drafts.tokens[:, j]``) and position n the token after all n drafts; ``probs``
    the distributions sampled from at those positions (None: greedy, argmax of ``target``). ``limit``
    [B]: drafts a sequence may accept at most (0 outside an image, so it decides one token as plain
    sampling does).
    """
    B, W, _ = target.shape
    n = W - 1
    rows = torch.arange(B, device=target.device)
    greedy = probs is None
    if n == 0 or drafts is None:
        accepted = torch.zeros(B, dtype=torch.long, device=target.device)
        guesses = target.new_zeros(B, 0, dtype=torch.long)
    else:
        guesses = drafts.tokens[:, :n]
        if greedy:
            ok = guesses == target[:, :n].argmax(dim=-1)
        else:
            p = probs[:, :n].gather(-1, guesses[..., None])[..., 0]
            q = drafts.proposals[:, :n].gather(-1, guesses[..., None])[..., 0]
            # accept with probability min(1, p / q) (q > 0: the draft was drawn from it)
            ok = torch.rand(p.shape, generator=generator, device=p.device) * q < p
        ok &= torch.arange(n, device=target.device) < limit[:, None]
        accepted = ok.long().cumprod(dim=1).sum(dim=1)
    if greedy:
        last = target[rows, accepted].argmax(dim=-1)
    else:
        last_p = probs[rows, accepted]
        if n and drafts is not None:
            # a draft that was judged and rejected: the token comes from the residual max(0, p - q)
            rejected = accepted < limit.clamp(max=n)
            residual = (last_p - drafts.proposals[rows, accepted.clamp(max=n - 1)]).clamp(min=0)
            use = rejected & (residual.sum(dim=-1) > 0)  # (p == q leaves no residual, and never rejects)
            last_p = torch.where(use[:, None], residual, last_p)
        last = race(last_p, generator)
    tokens = torch.cat([guesses, last[:, None]], dim=1)
    tokens[rows, accepted] = last
    return Verdict(tokens, accepted + 1)


def next_drafts(target: torch.Tensor, probs: torch.Tensor | None, count: torch.Tensor, size: int,
                generator: torch.Generator | None) -> Drafts:
    """``size`` guesses for the positions after each sequence's last decided token, drawn from the
    distributions this pass computed there (the window's last one past its end)."""
    B, W, V = target.shape
    # position j of the window predicts the token after j; the last decided token sits at count - 1
    at = (count[:, None] + torch.arange(size, device=target.device)).clamp(max=W - 1)
    if probs is None:
        return Drafts(target.argmax(dim=-1).gather(1, at), None)
    proposals = probs.gather(1, at[..., None].expand(B, size, V))
    return Drafts(race(proposals, generator), proposals)
