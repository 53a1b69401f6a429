"""Sections 3 and 4 of ``benchmarks/run.py``: decode tokens/s against transformers' ``generate``, and
seconds per generated image with classifier-free guidance.

Decode: the same weights in both (transformers' Chameleon built at random and
imported into mmgen), the same prompts, greedy, the KV cache on both,
``max_new_tokens`` tokens per prompt whatever they are (no stop at EOS).
Chameleon's forward rules image codes out, so both decode text; the greedy
tokens are compared as a check that the two really run the same function.
Each rate is the best of ``repeats`` runs after one warm-up (a busy neighbour
only ever adds time).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from configs import BenchConfig
from figures import Figure
from train_step_vs_hf import build_models

from mmgen.generation.sampler import SamplingParams, sample
from mmgen.model import Transformer


def best_seconds(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of ``repeats`` calls after a warm-up call, and the last result; with ``repeats`` 0,
    the time of one call without a warm-up (for runs too long to repeat)."""
    start = time.perf_counter()
    result = fn()
    if repeats == 0:
        return time.perf_counter() - start, result
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def text_prompts(vocab, batch: int, length: int = 12) -> list[list[int]]:
    lo = vocab.text_range[0]
    return [[vocab.bos, *range(lo + 1 + r, lo + length + r)] for r in range(batch)]


def decode_figures(bench: BenchConfig, batch: int, new_tokens: int, repeats: int, *,
                   compile: bool = False) -> list[Figure]:
    import transformers

    transformers.logging.set_verbosity_error()
    model, hf = build_models(bench.model, bench.vocab)
    model.eval()
    hf.eval()
    prompts = text_prompts(bench.vocab, batch)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, max_images=0, eos_stops=False)
    ids = torch.tensor(prompts)

    def reference():
        return hf.generate(input_ids=ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           use_cache=True, pad_token_id=bench.vocab.pad)[:, ids.shape[1]:].tolist()

    with torch.inference_mode():
        ref_s, ref_tokens = best_seconds(reference, repeats)
        runs = {"eager": False, "compiled": True} if compile else {"eager": False}
        figures = []
        for name, compiled in runs.items():
            ours_s, ours = best_seconds(lambda: sample(model, bench.vocab, prompts, params, compile=compiled), repeats)
            same = sum(a == b for x, y in zip(ours, ref_tokens) for a, b in zip(x, y)) / (batch * new_tokens)
            figures.append(Figure(
                "3 decode", f"{bench.name} batch {batch} sampler {name} tokens/s", batch * new_tokens / ours_s,
                "tokens/s", "transformers generate", batch * new_tokens / ref_s,
                note=f"greedy, {new_tokens} new tokens; {same:.0%} of tokens identical to generate's"))
    return figures


def image_figures(bench: BenchConfig, cfg_scale: float, repeats: int) -> list[Figure]:
    """Seconds per image of h·w codes (one prompt, temperature 1, guidance), against the unguided sampler."""
    torch.manual_seed(0)
    model = Transformer(bench.model, bench.vocab.size).eval()
    model.init_weights()
    h, w = bench.vocab.grid
    plain = SamplingParams(max_new_tokens=h * w + 2, max_images=1, force_image=True)
    guided = dataclasses.replace(plain, cfg_scale=cfg_scale)
    prompts = text_prompts(bench.vocab, 1)
    with torch.inference_mode():
        plain_s, _ = best_seconds(lambda: sample(model, bench.vocab, prompts, plain), repeats)
        guided_s, _ = best_seconds(lambda: sample(model, bench.vocab, prompts, guided), repeats)
    return [Figure("4 image", f"{bench.name} model, {h}x{w} codes, CFG {cfg_scale:g}", guided_s, "s/image",
                   "no guidance", plain_s, note="ratio below 1: what guidance's second stream costs")]
