"""Modality-constrained sampling of interleaved documents with the KV cache.

Grammar enforced per sequence (Chameleon restricts logits to the active
modality): in text mode only text pieces, EOS and BOI are allowed, BOI only
while fewer than ``max_images`` images were sampled and a whole image
(BOI + h·w codes + EOI) still fits in ``max_new_tokens``; after BOI exactly
h·w image codes follow, then EOI is forced and text resumes. ``force_image``
makes the first sampled token BOI. A prompt that ends inside an image (e.g.
a text-to-image prompt ending in BOI) is continued with the codes still due
and EOI; that image counts as one of ``max_images``. Each sequence's state lives in tensors and
its mask is a row of a precomputed table, so a batch of prompts steps together
without Python branching per sequence and without host syncs (the only sync
is a check every ``_DONE_CHECK_EVERY`` steps for whether all sequences ended).

Prompts of different lengths are right-padded and prefilled in one call; each
sequence then decodes at its own cache slots (see mmgen/model/kv_cache.py).
"""

from __future__ import annotations

import torch

from mmgen.generation.logits_processors import (
    BEGIN_IMAGE,
    DONE,
    END_IMAGE,
    IMAGE,
    TEXT,
    TEXT_OR_IMAGE,
    draw,
    modality_mask_table,
)

_DONE_CHECK_EVERY = 8


@torch.inference_mode()
def sample(
    model,
    vocab,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_images: int = 1,
    force_image: bool = False,
    seed: int = 0,
    eos_stops: bool = True,
) -> list[list[int]]:
    """Sample a continuation of every prompt; returns the new tokens only (EOS included).

    ``model`` is a ``mmgen.model.Transformer`` (its cache is set up and cleared
    here); ``vocab`` provides pad, eos, boi, eoi, size, text_range, image_range
    and grid. The same seed and prompts give the same samples.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    param = next(model.parameters())
    device = param.device
    B = len(prompts)
    lengths = torch.tensor([len(p) for p in prompts], device=device)
    P = int(lengths.max())
    tokens = torch.full((B, P), vocab.pad, dtype=torch.long, device=device)
    for b, prompt in enumerate(prompts):
        tokens[b, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)

    h, w = vocab.grid
    image_len = h * w + 2
    open_image = [_tokens_due_in_open_image(p, vocab, h * w) for p in prompts]
    mask_table = modality_mask_table(vocab, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    batch = torch.arange(B, device=device)

    was_training = model.training
    model.eval()
    model.setup_cache(B, P + max_new_tokens, dtype=param.dtype, device=device)
    try:
        logits = model(tokens, input_pos=torch.arange(P, device=device))[batch, lengths - 1].float()
        out = torch.full((B, max_new_tokens), vocab.pad, dtype=torch.long, device=device)
        n_out = torch.zeros(B, dtype=torch.long, device=device)
        image_left = torch.tensor(open_image, dtype=torch.long, device=device)  # codes + EOI still due
        n_images = (image_left > 0).long()
        done = torch.zeros(B, dtype=torch.bool, device=device)
        for step in range(max_new_tokens):
            image_fits = step + image_len <= max_new_tokens
            text_state = torch.where((n_images < max_images) & image_fits, TEXT_OR_IMAGE, TEXT)
            if step == 0 and force_image and max_images > 0 and image_fits:  # (an open image overrides)
                text_state = torch.full_like(text_state, BEGIN_IMAGE)
            state = torch.where(image_left > 1, IMAGE, torch.where(image_left == 1, END_IMAGE, text_state))
            state = torch.where(done, DONE, state)
            token = draw(
                logits + mask_table[state],
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=generator,
            )
            live = ~done
            out[:, step] = torch.where(live, token, vocab.pad)
            n_out += live.long()
            opened = live & (token == vocab.boi)
            n_images += opened.long()
            image_left = torch.where(opened, image_len - 1, (image_left - 1).clamp(min=0))
            if eos_stops:
                done = done | (live & (token == vocab.eos))
            if step + 1 == max_new_tokens:
                break
            if (step + 1) % _DONE_CHECK_EVERY == 0 and bool(done.all()):
                break
            logits = model(token[:, None], input_pos=(lengths + step)[:, None])[:, 0].float()
    finally:
        model.clear_cache()
        model.train(was_training)
    n_out = n_out.tolist()
    return [row[:n].tolist() for row, n in zip(out.cpu(), n_out)]


def _tokens_due_in_open_image(prompt: list[int], vocab, codes_per_image: int) -> int:
    """Codes + EOI still to sample when the prompt ends inside an image, else 0."""
    last_boi = max((i for i, t in enumerate(prompt) if t == vocab.boi), default=-1)
    if last_boi < 0 or vocab.eoi in prompt[last_boi:]:
        return 0
    codes_given = len(prompt) - last_boi - 1
    if codes_given > codes_per_image:
        raise ValueError(f"prompt holds {codes_given} codes after its last BOI, more than {codes_per_image}")
    return codes_per_image + 1 - codes_given
