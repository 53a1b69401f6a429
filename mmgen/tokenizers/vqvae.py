"""The VQ-VAE network of the image tokenizer: conv encoder, vector quantizer, conv decoder.

The encoder halves the resolution ``log2(downsample)`` times with stride-2
convolutions; the widest stage (``channels``) sits at the code grid and each
finer stage has half the channels of the next one, so every stage costs about
the same FLOPs and the full-resolution stages stay cheap on a CPU. The
quantizer is ``vector_quantize_pytorch.VectorQuantize`` with a low-dimensional
lookup (``codebook_dim``), k-means initialisation, EMA codebook updates and
dead-code restarts: together these keep most of the codebook in use. The
decoder mirrors the encoder with nearest-neighbour upsampling + convolution
(no checkerboard artefacts of transposed convolutions).

The quantizer always runs in float32, even under autocast: nearest-code search
in bfloat16 picks the wrong code too often.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from vector_quantize_pytorch import VectorQuantize

from mmgen.config.schema import ImageTokenizerConfig

ARCHITECTURE_FIELDS = (
    "image_size",
    "downsample",
    "channels",
    "res_blocks",
    "codebook_size",
    "codebook_dim",
    "commitment_weight",
    "ema_decay",
    "dead_code_threshold",
)


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=math.gcd(32, max(channels // 4, 1)), num_channels=channels, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            _norm(channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _stage_channels(channels: int, levels: int) -> list[int]:
    """Channels per resolution stage, finest first: halving towards full resolution, at least 16."""
    return [max(channels >> (levels - s), 16) for s in range(levels + 1)]


class Encoder(nn.Module):
    def __init__(self, *, channels: int, res_blocks: int, levels: int):
        super().__init__()
        widths = _stage_channels(channels, levels)
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for s in range(levels):
            layers += [ResBlock(widths[s]) for _ in range(res_blocks)]
            layers.append(nn.Conv2d(widths[s], widths[s + 1], 4, stride=2, padding=1))
        layers += [ResBlock(widths[-1]) for _ in range(res_blocks)]
        layers += [_norm(widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], channels, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, *, channels: int, res_blocks: int, levels: int):
        super().__init__()
        widths = _stage_channels(channels, levels)
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[-1], 3, padding=1)]
        layers += [ResBlock(widths[-1]) for _ in range(res_blocks)]
        for s in reversed(range(levels)):
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[s + 1], widths[s], 3, padding=1)]
            layers += [ResBlock(widths[s]) for _ in range(res_blocks)]
        layers += [_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class VQVAE(nn.Module):
    """Images in [-1, 1] (``[B, 3, H, W]``) ↔ code grids (``[B, H/downsample, W/downsample]``)."""

    def __init__(
        self,
        *,
        image_size: int,
        downsample: int,
        channels: int,
        res_blocks: int,
        codebook_size: int,
        codebook_dim: int,
        commitment_weight: float,
        ema_decay: float,
        dead_code_threshold: float,
    ):
        super().__init__()
        levels = int(round(math.log2(downsample)))
        if 2**levels != downsample or image_size % downsample:
            raise ValueError(f"downsample must be a power of two dividing image_size, got {downsample} for {image_size}")
        self.image_size = image_size
        self.downsample = downsample
        self.codebook_size = codebook_size
        self.encoder = Encoder(channels=channels, res_blocks=res_blocks, levels=levels)
        self.decoder = Decoder(channels=channels, res_blocks=res_blocks, levels=levels)
        self.quantizer = VectorQuantize(
            dim=channels,
            codebook_size=codebook_size,
            codebook_dim=codebook_dim,
            decay=ema_decay,
            commitment_weight=commitment_weight,
            kmeans_init=True,
            threshold_ema_dead_code=dead_code_threshold,
            accept_image_fmap=True,
        )

    @classmethod
    def from_config(cls, cfg: ImageTokenizerConfig) -> "VQVAE":
        return cls(**{name: getattr(cfg, name) for name in ARCHITECTURE_FIELDS})

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.downsample
        return side, side

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=z.device.type, enabled=False):
            return self.quantizer(z.float())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, codes ``[B, h, w]`` and the commitment loss."""
        quantized, codes, commit_loss = self._quantize(self.encoder(x))
        return self.decoder(quantized), codes, commit_loss.sum()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, codes, _ = self._quantize(self.encoder(x))
        return codes

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        # get_output_from_indices projects the wrong axis for image feature maps, so look up by hand.
        quantized = self.quantizer.project_out(self.quantizer.codebook[codes])
        return self.decoder(quantized.permute(0, 3, 1, 2))
