"""Rotary position embedding, interleaved convention (Meta Llama / Chameleon, torchtitan).

Dimensions (2i, 2i+1) of each head vector form a rotated pair, i.e. the head
vector is read as head_dim/2 complex numbers and multiplied by e^{i·pos·θ_i}.
This is the convention of Chameleon's released code; Hugging Face checkpoints
use rotate-half instead (their converter permutes the rows of wq/wk and the
QK-norm affine within each head), so HF import/export must apply or undo that
permutation. Interleaved was chosen because the complex multiply is the
fastest eager formulation on CPU (about 4x cheaper in forward+backward than a
float32 rotate-half with cat/neg); under torch.compile the same rotation is
written in real arithmetic, which inductor fuses.

The rotation factors are computed from the position tensor at forward time,
not looked up in a buffer: the model then has no buffers to rebuild after
meta-device init, and positions may be anything (restarting per packed
document, per-sequence slots in a KV cache). All rotation math is float32.
"""

from __future__ import annotations

import torch


def rope_rotation(positions: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """positions [B, T] (integers) -> float32 (cos, sin) of each pair's angle, [B, T, 1, head_dim/2, 2].

    Real, not complex: it enters torch.compile'd blocks, and inductor generates
    no code for complex tensors.
    """
    exponents = torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim
    inv_freq = theta**-exponents
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return torch.stack([angles.cos(), angles.sin()], dim=-1)[:, :, None]


def apply_rope(x: torch.Tensor, rotation: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """x [B, T, H, D] (any dtype) -> rotated x in ``dtype`` (default: x's dtype)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    rotation = rotation.float()  # a caller's mixed-precision policy may have cast it down
    if torch.compiler.is_compiling():
        # Inside a compiled graph the real formulation fuses into one kernel with its neighbours.
        x0, x1, cos, sin = pairs[..., 0], pairs[..., 1], rotation[..., 0], rotation[..., 1]
        rotated = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    else:
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rotation))
    return rotated.flatten(-2).to(dtype or x.dtype)
