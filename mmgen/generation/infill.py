"""Infilling with a CM3-trained model: fill a masked image or text span of a document.

The prompt is the document in CM3 form up to the moved span,
``BOS A <infill_0> C <infill_0>`` (plus the cue before a text span when the
model was trained with one, ``data.cm3_text_cue``); the model then writes the
span. For an image span the sampler opens the image at once, so exactly h·w
codes follow.
"""

from __future__ import annotations

import numpy as np

from mmgen.data.objectives import cm3_transform, cue_length
from mmgen.generation.sampler import SamplingParams, sample


def infill_prompt(ids: np.ndarray, span: tuple[int, int], vocab, text_cue: int = 0) -> list[int]:
    """The document in CM3 form up to where the moved span starts (after its cue, if any)."""
    ids = np.asarray(ids)
    cue = cue_length(ids, span, vocab, text_cue)
    full = cm3_transform(ids, span, sentinel=vocab.special("infill_0"), eos=vocab.eos, cue=cue)
    return full[: len(full) - (span[1] - span[0]) - 1].tolist()


def infill(model, vocab, ids: np.ndarray, span: tuple[int, int], *, text_cue: int = 0, **sampling) -> list[int]:
    """The sampled replacement of ``ids[span]`` (an image span comes back as BOI, h·w codes, EOI).

    ``text_cue``: the ``data.cm3_text_cue`` the model was trained with. ``sampling`` holds ``SamplingParams``
    fields (temperature, seed, ...); the token budget,
    ``force_image`` and ``max_images`` follow from the span.
    """
    is_image = int(ids[span[0]]) == vocab.boi
    h, w = vocab.grid
    budget = h * w + 3 if is_image else 2 * (span[1] - span[0]) + 8
    params = SamplingParams(max_new_tokens=budget, force_image=is_image, max_images=1 if is_image else 0, **sampling)
    new = sample(model, vocab, [infill_prompt(ids, span, vocab, text_cue)], params)[0]
    if is_image:
        end = new.index(vocab.eoi) + 1 if vocab.eoi in new else len(new)
        return new[:end]
    return [t for t in new if t != vocab.eos]
