"""Modality-constrained sampling of interleaved documents with the KV cache.

Grammar enforced per sequence (Chameleon restricts logits to the active
modality): in text mode only text pieces, EOS and BOI are allowed, BOI only
while fewer than ``max_images`` images were sampled and a whole image
(BOI + h·w codes + EOI) still fits in ``max_new_tokens``; after BOI exactly
h·w image codes follow, then EOI is forced and text resumes. ``force_image``
makes the first sampled token BOI. A prompt that ends inside an image (e.g.
a text-to-image prompt ending in BOI) is continued with the codes still due
and EOI; that image counts as one of ``max_images``. Each sequence's state
lives in tensors and its mask is a row of a precomputed table, so a batch of
prompts steps together without Python branching per sequence and without host
syncs (the only sync is a check every ``_DONE_CHECK_EVERY`` steps for whether
all sequences ended).

Guidance streams. Classifier-free guidance (``cfg_scale > 0``) and CD-K
(``cdk_k > 0``) add an unconditional stream per prompt — the prompt without
its text and images, i.e. BOS (plus the open image part when the prompt ends
inside an image) — and, with ``image_cfg_scale > 0``, Chameleon's image-only
stream (the prompt's images without its text). The streams are extra rows of
the same batch, so one forward serves all of them. A guidance stream follows
only the images its prompt samples: when the conditional stream emits BOI, a
code or EOI the guidance rows receive the same token; while it emits text they
rewrite a PAD at their next free cache slot, which the next image token
overwrites (the causal mask over slots never shows it to a later token).
Guidance changes image logits only; text is sampled from the conditional
stream (with the repetition penalty).

Prompts of different lengths are right-padded and prefilled in one call; each
row then decodes at its own cache slots (see mmgen/model/kv_cache.py).
``use_cache=False`` recomputes the whole sequence every step instead — slow,
the reference the cached path is tested against.
"""

from __future__ import annotations

from typing import Callable

import torch

from mmgen.generation.logits_processors import (
    BEGIN_IMAGE,
    DONE,
    END_IMAGE,
    IMAGE,
    TEXT,
    TEXT_OR_IMAGE,
    contrastive_top_k,
    draw,
    guide,
    modality_mask_table,
)
from mmgen.generation.logits_processors import repetition_penalty as penalise_repeats

_DONE_CHECK_EVERY = 8
_PROGRESS_EVERY = 32


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
    repetition_penalty: float = 1.0,
    max_images: int = 1,
    force_image: bool = False,
    cfg_scale: float = 0.0,
    image_cfg_scale: float = 0.0,
    cdk_k: int = 0,
    cdk_alpha: float = 0.1,
    seed: int = 0,
    eos_stops: bool = True,
    use_cache: bool = True,
    compile: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> list[list[int]]:
    """Sample a continuation of every prompt; returns the new tokens only (EOS included).

    ``model`` is a ``mmgen.model.Transformer`` (its cache is set up and cleared
    here); ``vocab`` provides pad, eos, boi, eoi, size, text_range, image_range
    and grid. The same seed and prompts give the same samples. ``cfg_scale``
    0 turns guidance off; any other value runs the unconditional stream (at 1
    the samples equal unguided ones). ``compile`` compiles the one-token decode
    step with torch.compile. ``progress(step, max_new_tokens)`` is called every
    ``_PROGRESS_EVERY`` steps (it gets no tensors, so it adds no host sync).
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be positive, got {repetition_penalty}")
    param = next(model.parameters())
    device = param.device
    B = len(prompts)
    h, w = vocab.grid
    image_len = h * w + 2
    open_image = [_tokens_due_in_open_image(p, vocab, h * w) for p in prompts]

    streams = [list(map(int, p)) for p in prompts]
    use_uncond = cfg_scale > 0 or cdk_k > 0
    use_image_only = image_cfg_scale > 0
    if use_uncond or use_image_only:
        streams += [guidance_prompt(p, vocab, keep_images=False) for p in prompts]
    if use_image_only:
        streams += [guidance_prompt(p, vocab, keep_images=True) for p in prompts]
    R = len(streams)
    row_len = torch.tensor([len(s) for s in streams], device=device)
    P = int(row_len.max())
    seq = torch.full((R, P + max_new_tokens), vocab.pad, dtype=torch.long, device=device)
    for r, stream in enumerate(streams):
        seq[r, : len(stream)] = torch.tensor(stream, dtype=torch.long)

    mask_table = modality_mask_table(vocab, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    rows = torch.arange(R, device=device)
    is_cond = rows < B
    seen = torch.zeros(B, vocab.size, dtype=torch.bool, device=device)  # text tokens so far (repetition penalty)
    for b, prompt in enumerate(prompts):
        text_ids = [t for t in prompt if vocab.is_text(int(t))]
        seen[b, text_ids] = True

    was_training = model.training
    model.eval()
    if use_cache:
        model.setup_cache(R, P + max_new_tokens, dtype=param.dtype, device=device)
    decode = torch.compile(model, dynamic=False) if compile and use_cache else model
    try:
        if use_cache:
            logits = model(seq[:, :P], input_pos=torch.arange(P, device=device))[rows, row_len - 1].float()
        else:
            logits = model(seq[:, :P])[rows, row_len - 1].float()
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
            mask = mask_table[state]
            cond = logits[:B]
            step_logits = penalise_repeats(cond, seen, repetition_penalty) + mask
            if R > B:
                step_logits = torch.where(
                    (state == IMAGE)[:, None],
                    _guided_image_logits(
                        logits, B, mask, cfg_scale=cfg_scale, image_cfg_scale=image_cfg_scale,
                        use_image_only=use_image_only, cdk_k=cdk_k, cdk_alpha=cdk_alpha,
                    ),
                    step_logits,
                )
            token = draw(step_logits, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
            live = ~done
            token = torch.where(live, token, vocab.pad)
            out[:, step] = token
            n_out += live.long()
            opened = live & (token == vocab.boi)
            n_images += opened.long()
            image_left = torch.where(opened, image_len - 1, (image_left - 1).clamp(min=0))
            is_text = live & vocab.is_text(token)
            seen.scatter_(1, token[:, None], seen.gather(1, token[:, None]) | is_text[:, None])
            if eos_stops:
                done = done | (live & (token == vocab.eos))
            if step + 1 == max_new_tokens:
                break
            if (step + 1) % _DONE_CHECK_EVERY == 0 and bool(done.all()):
                break
            if progress is not None and (step + 1) % _PROGRESS_EVERY == 0:
                progress(step + 1, max_new_tokens)
            # every conditional row advances; a guidance row only on image tokens (see the module doc)
            fed = token.repeat(R // B)
            image_token = (fed == vocab.boi) | (fed == vocab.eoi) | vocab.is_image(fed)
            advance = is_cond | image_token
            fed = torch.where(advance, fed, vocab.pad)
            seq[rows, row_len] = torch.where(advance, fed, seq[rows, row_len])
            if use_cache:
                logits = decode(fed[:, None], input_pos=row_len[:, None])[:, 0].float()
                row_len = row_len + advance.long()
            else:
                row_len = row_len + advance.long()
                logits = model(seq[:, : P + step + 1])[rows, row_len - 1].float()
    finally:
        if use_cache:
            model.clear_cache()
        model.train(was_training)
    n_out = n_out.tolist()
    return [row[:n].tolist() for row, n in zip(out.cpu(), n_out)]


def _guided_image_logits(logits, B, mask, *, cfg_scale, image_cfg_scale, use_image_only, cdk_k, cdk_alpha):
    cond, uncond = logits[:B], logits[B : 2 * B]
    image_only = logits[2 * B : 3 * B] if use_image_only else None
    expert = cond
    if cfg_scale > 0 or use_image_only:
        expert = guide(cond, uncond, cfg_scale if cfg_scale > 0 else 1.0, image_only=image_only,
                       image_scale=image_cfg_scale if use_image_only else 1.0)
    expert = expert + mask
    if cdk_k > 0:
        return contrastive_top_k(expert, uncond + mask, k=cdk_k, alpha=cdk_alpha)
    return expert


def guidance_prompt(prompt: list[int], vocab, *, keep_images: bool) -> list[int]:
    """A guidance stream's prompt: BOS, the prompt's complete images when ``keep_images``
    (Chameleon's image-only stream), and the open image part when the prompt ends inside one."""
    out = [vocab.bos]
    image: list[int] | None = None
    for t in map(int, prompt):
        if t == vocab.boi:
            image = [t]
        elif image is not None:
            image.append(t)
            if t == vocab.eoi:
                if keep_images:
                    out += image
                image = None
    if image is not None:
        out += image
    return out


def _tokens_due_in_open_image(prompt: list[int], vocab, codes_per_image: int) -> int:
    """Codes + EOI still to sample when the prompt ends inside an image, else 0."""
    last_boi = max((i for i, t in enumerate(prompt) if t == vocab.boi), default=-1)
    if last_boi < 0 or vocab.eoi in prompt[last_boi:]:
        return 0
    codes_given = len(prompt) - last_boi - 1
    if codes_given > codes_per_image:
        raise ValueError(f"prompt holds {codes_given} codes after its last BOI, more than {codes_per_image}")
    return codes_per_image + 1 - codes_given
