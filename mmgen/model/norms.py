"""Normalisation layers of the decoder.

Statistics are computed in float32 whatever the input dtype: under FSDP2
mixed precision activations arrive in bf16, where a mean of squares loses too
much precision. RMSNorm is written out (as in HF Llama) because eager
``F.rms_norm`` was 2-3x slower on CPU, forward+backward, in bf16 and fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, *, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.square().mean(-1, keepdim=True) + self.eps)
        return y.to(x.dtype) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


class HeadLayerNorm(nn.Module):
    """LayerNorm over ``head_dim`` with one affine (weight, bias) per head.

    This is Chameleon's QK-norm in Hugging Face's layout (``normalized_shape =
    (n_heads, head_dim)`` storage, statistics over ``head_dim`` only), so HF
    weights load as they are (up to the RoPE permutation, see rope.py).
    Input: [..., n_heads, head_dim]. The output stays float32 because RoPE,
    which always follows, computes in float32 anyway.
    """

    def __init__(self, n_heads: int, head_dim: int, *, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(n_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(n_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x.float(), (x.shape[-1],), eps=self.eps)
        return y * self.weight.float() + self.bias.float()

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
