"""Train the VQ-VAE image tokenizer on the images of the training corpus; report held-out PSNR.

    python tokenizers/train_image.py --config demo [--image_tokenizer.max_train_seconds 120 ...]
"""

from __future__ import annotations

import json
import os
import sys
import time
from itertools import islice
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import fsspec  # noqa: E402
import torch  # noqa: E402

from mmgen.cli import run_cli  # noqa: E402
from mmgen.config import RunPaths, load_config  # noqa: E402
from mmgen.data.obelics import ReadStats, read_obelics  # noqa: E402
from mmgen.tokenizers.image import images_to_uint8, train_image_tokenizer  # noqa: E402

MAX_HELDOUT_IMAGES = 1000
"""Held-out images scored for PSNR and codebook usage."""


def read_images(url: str, limit: int, image_size: int) -> torch.Tensor:
    """Up to ``limit`` images of a corpus as uint8 [N, H, W, 3], resized to the tokenizer's side."""
    stats = ReadStats()
    images = (image for doc in read_obelics(url, stats=stats) for image in doc.images)
    pixels = images_to_uint8(list(islice(images, limit)), image_size)
    print(f"{url}: {len(pixels)} images; {stats.summary()}")
    return pixels.permute(0, 2, 3, 1)


def main() -> None:
    cfg = load_config(description=__doc__.strip().splitlines()[0])
    paths = RunPaths(cfg.run_dir)
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    start = time.perf_counter()
    tok_cfg = cfg.image_tokenizer
    # Training never sees more images than steps × batch, so reading more would only cost memory.
    train_url = cfg.data.train_corpus or paths.corpus_split("train")
    heldout_url = cfg.data.heldout_corpus or paths.corpus_split("heldout")
    train = read_images(train_url, tok_cfg.train_steps * tok_cfg.batch_size, tok_cfg.image_size)
    heldout = read_images(heldout_url, MAX_HELDOUT_IMAGES, tok_cfg.image_size)
    metrics = train_image_tokenizer(train, heldout, tok_cfg, paths.image_tokenizer)
    seconds = time.perf_counter() - start
    with fsspec.open(paths.stage_timing("train_image"), "w", auto_mkdir=True) as f:
        json.dump({"seconds": round(seconds, 3), **metrics}, f)


if __name__ == "__main__":
    run_cli(main)
