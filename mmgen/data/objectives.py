"""The training objectives as per-document loader transforms: CM3's causal-masked form, condition dropout for
CFG, and SFT targets.

CM3 cuts a span out, leaves a sentinel, and appends the span at the end:

``BOS A B C EOS`` becomes ``BOS A <infill_0> C <infill_0> B EOS``; plain
next-token training on this form teaches the model to fill a hole given what
comes before *and after* it. The span is a whole image (BOI … EOI) or a run of
text tokens. At sampling time the prompt ``BOS A <infill_0> C <infill_0>``
asks for the missing span. Each transform's choice is seeded by the
document's index (see ``mmgen.data.transforms``).

A text span can carry a cue (``data.cm3_text_cue``): the last few text tokens
before the hole, repeated after the closing sentinel,
``BOS A1 A2 <infill_0> C <infill_0> A2 B EOS``. The moved span then continues
its own left context instead of first having to find the hole, which run L's
small model had barely learnt from its ~10 k text spans (docs/BENCHMARKS.md,
"Text infilling"). The cue repeats what the prompt holds anyway: no information
is added, only where it sits.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mmgen.data.token_shards import TokenShards
from mmgen.data.transforms import DocumentTransform, TrainingDocument


def image_spans(ids: np.ndarray, boi: int, eoi: int) -> list[tuple[int, int]]:
    starts = np.flatnonzero(ids == boi)
    ends = np.flatnonzero(ids == eoi)
    return [(int(s), int(e) + 1) for s, e in zip(starts, ends) if e > s]


def text_spans(ids: np.ndarray, text_range: tuple[int, int]) -> list[tuple[int, int]]:
    """Maximal runs of text tokens."""
    is_text = (ids >= text_range[0]) & (ids < text_range[1])
    edges = np.diff(np.concatenate([[0], is_text.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def cm3_transform(ids: np.ndarray, span: tuple[int, int], *, sentinel: int, eos: int, cue: int = 0) -> np.ndarray:
    """Move ``ids[span]`` to the end behind ``sentinel``, leaving ``sentinel`` in its place; the ``cue`` tokens
    before the hole are repeated between the closing sentinel and the span (see ``cue_length``)."""
    start, stop = span
    body = ids[:-1] if len(ids) and ids[-1] == eos else ids
    lead = ids[start - cue : start] if cue > 0 else ids[:0]
    moved = [sentinel, *lead, *ids[start:stop], eos]
    return np.concatenate([body[:start], [sentinel], body[stop:], moved]).astype(np.int64)


def cue_length(ids: np.ndarray, span: tuple[int, int], vocab, text_cue: int) -> int:
    """How many tokens before a text span its cue repeats: up to ``text_cue``, text of the same run only (an
    image or BOS before the hole ends the cue); 0 for an image span."""
    start = span[0]
    if text_cue <= 0 or not vocab.is_text(int(ids[start])):
        return 0
    n = 0
    while n < min(text_cue, start) and vocab.is_text(int(ids[start - 1 - n])):
        n += 1
    return n


def choose_span(ids: np.ndarray, vocab, rng: np.random.Generator, *, image_share: float, max_text_fraction: float = 0.5) -> tuple[int, int] | None:
    images = image_spans(ids, vocab.boi, vocab.eoi)
    texts = [(s, e) for s, e in text_spans(ids, vocab.text_range) if e - s >= 2]
    if images and (not texts or rng.random() < image_share):
        return images[int(rng.integers(len(images)))]
    if not texts:
        return None
    start, stop = texts[int(rng.integers(len(texts)))]
    length = int(rng.integers(1, max(2, int((stop - start) * max_text_fraction) + 1)))
    offset = start + int(rng.integers(0, stop - start - length + 1))
    return offset, offset + length


class CM3Masking(DocumentTransform):
    """A ``rate`` share of documents (chosen per document) in CM3 form."""

    def __init__(self, vocab, *, rate: float, image_share: float, seed: int, text_cue: int = 0):
        self.vocab = vocab
        self.rate = rate
        self.image_share = image_share
        self.seed = seed
        self.text_cue = text_cue
        self.sentinel = vocab.special("infill_0")

    def __call__(self, document: TrainingDocument) -> TrainingDocument:
        rng = np.random.default_rng((self.seed, document.index))
        if rng.random() >= self.rate:
            return document
        span = choose_span(document.tokens, self.vocab, rng, image_share=self.image_share)
        if span is None:
            return document
        cue = cue_length(document.tokens, span, self.vocab, self.text_cue)
        return document.with_tokens(cm3_transform(document.tokens, span, sentinel=self.sentinel, eos=self.vocab.eos,
                                                  cue=cue))


def drop_condition(ids: np.ndarray, vocab, rng: np.random.Generator) -> np.ndarray:
    """Remove the text right before one image (chosen at random), giving that image its unconditional context.

    This is the training half of classifier-free guidance: the model also
    learns p(image | what precedes the caption), which the sampler's
    unconditional stream asks for.
    """
    spans = image_spans(ids, vocab.boi, vocab.eoi)
    text = {stop: start for start, stop in text_spans(ids, vocab.text_range)}
    conditioned = [text[s] for s, _ in spans if s in text]
    if not conditioned:
        return ids
    start = conditioned[int(rng.integers(len(conditioned)))]
    stop = next(s for s, _ in spans if text.get(s) == start)
    return np.concatenate([ids[:start], ids[stop:]]).astype(np.int64)


class ConditionDropout(DocumentTransform):
    """A ``rate`` share of documents (chosen per document) lose one image's caption."""

    def __init__(self, vocab, *, rate: float, seed: int):
        self.vocab = vocab
        self.rate = rate
        self.seed = seed

    def __call__(self, document: TrainingDocument) -> TrainingDocument:
        rng = np.random.default_rng((self.seed, document.index, 1))
        if rng.random() >= self.rate:
            return document
        return document.with_tokens(drop_condition(document.tokens, self.vocab, rng))


class SFTTargets(DocumentTransform):
    """SFT examples (``tokenizers/encode_sft.py``): weight 0 (context) before each example's output, 1 from it on.

    Where the output starts is each document's ``loss_start`` in the shards' metadata.
    """

    sets_weights = True

    def __init__(self, shards: TokenShards):
        self.shards = shards

    def __call__(self, document: TrainingDocument) -> TrainingDocument:
        weights = np.zeros(len(document.tokens), dtype=np.float32)
        weights[int(self.shards.metadata(document.index)["loss_start"]) :] = 1.0
        if document.weights is not None:
            weights *= document.weights
        return replace(document, weights=weights)
