"""How well a CM3-trained model fills holes in held-out documents: one image and one text span per document.

Images: a document's image is cut out and the model infills it from the text
before *and after* the hole. The scene analyser reads the infilled image and
the original (its VQ reconstruction), and the score is the share of the
original's attributes found in the infill, with a permutation chance level
measured on the same infills.

Text: a seeded random text span is cut out (the same span choice as CM3
training) and infilled greedily. The left-context baseline is the same model
continuing the text before the hole, i.e. what plain causal decoding gets
without the right-hand context. It cannot know where the span ends, so it is
read at the span's true length; the like-for-like comparison reads the infill
at that length too (``text_exact`` against ``text_exact_left_context``): both
are decoded the same way, past any EOS, and read as their first n text tokens
for a span of n. ``text_exact_gain`` is their difference on the same spans, with
a paired interval. ``text_exact_own_end`` also asks the infill to end the span
itself (EOS), which the baseline is never asked. ``text_span_bits`` and
``text_span_bits_left_context`` score the true span, token by token, from the
CM3 prompt and from the left context alone: the infill sees strictly more, so a
model that has learnt to infill needs fewer bits. Also reported: a
character-level similarity to the truth for each reading.
"""

from __future__ import annotations

import difflib
from typing import Sequence

import numpy as np
import torch

from mmgen.data.objectives import choose_span, image_spans
from mmgen.eval.attributes import attribute_accuracy_with_interval, permutation_chance
from mmgen.eval.intervals import paired_difference_interval, wilson_interval, with_interval
from mmgen.eval.likelihood import grouped_continuation_logprobs
from mmgen.eval.scene_analyser import analyse_scene
from mmgen.generation.captioning import sampled_text
from mmgen.generation.infill import infill_prompt
from mmgen.generation.sampler import SamplingParams, sample_in_batches


def _grid(vocab, new: Sequence[int]) -> torch.Tensor | None:
    """The first h·w image codes of a sampled span, or None when the sample holds fewer."""
    h, w = vocab.grid
    lo, hi = vocab.image_range
    codes = [t for t in new if lo <= t < hi][: h * w]
    return vocab.id_to_code(torch.tensor(codes)).view(h, w) if len(codes) == h * w else None


def _readable(tokenizer, ids: Sequence[int]) -> str:
    """Text with each image shown as ``[image]``."""
    parts = tokenizer.decode_parts([int(t) for t in ids], strict=False)
    return "".join(p if isinstance(p, str) else " [image] " for p in parts)


def _masked_view(tokenizer, ids: np.ndarray, span: tuple[int, int]) -> str:
    return f"{_readable(tokenizer, ids[: span[0]])} [___] {_readable(tokenizer, ids[span[1] :])}".strip()


def _span_bits(model, vocab, prompts: list[list[int]], spans: list[list[int]], batch_size: int, desc: str) -> float:
    """Bits per token of each span after its prompt, over all spans' tokens."""
    logps = grouped_continuation_logprobs(model, [(p, [s]) for p, s in zip(prompts, spans)], pad_id=vocab.pad,
                                          batch_size=batch_size, desc=desc)  # fmt: skip
    return float(-sum(float(lp[0].sum()) for lp in logps) / (np.log(2) * sum(len(s) for s in spans)))


def _first_text(out: Sequence[int], eos: int, n: int | None = None) -> list[int]:
    """A text sample's tokens up to its first EOS, or (``n``) its first n tokens other than EOS."""
    if n is None:
        return list(out[: out.index(eos)]) if eos in out else list(out)
    return [t for t in out if t != eos][:n]


@torch.inference_mode()
def infill_eval(model, tokenizer, shards, *, documents: int, seed: int = 0, temperature: float = 0.7,
                cfg_scale: float = 0.0, batch_size: int = 16, examples: int = 12, text_cue: int = 0) -> dict:
    """Image and text infilling on the first ``documents`` documents of ``shards`` (token-id sequences) that allow
    each; ``text_cue`` is the ``data.cm3_text_cue`` the model was trained with. ``temperature`` and ``cfg_scale``
    are the image infills' sampling (guidance: the document around the hole against its unconditional stream)."""
    vocab = tokenizer.vocab
    h, w = vocab.grid
    rng = np.random.default_rng(seed)
    image_items: list[tuple[np.ndarray, tuple[int, int]]] = []
    text_items: list[tuple[np.ndarray, tuple[int, int]]] = []
    for i in range(len(shards)):
        if len(image_items) >= documents and len(text_items) >= documents:
            break
        ids = np.asarray(shards[i], dtype=np.int64)
        spans = image_spans(ids, vocab.boi, vocab.eoi)
        if spans and len(image_items) < documents:
            image_items.append((ids, spans[int(rng.integers(len(spans)))]))
        span = choose_span(ids, vocab, rng, image_share=0.0)
        if span is not None and len(text_items) < documents:
            text_items.append((ids, span))

    def batched(prompts: list[list[int]], desc: str, **params) -> list[list[int]]:
        return sample_in_batches(model, vocab, prompts, SamplingParams(seed=seed, **params), batch_size, desc=desc)

    result: dict = {"documents": {"image": len(image_items), "text": len(text_items)}}

    if image_items:
        outs = batched([infill_prompt(ids, span, vocab, text_cue) for ids, span in image_items], "infill images",
                       max_new_tokens=h * w + 3, temperature=temperature, cfg_scale=cfg_scale, force_image=True,
                       max_images=1, eos_stops=False)
        grids = [_grid(vocab, o) for o in outs]
        kept = [k for k, g in enumerate(grids) if g is not None]
        originals = tokenizer.decode_images([_grid(vocab, image_items[k][0][slice(*image_items[k][1])].tolist()) for k in kept])
        infilled = tokenizer.decode_images([grids[k] for k in kept]) if kept else []
        truth = [analyse_scene(im) for im in originals]
        read = [analyse_scene(im) for im in infilled]
        result |= with_interval("image_accuracy", *attribute_accuracy_with_interval(truth, read, seed=seed), len(kept))
        result |= {
            "image_chance": permutation_chance(truth, read, seed=seed),
            "image_incomplete": len(image_items) - len(kept),
            "image_examples": [
                {"context": _masked_view(tokenizer, image_items[k][0], image_items[k][1]), "original": o, "infilled": f}
                for k, o, f in list(zip(kept, originals, infilled))[:examples]
            ],
        }

    if text_items:
        lengths = [stop - start for _, (start, stop) in text_items]
        prompts = [infill_prompt(ids, span, vocab, text_cue) for ids, span in text_items]
        lefts = [ids[: span[0]].tolist() for ids, span in text_items]
        # both decoded alike, past EOS, so that each can be read at the span's true length
        decode = dict(max_new_tokens=max(lengths) * 2 + 8, temperature=0.0, max_images=0, eos_stops=False)
        infills = batched(prompts, "infill text", **decode)
        continued = batched(lefts, "left-context baseline", **decode)
        truths = [sampled_text(tokenizer, ids[slice(*span)]) for ids, span in text_items]
        filled = [sampled_text(tokenizer, _first_text(o, vocab.eos)) for o in infills]
        filled_cut = [sampled_text(tokenizer, _first_text(o, vocab.eos, n)) for o, n in zip(infills, lengths)]
        left = [sampled_text(tokenizer, _first_text(o, vocab.eos, n)) for o, n in zip(continued, lengths)]
        true_spans = [ids[slice(*span)].tolist() for ids, span in text_items]

        def similarity(guesses):
            return float(np.mean([difflib.SequenceMatcher(None, g, t).ratio() for g, t in zip(guesses, truths)]))

        def hits(guesses):
            return [float(g == t) for g, t in zip(guesses, truths)]

        def exact(name, guesses):
            right = int(sum(hits(guesses)))
            return with_interval(name, right / len(truths), wilson_interval(right, len(truths)), len(truths))

        result |= exact("text_exact", filled_cut) | exact("text_exact_left_context", left)
        # the infill's gain over the baseline on the same spans: paired, so its interval is the one that says
        # whether the right-hand context helps (two overlapping intervals cannot say it does not)
        infill_hits, left_hits = hits(filled_cut), hits(left)
        result |= with_interval("text_exact_gain", float(np.mean(infill_hits) - np.mean(left_hits)),
                                paired_difference_interval(infill_hits, left_hits, seed=seed), len(truths))
        result |= exact("text_exact_own_end", filled)
        result |= {
            "text_similarity": similarity(filled_cut),
            "text_similarity_left_context": similarity(left),
            "text_similarity_own_end": similarity(filled),
            "text_span_bits": _span_bits(model, vocab, prompts, true_spans, batch_size, "score spans (CM3)"),
            "text_span_bits_left_context": _span_bits(model, vocab, lefts, true_spans, batch_size,
                                                      "score spans (left context)"),
            "text_examples": [
                {"context": _masked_view(tokenizer, ids, span), "truth": t, "infilled": f, "left_context": g,
                 "infilled_own_end": e}
                for (ids, span), t, f, g, e in list(zip(text_items, truths, filled_cut, left, filled))[:examples]
            ],
        }
    return result
