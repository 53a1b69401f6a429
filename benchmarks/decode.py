"""Sections 3 and 4 of ``benchmarks/run.py``: decode tokens/s against transformers' ``generate``, and
seconds per generated image with classifier-free guidance.

Decode: the same weights in both (transformers' Chameleon built at random and
imported into mmgen), the same prompts, greedy, the KV cache on both,
``max_new_tokens`` tokens per prompt whatever they are (no stop at EOS).
Chameleon's forward rules image codes out, so both decode text; the greedy
tokens are compared as a check that the two really run the same function.
Each rate is the best of ``repeats`` runs after one warm-up (a busy neighbour
only ever adds time), the two decoders taking turns, and is given per CPU-second
of this one-thread process, which other jobs on the cores hardly move.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from configs import BenchConfig
from figures import Figure
from hf_reference import build_models

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


def interleaved(runners: dict, repeats: int) -> tuple[dict[str, tuple[float, float]], dict, dict[str, float]]:
    """Each runner's best wall and best CPU seconds over ``repeats`` rounds after a warm-up call (which holds
    any compilation), its last result, and the wall seconds of its warm-up call. Runners take turns in every
    round, so load from other jobs that comes and goes falls on all of them alike; CPU time hardly moves with
    it at all."""
    results, first = {}, {}
    for name, fn in runners.items():
        start = time.perf_counter()
        results[name] = fn()
        first[name] = time.perf_counter() - start
    best = {name: (float("inf"), float("inf")) for name in runners}
    for _ in range(repeats):
        for name, fn in runners.items():
            wall, cpu = time.perf_counter(), time.process_time()
            results[name] = fn()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best, results, first


def decode_figures(bench: BenchConfig, batch: int, new_tokens: int, repeats: int, *,
                   compile: bool = False, dtype: torch.dtype = torch.float32) -> list[Figure]:
    """Tokens per CPU-second of the sampler (eager, and with ``compile`` its whole step compiled as one graph)
    against ``generate``'s, both models in ``dtype``; the wall-clock ratio goes in the note, and the compiled
    step's first call (its compilation: the compiler's worker processes are not in this process's CPU time)."""
    import transformers

    transformers.logging.set_verbosity_error()
    model, hf = build_models(bench.model, bench.vocab)
    model.to(dtype).eval()
    hf.to(dtype).eval()
    prompts = text_prompts(bench.vocab, batch)
    params = SamplingParams(max_new_tokens=new_tokens, temperature=0.0, max_images=0, eos_stops=False)
    ids = torch.tensor(prompts)
    runners = {
        "generate": lambda: hf.generate(input_ids=ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                        do_sample=False, use_cache=True,
                                        pad_token_id=bench.vocab.pad)[:, ids.shape[1]:].tolist(),
        "eager": lambda: sample(model, bench.vocab, prompts, params),
    }
    if compile:
        runners["compiled"] = lambda: sample(model, bench.vocab, prompts, params, compile=True)
    with torch.inference_mode():
        best, results, first = interleaved(runners, repeats)
    tokens = batch * new_tokens
    (ref_wall, ref_cpu), figures = best.pop("generate"), []
    dtype_label = "" if dtype == torch.float32 else f", {dtype}"  # float32 rows keep their names of earlier runs
    for name, (wall, cpu) in best.items():
        same = sum(a == b for x, y in zip(results[name], results["generate"]) for a, b in zip(x, y)) / tokens
        compilation = f"; first call {first[name]:.0f} s wall (compilation)" if name == "compiled" else ""
        figures.append(Figure(
            "3 decode", f"{bench.name} batch {batch} sampler {name}{dtype_label}", tokens / cpu, "tokens/CPU-s",
            "transformers generate", tokens / ref_cpu,
            note=f"wall {tokens / wall:.4g} vs {tokens / ref_wall:.4g} tokens/s ({ref_wall / wall:.2f}x); greedy, "
                 f"{new_tokens} new tokens, {same:.0%} of them identical to generate's{compilation}"))
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
