"""The image tokenizer: train a VQ-VAE, then turn images into code grids and back.

Notable choices:
- Training stops at ``train_steps`` or ``max_train_seconds``, whichever comes
  first, and the learning-rate schedule (linear warm-up, cosine decay to 10%)
  follows whichever budget is binding, so a run cut short by the clock still
  ends with a low learning rate instead of stopping mid-plateau.
- Reconstruction loss is MSE + L1: MSE is what PSNR measures, L1 keeps the
  flat regions and hard edges of drawn images crisp.
- Encoder and decoder run under bfloat16 autocast where the hardware computes
  bf16 natively (AVX512-BF16 CPUs, recent GPUs); the quantizer stays float32.
- Held-out PSNR is computed on uint8 images, from the mean squared error over
  every held-out pixel (not a mean of per-image PSNRs, which a few perfectly
  reconstructed images would inflate).
- Everything written to ``out_dir`` is safetensors or JSON, through fsspec.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import posixpath
import time
from typing import Callable, Sequence, Union

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from mmgen.config.schema import ImageTokenizerConfig
from mmgen.device import bf16_supported, default_device
from mmgen.tokenizers.vqvae import VQVAE

Images = Union[Sequence[Image.Image], torch.Tensor]
"""A list of PIL images, or a uint8 tensor ``[B, H, W, 3]``."""

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
_EVAL_BATCH = 256


def images_to_uint8(images: Images, image_size: int) -> torch.Tensor:
    """uint8 ``[B, 3, S, S]``; PIL images of another size are resized (bicubic), tensors must match."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a uint8 tensor [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        if tuple(images.shape[1:3]) != (image_size, image_size):
            raise ValueError(f"expected {image_size}x{image_size} images, got {tuple(images.shape[1:3])}")
        return images.permute(0, 3, 1, 2).contiguous()
    arrays = []
    for image in images:
        image = image.convert("RGB")
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(image, dtype=np.uint8))
    if not arrays:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _to_model(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def psnr_from_mse(mse: float) -> float:
    return 10.0 * math.log10(255.0**2 / max(mse, 1e-10))


def code_statistics(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Share of the codebook used and perplexity (exp of entropy) of the code histogram."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    return {"codebook_usage": (counts > 0).double().mean().item(), "code_perplexity": math.exp(entropy)}


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


class ImageTokenizer:
    """A trained VQ-VAE: ``encode`` images to ``[B, h, w]`` codes, ``decode`` codes to uint8 ``[B, H, W, 3]``."""

    def __init__(self, *, model: VQVAE, config: ImageTokenizerConfig, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self._bf16 = bf16_supported(self.device)

    @classmethod
    def load(cls, out_dir: str, device: torch.device | str = "cpu") -> "ImageTokenizer":
        with fsspec.open(posixpath.join(out_dir, CONFIG_FILE), "r") as f:
            fields = json.load(f)
        known = {f.name for f in dataclasses.fields(ImageTokenizerConfig)}
        config = ImageTokenizerConfig(**{k: v for k, v in fields.items() if k in known})
        model = VQVAE.from_config(config)
        with fsspec.open(posixpath.join(out_dir, WEIGHTS_FILE), "rb") as f:
            model.load_state_dict(load_safetensors(f.read()))
        return cls(model=model, config=config, device=device)

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.grid

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @torch.no_grad()
    def encode(self, images: Images) -> torch.Tensor:
        pixels = images_to_uint8(images, self.image_size)
        codes = []
        for batch in pixels.split(_EVAL_BATCH):
            with _autocast(self.device, self._bf16):
                codes.append(self.model.encode(_to_model(batch, self.device)).cpu())
        if not codes:
            return torch.empty(0, *self.grid, dtype=torch.long)
        return torch.cat(codes).long()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        codes = torch.as_tensor(codes, dtype=torch.long)
        if codes.ndim != 3 or tuple(codes.shape[1:]) != self.grid:
            raise ValueError(f"expected codes [B, {self.grid[0]}, {self.grid[1]}], got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size})")
        images = []
        for batch in codes.split(_EVAL_BATCH):
            with _autocast(self.device, self._bf16):
                images.append(_to_uint8(self.model.decode(batch.to(self.device))).permute(0, 2, 3, 1).cpu())
        if not images:
            return torch.empty(0, self.image_size, self.image_size, 3, dtype=torch.uint8)
        return torch.cat(images)

    def evaluate(self, images: Images) -> dict[str, float]:
        """Held-out PSNR (dB, uint8 range), codebook usage and code perplexity."""
        pixels = images_to_uint8(images, self.image_size)
        codes = self.encode(pixels.permute(0, 2, 3, 1))
        recon = self.decode(codes).permute(0, 3, 1, 2)
        mse = (recon.float() - pixels.float()).pow(2).mean().item()
        return {"psnr": psnr_from_mse(mse), **code_statistics(codes, self.codebook_size)}

    def save(self, out_dir: str, metrics: dict | None = None) -> None:
        fs, root = fsspec.core.url_to_fs(out_dir)
        fs.makedirs(root, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with fs.open(posixpath.join(root, WEIGHTS_FILE), "wb") as f:
            f.write(save_safetensors(state))
        with fs.open(posixpath.join(root, CONFIG_FILE), "w") as f:
            json.dump(dataclasses.asdict(self.config), f, indent=2)
        if metrics is not None:
            with fs.open(posixpath.join(root, METRICS_FILE), "w") as f:
                json.dump(metrics, f, indent=2)


def _learning_rate(cfg: ImageTokenizerConfig, progress: float, step: int, warmup: int) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def train_image_tokenizer(
    train_images: Images,
    heldout_images: Images,
    cfg: ImageTokenizerConfig,
    out_dir: str,
    log: Callable[[str], None] = print,
    *,
    device: torch.device | str | None = None,
    log_every: int = 50,
) -> dict:
    """Train the VQ-VAE on ``train_images``, save it to ``out_dir`` and return held-out metrics."""
    device = torch.device(device) if device is not None else default_device()
    use_bf16 = bf16_supported(device)
    pixels = images_to_uint8(train_images, cfg.image_size)
    heldout = images_to_uint8(heldout_images, cfg.image_size)
    if len(pixels) == 0:
        raise ValueError("no training images for the image tokenizer")
    torch.manual_seed(cfg.seed)
    model = VQVAE.from_config(cfg).to(device).train()
    params = list(model.parameters())
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.99),
    )
    generator = torch.Generator().manual_seed(cfg.seed)
    batch_size = min(cfg.batch_size, len(pixels))
    warmup = max(1, min(100, cfg.train_steps // 20))
    log(
        f"image tokenizer: {sum(p.numel() for p in params) / 1e6:.2f}M parameters, {len(pixels)} train / "
        f"{len(heldout)} held-out images, grid {model.grid}, codebook {cfg.codebook_size}, "
        f"{'bf16' if use_bf16 else 'fp32'} on {device}"
    )

    start = time.perf_counter()
    order, cursor, step = torch.randperm(len(pixels), generator=generator), 0, 0
    window_loss, window_mse, window_codes = 0.0, 0.0, []
    while step < cfg.train_steps:
        elapsed = time.perf_counter() - start
        if cfg.max_train_seconds > 0 and elapsed >= cfg.max_train_seconds:
            break
        progress = step / cfg.train_steps
        if cfg.max_train_seconds > 0:
            progress = max(progress, elapsed / cfg.max_train_seconds)
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(cfg, progress, step, warmup)

        if cursor + batch_size > len(pixels):
            order, cursor = torch.randperm(len(pixels), generator=generator), 0
        x = _to_model(pixels[order[cursor : cursor + batch_size]], device)
        cursor += batch_size
        with _autocast(device, use_bf16):
            recon, codes, commit_loss = model(x)
        recon = recon.float()
        mse = F.mse_loss(recon, x)
        loss = mse + F.l1_loss(recon, x) + commit_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1

        window_loss += loss.item()
        window_mse += mse.item()
        window_codes.append(codes.detach().flatten().cpu())
        if step % log_every == 0 or step == cfg.train_steps:
            n = len(window_codes)
            usage = code_statistics(torch.cat(window_codes), cfg.codebook_size)["codebook_usage"]
            # mse is on [-1, 1] images: 255² / (mse · 127.5²) = 4 / mse
            log(
                f"image tokenizer step {step}: loss {window_loss / n:.4f} "
                f"train psnr {10 * math.log10(4 / max(window_mse / n, 1e-12)):.2f} dB "
                f"usage {usage:.2f} lr {optimizer.param_groups[0]['lr']:.2e} "
                f"{step / (time.perf_counter() - start):.2f} steps/s"
            )
            window_loss, window_mse, window_codes = 0.0, 0.0, []

    seconds = time.perf_counter() - start
    tokenizer = ImageTokenizer(model=model, config=cfg, device=device)
    metrics = {"train_steps": step, "train_seconds": seconds, "steps_per_second": step / max(seconds, 1e-9)}
    # Without held-out images, the metrics describe (a slice of) the training set and say so.
    metrics["eval_split"] = "heldout" if len(heldout) else "train"
    metrics.update(tokenizer.evaluate((heldout if len(heldout) else pixels[:_EVAL_BATCH]).permute(0, 2, 3, 1)))
    tokenizer.save(out_dir, metrics)
    log(
        "image tokenizer: "
        + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        + f" -> {out_dir}"
    )
    return metrics
