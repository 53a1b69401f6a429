"""The VQ-VAE network of the image tokenizer, in the VQGAN family (taming-transformers layout).

Module names and shapes follow VQGAN as Chameleon's tokenizer uses it, so its
released weights map onto this network key for key (``mmgen.interop.chameleon_vqvae``):
``encoder.{conv_in, down[i].block[j], down[i].attn[j], down[i].downsample,
mid.{block_1, attn_1, block_2}, norm_out, conv_out}``, ``quant_conv``, the
quantizer, ``post_quant_conv`` and a decoder that mirrors the encoder with one
more residual block per level and nearest-neighbour upsampling + convolution.

Stage widths are ``channels · m / max(m)`` for the ``channel_multipliers`` m
(finest first); without multipliers each finer stage has half the channels of
the next, at least 16, so every stage costs about the same FLOPs and full
resolution stays cheap on a CPU.

``image_tokenizer.encoder patch`` swaps in ``PatchEncoder``: each code from its own patch alone, so equal
patches get equal codes (the VQGAN encoder writes an empty shapes-world image with dozens of codes). Its
weights do not map onto Chameleon's; the decoder is the same either way.

``quant_conv`` projects the latent to the lookup space (``codebook_dim`` for a
codebook, ``len(fsq_levels)`` for FSQ): a low-dimensional lookup, with k-means
initialisation, EMA updates and dead-code restarts, keeps most of a codebook in
use. The quantizer always runs in float32, even under autocast: nearest-code
search in bfloat16 picks the wrong code too often.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from vector_quantize_pytorch import FSQ, VectorQuantize

from mmgen.config.schema import ImageTokenizerConfig

NORM_GROUPS = 32
"""GroupNorm groups of VQGAN; by default narrow stages use fewer so each group keeps at least 4 channels."""


def _norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups or math.gcd(NORM_GROUPS, max(channels // 4, 1)), channels, eps=1e-6)


def stage_widths(cfg: ImageTokenizerConfig) -> tuple[int, list[int]]:
    """``(stem width, [width per resolution stage, finest first])``; checks downsample and multipliers agree."""
    levels = int(round(math.log2(cfg.downsample)))
    if 2**levels != cfg.downsample or cfg.image_size % cfg.downsample:
        raise ValueError(f"downsample must be a power of 2 dividing image_size, not {cfg.downsample} for {cfg.image_size}")
    mults = tuple(cfg.channel_multipliers)
    if not mults:
        widths = [max(cfg.channels >> (levels - s), 16) for s in range(levels + 1)]
        return widths[0], widths
    if len(mults) != levels + 1:
        raise ValueError(f"{len(mults)} channel_multipliers need downsample {2 ** (len(mults) - 1)}, not {cfg.downsample}")
    if cfg.channels % max(mults):
        raise ValueError(f"channels {cfg.channels} is not a multiple of the largest channel multiplier {max(mults)}")
    base = cfg.channels // max(mults)
    return base, [base * m for m in mults]


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = _norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = _norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the pixels of a feature map (1×1 conv projections)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).reshape(b, 1, c, h * w).transpose(-1, -2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # VQGAN pads right and bottom only, so a 3×3 stride-2 conv halves the side exactly.
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # nearest + conv instead of a transposed conv: no checkerboard artefacts
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Level(nn.Module):
    """One resolution stage: residual blocks, optional attention after each, optional resampling."""

    def __init__(self, widths: list[tuple[int, int]], groups: int, attention: bool, resample: nn.Module | None, name: str):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(i, o, groups) for i, o in widths)
        self.attn = nn.ModuleList(AttnBlock(o, groups) for _, o in widths) if attention else nn.ModuleList()
        if resample is not None:
            self.add_module(name, resample)
        self.resample = name if resample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return getattr(self, self.resample)(x) if self.resample else x


class _Mid(nn.Module):
    def __init__(self, channels: int, groups: int, attention: bool):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups) if attention else nn.Identity()
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        base, widths = stage_widths(cfg)
        side, last = cfg.image_size, len(widths) - 1
        self.conv_in = nn.Conv2d(3, base, 3, padding=1)
        self.down = nn.ModuleList()
        block_in = base
        for level, width in enumerate(widths):
            pairs = [(block_in if j == 0 else width, width) for j in range(cfg.res_blocks)]
            resample = Downsample(width) if level != last else None
            self.down.append(_Level(pairs, cfg.norm_groups, side in cfg.attention_resolutions, resample, "downsample"))
            block_in, side = width, side // 2 if level != last else side
        self.mid = _Mid(block_in, cfg.norm_groups, cfg.attention_at_lowest)
        self.norm_out = _norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, cfg.latent_channels or cfg.channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each position alone: unlike GroupNorm, no statistic spans the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class PatchBlock(nn.Module):
    """A residual MLP applied at each code position (1×1 convolutions): it mixes channels, never positions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = ChannelNorm(channels, eps=1e-6)
        self.fc1 = nn.Conv2d(channels, 4 * channels, 1)
        self.fc2 = nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.silu(self.fc1(self.norm(x))))


class PatchEncoder(nn.Module):
    """Each code from its own patch only: a patch embedding (kernel = stride = downsample), per-position MLP blocks.

    The VQGAN encoder's codes also depend on far pixels, on zero padding at the border and on image-wide GroupNorm
    statistics, so one flat background patch is written with many codes depending on what else the image holds.
    Here equal patches always get equal codes, which leaves the language model one code per patch content to
    learn. The decoder keeps its spatial context: reconstruction still sees the neighbours.
    """

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        width = cfg.channels
        self.conv_in = nn.Conv2d(3, width, cfg.downsample, stride=cfg.downsample)
        self.blocks = nn.Sequential(*(PatchBlock(width) for _ in range(cfg.res_blocks)))
        self.norm_out = ChannelNorm(width, eps=1e-6)
        self.conv_out = nn.Conv2d(width, cfg.latent_channels or cfg.channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.norm_out(self.blocks(self.conv_in(x)))))


class Decoder(nn.Module):
    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        _, widths = stage_widths(cfg)
        side = cfg.image_size // cfg.downsample
        block_in = widths[-1]
        self.conv_in = nn.Conv2d(cfg.latent_channels or cfg.channels, block_in, 3, padding=1)
        self.mid = _Mid(block_in, cfg.norm_groups, cfg.attention_at_lowest)
        levels: list[_Level] = []
        for level in reversed(range(len(widths))):
            width = widths[level]
            pairs = [(block_in if j == 0 else width, width) for j in range(cfg.res_blocks + 1)]
            resample = Upsample(width) if level != 0 else None
            levels.insert(0, _Level(pairs, cfg.norm_groups, side in cfg.attention_resolutions, resample, "upsample"))
            block_in, side = width, side * 2 if level != 0 else side
        self.up = nn.ModuleList(levels)  # indexed by level, finest first, as in VQGAN
        self.norm_out = _norm(block_in, cfg.norm_groups)
        self.conv_out = nn.Conv2d(block_in, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


def _quantizer(cfg: ImageTokenizerConfig) -> nn.Module:
    if cfg.quantizer == "fsq":
        if math.prod(cfg.fsq_levels) != cfg.codebook_size:
            raise ValueError(f"fsq_levels {tuple(cfg.fsq_levels)} make {math.prod(cfg.fsq_levels)} codes; set codebook_size to it")
        return FSQ(levels=list(cfg.fsq_levels), dim=len(cfg.fsq_levels))
    return VectorQuantize(
        dim=cfg.codebook_dim,
        codebook_size=cfg.codebook_size,
        decay=cfg.ema_decay,
        commitment_weight=cfg.commitment_weight,
        kmeans_init=cfg.kmeans_init,
        threshold_ema_dead_code=cfg.dead_code_threshold,
        use_cosine_sim=cfg.cosine_lookup,
        accept_image_fmap=True,
        # codebook sync under torch.distributed is decided here, at construction: build after init_process_group
    )


class VQVAE(nn.Module):
    """Images in [-1, 1] (``[B, 3, H, W]``) ↔ code grids (``[B, H/downsample, W/downsample]``)."""

    def __init__(self, cfg: ImageTokenizerConfig):
        super().__init__()
        stage_widths(cfg)  # validates the geometry before any allocation
        self.image_size = cfg.image_size
        self.downsample = cfg.downsample
        self.codebook_size = cfg.codebook_size
        self.kind = cfg.quantizer
        lookup_dim = len(cfg.fsq_levels) if cfg.quantizer == "fsq" else cfg.codebook_dim
        latent = cfg.latent_channels or cfg.channels
        self.encoder = PatchEncoder(cfg) if cfg.encoder == "patch" else Encoder(cfg)
        self.quant_conv = nn.Conv2d(latent, lookup_dim, 1)
        self.quantizer = _quantizer(cfg)
        self.post_quant_conv = nn.Conv2d(lookup_dim, latent, 1)
        self.decoder: Decoder | None = Decoder(cfg)

    @classmethod
    def from_config(cls, cfg: ImageTokenizerConfig) -> "VQVAE":
        return cls(cfg)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.image_size // self.downsample
        return side, side

    def _quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = self.quant_conv(z.float())
            if self.kind == "fsq":
                quantized, codes = self.quantizer(z)
                return quantized, codes, z.new_zeros(())
            quantized, codes, commit_loss = self.quantizer(z)
            return quantized, codes, commit_loss.sum()

    def _decode_quantized(self, quantized: torch.Tensor) -> torch.Tensor:
        if self.decoder is None:
            raise ValueError("this image tokenizer holds no decoder weights; it can encode images but not decode codes")
        return self.decoder(self.post_quant_conv(quantized))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruction, codes ``[B, h, w]`` and the commitment loss."""
        quantized, codes, commit_loss = self._quantize(self.encoder(x))
        return self._decode_quantized(quantized), codes, commit_loss

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        _, codes, _ = self._quantize(self.encoder(x))
        return codes

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Code grid ``[B, h, w]`` → quantized vectors ``[B, lookup_dim, h, w]`` (float32)."""
        if self.kind == "fsq":
            return self.quantizer.indices_to_codes(codes).float()
        # VectorQuantize.get_output_from_indices projects the wrong axis for image maps: look up by hand.
        return self.quantizer.codebook[codes].permute(0, 3, 1, 2).float()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self._decode_quantized(self.codes_to_vectors(codes))
