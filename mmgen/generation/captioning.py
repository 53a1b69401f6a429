"""Captioning images with the trained decoder: the report's caption measurement and curation's recaptioning."""

from __future__ import annotations

from typing import Sequence

from PIL import Image

from mmgen.data.sft_tasks import caption_example
from mmgen.generation.sampler import SamplingParams, sample
from mmgen.progress import progress_bar, sampler_progress
from mmgen.tokenizers.sft import encode_sft_examples


def first_sentence(text: str) -> str:
    end = text.find(".")
    return text if end < 0 else text[: end + 1]


def caption_images(model, tokenizer, images: Sequence[Image.Image], *, prompt: str, lead: str, max_tokens: int,
                   seed: int = 0) -> list[str]:  # fmt: skip
    """Greedy captions: the first sentence of ``lead`` continued after ``prompt`` and the image, lead included."""
    prompts = [tokenizer.encode_parts([prompt, image, lead], eos=False) for image in images]
    return _greedy_captions(model, tokenizer, prompts, lead, max_tokens, seed)


def sft_caption_images(model, tokenizer, images: Sequence[Image.Image], *, max_tokens: int, seed: int = 0) -> list[str]:
    """Greedy captions by a fine-tuned decoder, asked as its SFT caption task is (``BOS task instruction SEP
    image SEP``, mmgen.tokenizers.sft): the first sentence of each answer."""
    examples = [caption_example(image, "", {}) for image in images]
    prompts = [ids[:start] for ids, start in encode_sft_examples(tokenizer, examples)]
    return _greedy_captions(model, tokenizer, prompts, "", max_tokens, seed)


def _greedy_captions(model, tokenizer, prompts: list[list[int]], lead: str, max_tokens: int, seed: int) -> list[str]:
    params = SamplingParams(max_new_tokens=max_tokens, temperature=0.0, max_images=0, seed=seed)
    with progress_bar(desc="captions", unit="step") as bar:
        outs = sample(model, tokenizer.vocab, prompts, params, progress=sampler_progress(bar))
    return sampled_captions(tokenizer, outs, lead)


def sampled_text(tokenizer, ids: Sequence[int]) -> str:
    """The text of sampled tokens, images left out (decoded leniently: a cut-off image is dropped), stripped."""
    return "".join(p for p in tokenizer.decode_parts([int(t) for t in ids], strict=False) if isinstance(p, str)).strip()


def sampled_captions(tokenizer, outputs: Sequence[Sequence[int]], lead: str) -> list[str]:
    """The first sentence of ``lead`` and each sampled continuation's text."""
    return [first_sentence(f"{lead} {sampled_text(tokenizer, new)}") for new in outputs]
