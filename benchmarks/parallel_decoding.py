"""Part of section 4 of ``benchmarks/run.py``: speculative Jacobi decoding against plain sampling of the same images.

Text-to-image at the demo's size (h·w codes with classifier-free guidance, the
report's temperature and guidance), on a trained run's decoder when one is
given (``run.py --run DIR``, e.g. ``outputs/demo``), else on a random
demo-sized one:
- forward passes and seconds per image, one prompt at a time (batch 1: each
  image takes as many passes as it needs), the two samplers taking turns on
  every prompt;
- with a trained run, text-to-image accuracy of both on the same validation
  scenes (``mmgen.eval.shapes_eval.t2i_eval``, batched as the report samples),
  with 95 % intervals, and the seconds that evaluation took.
The two samplers draw different samples (another random stream); their
distribution is the same (tests/test_jacobi.py).
"""

from __future__ import annotations

import dataclasses
import time

import torch

from configs import BenchConfig
from figures import Figure

from mmgen.generation.sampler import CachedDecoding, SamplingParams, sample


def trained_run(run_dir: str):
    """(model, tokenizer, config, step) of a demo run folder: its newest pretraining checkpoint, and the demo's config
    (the world and evaluation settings the run was made with)."""
    from mmgen.config.paths import RunPaths
    from mmgen.config.presets import demo
    from mmgen.model.checkpoint import load_trained_model
    from mmgen.tokenizers.run import load_run_tokenizer

    paths = RunPaths(run_dir)
    model, step = load_trained_model(paths.pretrain_dir)
    return model, load_run_tokenizer(paths), demo(), step


def t2i_prompts(tokenizer, cfg, count: int, *, seed: int) -> tuple[list[dict], list[list[int]]]:
    """``count`` validation scenes and the report's text-to-image prompts for them (ending in BOI)."""
    from mmgen.data.shapes_world import describe_scene
    from mmgen.eval.shapes_eval import eval_scenes

    scenes = eval_scenes(count, cfg.world, seed=seed, split="validation")
    texts = [cfg.eval.t2i_template.format(caption=describe_scene(s)) for s in scenes]
    return scenes, [tokenizer.encode_parts([t], eos=False) + [tokenizer.vocab.boi] for t in texts]


def jacobi_figures(bench: BenchConfig, run_dir: str | None, *, window: int, images: int,
                   accuracy_prompts: int, compile: bool = False) -> list[Figure]:
    """With ``compile`` both samplers run compiled (plain: its whole step as one graph; Jacobi: the model's
    forward, its windows vary in width), the compilation in the warm-up calls."""
    if run_dir:
        model, tokenizer, cfg, step = trained_run(run_dir)
        vocab = tokenizer.vocab
        _, prompts = t2i_prompts(tokenizer, cfg, images, seed=cfg.eval.seed + 1)
        what = f"trained demo model (step {step})"
    else:
        from decode import text_prompts

        from mmgen.config.presets import demo
        from mmgen.model import Transformer

        torch.manual_seed(0)
        model = Transformer(bench.model, bench.vocab.size).eval()
        model.init_weights()
        vocab, cfg, tokenizer = bench.vocab, demo(), None
        prompts = [p + [vocab.boi] for p in text_prompts(vocab, images)]
        what = "random demo-sized model"
    e = cfg.eval
    h, w = vocab.grid
    plain = SamplingParams(max_new_tokens=h * w + 1, temperature=e.t2i_temperature, top_k=e.t2i_top_k,
                           cfg_scale=e.t2i_cfg_scale, max_images=1, eos_stops=False)
    fast = dataclasses.replace(plain, jacobi_window=window)
    totals = {name: [0, 0.0, 0.0] for name in ("plain", "jacobi")}  # passes, wall, CPU seconds
    def decoding_for(params):  # (plain and compiled: its whole step is compiled around the eager model)
        return CachedDecoding(model, compile=compile and bool(params.jacobi_window))

    with torch.inference_mode():
        for params in (plain, fast) if compile else (fast,):  # warm-up
            sample(model, vocab, prompts[:1], params, decoding=decoding_for(params), compile=compile)
        for seed, prompt in enumerate(prompts):
            for name, params in (("plain", plain), ("jacobi", fast)):
                decoding = decoding_for(params)
                wall, cpu = time.perf_counter(), time.process_time()
                sample(model, vocab, [prompt], dataclasses.replace(params, seed=seed), decoding=decoding,
                       compile=compile)
                totals[name][0] += decoding.forward_passes
                totals[name][1] += time.perf_counter() - wall
                totals[name][2] += time.process_time() - cpu
    (p_passes, p_wall, p_cpu), (j_passes, j_wall, j_cpu) = totals["plain"], totals["jacobi"]
    n = len(prompts)
    setting = (f"{what}, {h}x{w} codes, CFG {e.t2i_cfg_scale:g}, temperature {e.t2i_temperature:g}, "
               f"Jacobi window {window}{', both compiled' if compile else ''}")
    figures = [
        Figure("4 image", f"{setting}: forward passes per image", j_passes / n, "passes", "plain sampling",
               p_passes / n, note=f"batch 1, {n} prompts", lower_is_better=True),
        Figure("4 image", f"Jacobi{' compiled' if compile else ''}: seconds per image", j_cpu / n, "CPU-s/image", "plain sampling", p_cpu / n,
               lower_is_better=True, note=f"wall {j_wall / n:.3g} vs {p_wall / n:.3g} s/image ({p_wall / j_wall:.2f}x); batch 1"),
    ]
    if tokenizer is not None and accuracy_prompts and not compile:
        figures += _accuracy_figures(model, tokenizer, cfg, window, accuracy_prompts)
    return figures


def _accuracy_figures(model, tokenizer, cfg, window: int, count: int) -> list[Figure]:
    """Text-to-image accuracy on ``count`` validation scenes with and without Jacobi decoding, as the report
    measures it (all prompts in one batch)."""
    from mmgen.eval.shapes_eval import eval_scenes, t2i_eval

    e = cfg.eval
    scenes = eval_scenes(count, cfg.world, seed=e.seed + 1, split="validation")
    results = {}
    for name, size in (("plain", 0), ("jacobi", window)):
        start = time.perf_counter()
        with torch.inference_mode():
            r = t2i_eval(model, tokenizer, scenes, dataclasses.replace(e, t2i_jacobi_window=size), cfg.world.image_size)
        results[name] = (r["accuracy"], r["ci95"], time.perf_counter() - start)
    (p_acc, p_ci, p_s), (j_acc, j_ci, j_s) = results["plain"], results["jacobi"]
    return [
        Figure("4 image", f"Jacobi: text-to-image accuracy, {count} validation scenes", j_acc, "accuracy", "plain sampling",
               p_acc, note=f"95 % intervals [{j_ci[0]:.3f}, {j_ci[1]:.3f}] vs [{p_ci[0]:.3f}, {p_ci[1]:.3f}]"),
        Figure("4 image", f"Jacobi: seconds per image, the report's batch of {count}", j_s / count, "s/image",
               "plain sampling", p_s / count, note="wall, sampling and scoring"),
    ]
