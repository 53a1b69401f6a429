"""Shapes world 32×32: the demo image tokenizer trained ≤ 5 min on CPU, against JPEG at the same bits.

    python benchmarks/image_tokenizer_shapes.py [--seconds 240] [--train_images 12000] [field=value ...]

Trains the demo config's tokenizer on shapes-world scenes of the training split
and scores held-out scenes (disjoint by construction): PSNR, SSIM, share of codes
used, code perplexity; then JPEG (Pillow) on the same held-out images at the
token grid's bits per image (tokens × log2 codebook), in the same run.
Targets (issue 4): ≥ 30 dB and ≥ 90 % of codes used.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch
from image_tokenizer_jpeg import jpeg_at_bits

from mmgen.config.presets import demo
from mmgen.config.schema import WorldConfig
from mmgen.data.shapes_world import random_scene, render_scene, scene_split
from mmgen.tokenizers.image import psnr_from_mse, ssim
from mmgen.tokenizers.image_train import fit


def scenes(split: str, count: int, seed: int) -> np.ndarray:
    rng, cfg, out = np.random.default_rng(seed), WorldConfig(), []
    while len(out) < count:
        scene = random_scene(rng, cfg)
        if scene_split(scene) == split:
            out.append(np.asarray(render_scene(scene, cfg.image_size)))
    return np.stack(out)


def image_metrics(recon: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    mse = float(((recon.astype(np.float64) - target) ** 2).mean())
    to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2)  # noqa: E731
    return psnr_from_mse(mse), ssim(to_tensor(recon), to_tensor(target))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=None, help="training budget (default: the demo config's)")
    parser.add_argument("--train_images", type=int, default=12000)
    parser.add_argument("--heldout_images", type=int, default=500)
    parser.add_argument("overrides", nargs="*", help="tokenizer config fields to change, e.g. batch_size=32 lr=3e-3")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    cfg = demo().image_tokenizer
    if args.seconds is not None:
        cfg = dataclasses.replace(cfg, max_train_seconds=args.seconds)
    for item in args.overrides:
        key, value = item.split("=", 1)
        cfg = dataclasses.replace(cfg, **{key: type(getattr(cfg, key))(value)})
    train, heldout = scenes("train", args.train_images, 0), scenes("heldout", args.heldout_images, 1)
    print(f"config: {cfg}")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        _, metrics = fit(
            torch.from_numpy(train), torch.from_numpy(heldout), cfg, out, device="cpu", log_every=200
        )
        seconds = time.perf_counter() - start
        from mmgen.tokenizers.image import ImageTokenizer

        tok = ImageTokenizer.load(out)
        recon = tok.decode(tok.encode(torch.from_numpy(heldout))).numpy()
    h, w = tok.grid
    bits = int(h * w * math.log2(tok.codebook_size))
    vq_psnr, vq_ssim = image_metrics(recon, heldout)
    jpeg, jpeg_stats = jpeg_at_bits(heldout, bits)
    jpeg_psnr, jpeg_ssim = image_metrics(jpeg, heldout)
    print(f"\nshapes world {cfg.image_size}x{cfg.image_size}, {len(heldout)} held-out images, {bits} bits/image "
          f"({h}x{w} tokens x {math.log2(tok.codebook_size):.0f} bits), trained {seconds:.0f} s "
          f"({metrics['train_steps']} steps, all included)")
    print(f"{'':22s} {'PSNR dB':>8s} {'SSIM':>7s}")
    print(f"{'VQ tokenizer':22s} {vq_psnr:8.2f} {vq_ssim:7.4f}   codebook usage {metrics['codebook_usage']:.1%}, "
          f"perplexity {metrics['code_perplexity']:.1f}")
    print(f"{'JPEG same scan bits':22s} {jpeg_psnr:8.2f} {jpeg_ssim:7.4f}   mean quality {jpeg_stats['mean_quality']:.1f}, "
          f"{jpeg_stats['mean_scan_bits']:.0f} bits, {jpeg_stats['over_budget']:.0%} over budget at quality 1")
    print(f"tokenizer - JPEG: {vq_psnr - jpeg_psnr:+.2f} dB PSNR, SSIM ratio {vq_ssim / jpeg_ssim:.3f}")
    # the clock is checked before each step, so training ends within one step of its budget
    ok = vq_psnr >= 30 and metrics["codebook_usage"] >= 0.9 and 0 < cfg.max_train_seconds <= 300
    print(f"target >= 30 dB and >= 90% codes used, training budget <= 5 min "
          f"({metrics['train_seconds']:.1f} s trained): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
