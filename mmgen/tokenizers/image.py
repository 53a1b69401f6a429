"""The image tokenizer: a trained VQ-VAE that turns images into code grids and back.

Notable choices:
- ``ImageTokenizer`` is the whole public surface the pipeline uses: ``load``,
  ``encode`` (images → ``[B, h, w]`` long codes), ``decode`` (codes → uint8
  ``[B, H, W, 3]``), ``evaluate`` and ``save``. Training lives in
  ``mmgen.tokenizers.image_train``.
- Encoder and decoder run in the config's ``precision`` (bf16 where the hardware
  computes it natively, by default); the quantizer stays float32.
- Held-out PSNR is computed on uint8 images, from the mean squared error over
  every held-out pixel (not a mean of per-image PSNRs, which a few perfectly
  reconstructed images would inflate). SSIM is the usual 11×11 Gaussian-window
  SSIM on uint8 values, averaged over pixels, channels and images.
- Everything written to ``out_dir`` is safetensors or JSON, through fsspec. A
  tokenizer imported without decoder weights (Hugging Face's Chameleon ships the
  encoder only) saves and loads without them and refuses to decode.
"""

from __future__ import annotations

import dataclasses
import json
import math
import posixpath
from typing import Sequence, Union

import fsspec
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from mmgen.config.schema import ImageTokenizerConfig
from mmgen.device import compute_dtype
from mmgen.files import CorruptFileError, reading, write_atomic
from mmgen.tokenizers.vqvae import VQVAE

Images = Union[Sequence[Image.Image], torch.Tensor]
"""A list of PIL images, or a uint8 tensor ``[B, H, W, 3]``."""

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
EVAL_BATCH = 256  # images a forward pass encodes or decodes at once (memory)


def _fit(image: Image.Image, image_size: int, resize: str) -> Image.Image:
    if resize == "center_crop":  # Chameleon's: shorter side to the target, centre crop, transparency on white
        if "A" in image.getbands() or "transparency" in image.info:
            rgba = image.convert("RGBA")
            image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
        image = image.convert("RGB")
        if image.size == (image_size, image_size):
            return image
        scale = image_size / min(image.size)
        # the longer side truncated, as transformers' ChameleonImageProcessor sizes it
        w, h = max(image_size, int(image.width * scale)), max(image_size, int(image.height * scale))
        image = image.resize((w, h), Image.Resampling.LANCZOS)
        left, top = (w - image_size) // 2, (h - image_size) // 2
        return image.crop((left, top, left + image_size, top + image_size))
    image = image.convert("RGB")
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BICUBIC)
    return image


def images_to_uint8(images: Images, image_size: int, resize: str = "stretch") -> torch.Tensor:
    """uint8 ``[B, 3, S, S]``; PIL images of another size are fitted (``resize``: see ImageTokenizerConfig), tensors must match."""
    if isinstance(images, torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a uint8 tensor [B, H, W, 3], got {images.dtype} {tuple(images.shape)}")
        if tuple(images.shape[1:3]) != (image_size, image_size):
            raise ValueError(f"expected {image_size}x{image_size} images, got {tuple(images.shape[1:3])}")
        return images.permute(0, 3, 1, 2).contiguous()
    arrays = []
    for image in images:
        arrays.append(np.asarray(_fit(image, image_size, resize), dtype=np.uint8))
    if not arrays:
        return torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def pixels_to_model(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 pixels ``[B, 3, H, W]`` -> the model's float input in [-1, 1] on ``device``."""
    return x.to(device, non_blocking=True).float().div_(127.5).sub_(1.0)


def model_to_pixels(x: torch.Tensor) -> torch.Tensor:
    """The model's [-1, 1] output -> uint8 pixels."""
    return x.float().add(1.0).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def psnr_from_mse(mse: float) -> float:
    return 10.0 * math.log10(255.0**2 / max(mse, 1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM of two uint8 batches ``[B, 3, H, W]`` (Gaussian window 11, σ 1.5, 'valid' borders).

    Images smaller than the window use a window as large as the image.
    """
    size = min(11, a.shape[-1], a.shape[-2])
    window = _gaussian_window(size, 1.5 * size / 11).to(torch.float64)[None, None].repeat(3, 1, 1, 1)
    x, y = a.double(), b.double()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    ssim_map = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim_map.mean().item()


def code_statistics(codes: torch.Tensor, codebook_size: int) -> dict[str, float]:
    """Share of the codebook used and perplexity (exp of entropy) of the code histogram."""
    counts = torch.bincount(codes.flatten(), minlength=codebook_size).double()
    probs = counts / counts.sum().clamp(min=1)
    entropy = -(probs[probs > 0] * probs[probs > 0].log()).sum().item()
    return {"codebook_usage": (counts > 0).double().mean().item(), "code_perplexity": math.exp(entropy)}


def autocast(device: torch.device, dtype: torch.dtype):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16)


class ImageTokenizer:
    """A trained VQ-VAE: ``encode`` images to ``[B, h, w]`` codes, ``decode`` codes to uint8 ``[B, H, W, 3]``."""

    def __init__(self, *, model: VQVAE, config: ImageTokenizerConfig, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.dtype = compute_dtype(config.precision, self.device)

    @classmethod
    def load(cls, out_dir: str, device: torch.device | str = "cpu") -> "ImageTokenizer":
        config_path, weights_path = posixpath.join(out_dir, CONFIG_FILE), posixpath.join(out_dir, WEIGHTS_FILE)
        with fsspec.open(config_path, "r") as f, reading(config_path, "image tokenizer config"):
            fields = json.load(f)
            known = {f.name: f for f in dataclasses.fields(ImageTokenizerConfig)}
            # JSON turns tuples into lists; the config keeps them as tuples
            config = ImageTokenizerConfig(
                **{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items() if k in known}
            )
            model = VQVAE.from_config(config)
        with fsspec.open(weights_path, "rb") as f, reading(weights_path, f"image tokenizer weights for {CONFIG_FILE}", also=(SafetensorError,)):
            state = load_safetensors(f.read())
            if any(k.startswith("encoder.net.") for k in state):
                raise CorruptFileError(f"{out_dir} holds an image tokenizer of mmgen's earlier VQ-VAE layout; retrain it")
            if not any(k.startswith("decoder.") for k in state):
                model.decoder = None
            model.load_state_dict(state)
        return cls(model=model, config=config, device=device)

    @property
    def grid(self) -> tuple[int, int]:
        return self.model.grid

    @property
    def can_decode(self) -> bool:
        """False for a tokenizer imported without decoder weights: it encodes images but cannot render codes."""
        return self.model.decoder is not None

    @property
    def codebook_size(self) -> int:
        return self.model.codebook_size

    @property
    def image_size(self) -> int:
        return self.model.image_size

    @torch.no_grad()
    def encode(self, images: Images) -> torch.Tensor:
        pixels = images_to_uint8(images, self.image_size, self.config.resize)
        codes = []
        for batch in pixels.split(EVAL_BATCH):
            with autocast(self.device, self.dtype):
                codes.append(self.model.encode(pixels_to_model(batch, self.device)).cpu())
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
        for batch in codes.split(EVAL_BATCH):
            with autocast(self.device, self.dtype):
                images.append(model_to_pixels(self.model.decode(batch.to(self.device))).permute(0, 2, 3, 1).cpu())
        if not images:
            return torch.empty(0, self.image_size, self.image_size, 3, dtype=torch.uint8)
        return torch.cat(images)

    def evaluate(self, images: Images) -> dict[str, float]:
        """Held-out PSNR (dB, uint8 range), SSIM, codebook usage and code perplexity."""
        pixels = images_to_uint8(images, self.image_size, self.config.resize)
        codes = self.encode(pixels.permute(0, 2, 3, 1))
        recon = self.decode(codes).permute(0, 3, 1, 2)
        mse = (recon.float() - pixels.float()).pow(2).mean().item()
        return {"psnr": psnr_from_mse(mse), "ssim": ssim(recon, pixels), **code_statistics(codes, self.codebook_size)}

    def save(self, out_dir: str, metrics: dict | None = None) -> None:
        """Weights, config and metrics; each file is written under a temporary name and then renamed."""
        fs, root = fsspec.core.url_to_fs(out_dir)
        fs.makedirs(root, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        write_atomic(posixpath.join(root, WEIGHTS_FILE), save_safetensors(state), fs)
        config = json.dumps(dataclasses.asdict(self.config), indent=2).encode()
        write_atomic(posixpath.join(root, CONFIG_FILE), config, fs)
        if metrics is not None:
            write_atomic(posixpath.join(root, METRICS_FILE), json.dumps(metrics, indent=2).encode(), fs)
