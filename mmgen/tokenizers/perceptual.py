"""A perceptual (LPIPS-style) reconstruction loss from VGG16 weights the user already has on disk.

Nothing is downloaded: ``image_tokenizer.perceptual_weights`` names a
safetensors file holding VGG16's convolutional stack under torchvision's key
names (``features.<i>.weight`` / ``.bias``), optionally with LPIPS's per-layer
channel weights (``lin<k>.weight`` of shape [1, C, 1, 1]). The loss compares
unit-normalised activations after each of VGG16's five stages, as LPIPS does;
without the LPIPS weights every channel counts equally.
"""

from __future__ import annotations

import fsspec
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from torch import nn

# VGG16's convolution widths; "M" is a 2x2 max-pool. Activations are read just before each pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# ImageNet statistics VGG was trained with, for inputs in [-1, 1] mapped to [0, 1]
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


class PerceptualLoss(nn.Module):
    def __init__(self, weights_path: str):
        super().__init__()
        fs, local = fsspec.core.url_to_fs(weights_path)
        if not fs.exists(local):
            raise FileNotFoundError(f"missing perceptual-loss weights {weights_path} (VGG16 features as safetensors; never downloaded)")
        with fs.open(local, "rb") as f:
            state = load_safetensors(f.read())
        layers: list[nn.Module] = []
        channels = 3
        for width in _VGG16:
            if width == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
                channels = width
        self.features = nn.Sequential(*layers)
        self.features.load_state_dict({k[len("features."):]: v for k, v in state.items() if k.startswith("features.")})
        self.taps = [i - 1 for i, m in enumerate(self.features) if isinstance(m, nn.MaxPool2d)]
        lins = [state.get(f"lin{k}.weight") for k in range(len(self.taps))]
        self.lins = None if any(w is None for w in lins) else [w.flatten() for w in lins]
        self.register_buffer("mean", torch.tensor(_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_STD).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def _activations(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = ((x + 1) / 2 - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                out.append(h)
            if len(out) == len(self.taps):
                break
        return out

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean perceptual distance of two batches of images in [-1, 1], [B, 3, H, W]."""
        total = recon.new_zeros(())
        for k, (a, b) in enumerate(zip(self._activations(recon), self._activations(target))):
            diff = (F.normalize(a, dim=1) - F.normalize(b, dim=1)).square()
            if self.lins is not None:
                diff = diff * self.lins[k].to(diff).view(1, -1, 1, 1)
            total = total + diff.sum(1).mean()
        return total
