"""Train the VQ-VAE image tokenizer on the images of the training corpus; report held-out PSNR and SSIM.

    python tokenizers/train_image.py --config demo [--image_tokenizer.train_steps 400 ...]
    torchrun --nproc_per_node 2 tokenizers/train_image.py --config demo   # data parallel

A rerun into the same run folder resumes from the last checkpoint; TensorBoard
curves and reconstruction grids go to ``<run>/tokenizers/image/tensorboard``.
"""

from __future__ import annotations

from itertools import islice

import torch

from mmgen.cli import run_cli, start_stage
from mmgen.data.corpus import read_documents
from mmgen.data.obelics import CorpusError, ReadStats
from mmgen.device import cores_per_rank, rank_device, torchrun_rank
from mmgen.tokenizers.image import images_to_uint8
from mmgen.tokenizers.image_train import fit

MAX_HELDOUT_IMAGES = 1000
"""Held-out images scored for PSNR and codebook usage."""


def read_images(url: str, limit: int, image_size: int, options) -> torch.Tensor:
    """Up to ``limit`` images of a corpus as uint8 [N, H, W, 3], resized to the tokenizer's side."""
    stats = ReadStats()
    images = (image for doc in read_documents(url, options=options, stats=stats) for image in doc.images)
    pixels = images_to_uint8(list(islice(images, limit)), image_size)
    print(f"{url}: {len(pixels)} images; {stats.summary()}")
    return pixels.permute(0, 2, 3, 1)


def main() -> None:
    stage = start_stage("train_image", __doc__.strip().splitlines()[0])
    cfg, paths = stage.cfg, stage.paths
    rank, world = torchrun_rank()
    if world > 1:  # under torchrun: one process per rank, the quantizer syncs its codebook over this group
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(rank_device())
        torch.distributed.init_process_group(backend)
    torch.set_num_threads(cores_per_rank(world))
    tok_cfg = cfg.image_tokenizer
    # Training never sees more images than steps × batch, so reading more would only cost memory.
    train_url = cfg.data.train_corpus or paths.corpus_split("train")
    heldout_url = cfg.data.heldout_corpus or paths.corpus_split("heldout")
    train = read_images(train_url, tok_cfg.train_steps * tok_cfg.batch_size * world, tok_cfg.image_size, cfg.data)
    heldout = read_images(heldout_url, MAX_HELDOUT_IMAGES, tok_cfg.image_size, cfg.data)
    if len(train) == 0:
        raise CorpusError(f"{train_url} holds no readable images to train the image tokenizer on")
    _, metrics = fit(train, heldout, tok_cfg, paths.image_tokenizer)
    if rank == 0:
        stage.record_timing(**metrics)
        print(
            f"held-out PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}, "
            f"codebook usage {metrics['codebook_usage']:.1%}, code perplexity {metrics['code_perplexity']:.1f}"
        )
    if world > 1:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    run_cli(main)
