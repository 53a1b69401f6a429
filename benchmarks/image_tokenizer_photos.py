"""Natural photographs, 64×64 crops: the image tokenizer against JPEG at the same bits per image.

    python benchmarks/image_tokenizer_photos.py [--seconds 300] [--downsample 4] [--codebook_size 1024]

The photographs are the sample images scikit-image ships inside its package
(read from its data folder, never fetched). Each photo, at full size and
halved, gives its right-most fifth to held-out crops (a grid of disjoint 64×64
tiles) and the rest to random training crops, so held-out pixels never appear
in training. Both coders are scored on the same held-out crops in the same run:
the tokenizer at ``tokens × log2(codebook)`` bits per crop, JPEG at the
highest quality whose entropy-coded scan fits in those bits (see
image_tokenizer_jpeg.py).
"""

from __future__ import annotations

import argparse
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
from image_tokenizer_shapes import image_metrics
from PIL import Image

from mmgen.config.schema import ImageTokenizerConfig
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.image_train import fit

PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "ihc.png",
    "motorcycle_left.png", "retina.jpg", "camera.png", "moon.png", "coins.png", "brick.png", "grass.png",
    "gravel.png",
)  # fmt: skip
CROP = 64


def load_photos() -> list[np.ndarray]:
    try:
        import skimage.data
    except ImportError:
        sys.exit("this benchmark needs scikit-image (pip install scikit-image): its sample photos are the data")
    folder = Path(skimage.data.__file__).parent
    photos = []
    for name in PHOTOS:
        image = Image.open(folder / name).convert("RGB")
        for scale in (1.0, 0.5):
            size = (round(image.width * scale), round(image.height * scale))
            if min(size) >= 2 * CROP:
                photos.append(np.asarray(image.resize(size, Image.Resampling.LANCZOS) if scale != 1 else image))
    return photos


def crops(photos: list[np.ndarray], train_count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, heldout, areas = [], [], []
    for photo in photos:
        h, w, _ = photo.shape
        split = w - max(CROP, w // 5 // CROP * CROP)
        for y in range(0, h - CROP + 1, CROP):
            for x in range(split, w - CROP + 1, CROP):
                heldout.append(photo[y : y + CROP, x : x + CROP])
        areas.append(h * (split - CROP + 1))
    weights = np.array(areas, dtype=np.float64) / sum(areas)  # crops in proportion to each photo's area
    for index in rng.choice(len(photos), size=train_count, p=weights):
        photo = photos[index]
        h, w, _ = photo.shape
        split = w - max(CROP, w // 5 // CROP * CROP)
        y, x = rng.integers(0, h - CROP + 1), rng.integers(0, split - CROP + 1)
        crop = photo[y : y + CROP, x : x + CROP]
        train.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    return np.ascontiguousarray(np.stack(train)), np.stack(heldout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--downsample", type=int, default=4)
    parser.add_argument("--codebook_size", type=int, default=1024)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--train_crops", type=int, default=12000)
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    photos = load_photos()
    train, heldout = crops(photos, args.train_crops, seed=0)
    cfg = ImageTokenizerConfig(
        image_size=CROP, downsample=args.downsample, channels=args.channels, res_blocks=1,
        codebook_size=args.codebook_size, codebook_dim=16, batch_size=args.batch_size, lr=2e-3,
        train_steps=100_000, max_train_seconds=args.seconds, checkpoint_every=0,
    )  # fmt: skip
    print(f"{len(photos)} photos (full and half size), {len(train)} train crops, {len(heldout)} held-out crops")
    print(f"config: {cfg}")
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        _, metrics = fit(torch.from_numpy(train), torch.from_numpy(heldout), cfg, out, log_every=200)
        seconds = time.perf_counter() - start
        tok = ImageTokenizer.load(out)
        recon = tok.decode(tok.encode(torch.from_numpy(heldout))).numpy()
    h, w = tok.grid
    bits = int(h * w * math.log2(tok.codebook_size))
    vq_psnr, vq_ssim = image_metrics(recon, heldout)
    jpeg, jpeg_stats = jpeg_at_bits(heldout, bits)
    jpeg_psnr, jpeg_ssim = image_metrics(jpeg, heldout)
    print(f"\nnatural photos {CROP}x{CROP}, {len(heldout)} held-out crops, {bits} bits/crop "
          f"({bits / CROP**2:.3f} bpp; {h}x{w} tokens x {math.log2(tok.codebook_size):.0f} bits), trained {seconds:.0f} s")
    print(f"{'':22s} {'PSNR dB':>8s} {'SSIM':>7s}")
    print(f"{'VQ tokenizer':22s} {vq_psnr:8.2f} {vq_ssim:7.4f}   codebook usage {metrics['codebook_usage']:.1%}, "
          f"perplexity {metrics['code_perplexity']:.1f}")
    print(f"{'JPEG same scan bits':22s} {jpeg_psnr:8.2f} {jpeg_ssim:7.4f}   mean quality {jpeg_stats['mean_quality']:.1f}, "
          f"{jpeg_stats['mean_scan_bits']:.0f} bits, {jpeg_stats['over_budget']:.0%} over budget at quality 1")
    print(f"tokenizer - JPEG: {vq_psnr - jpeg_psnr:+.2f} dB PSNR, SSIM ratio {vq_ssim / jpeg_ssim:.3f}")


if __name__ == "__main__":
    main()
