"""LoRA adapters on the attention and MLP projections (parameter-efficient fine-tuning).

``add_lora`` swaps each targeted ``nn.Linear`` for a ``LoRALinear`` that keeps
the frozen base weight and adds ``(alpha / rank) · B A x`` with ``B`` zero at
the start, so the adapted model begins as exactly the base model. Only the
adapters train; ``merge_lora`` folds them into the base weights and restores
plain ``nn.Linear`` modules, so a merged model exports like any other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

TARGETS = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, *, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device, dtype=base.weight.dtype))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device, dtype=base.weight.dtype))
        self.reset_adapter()

    @property
    def weight(self) -> torch.Tensor:
        # the frozen base weight, so code that initialises or inspects ``.weight`` treats this like the Linear it wraps
        return self.base.weight

    def reset_adapter(self) -> None:
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.T @ self.lora_b.T) * self.scale

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        linear = nn.Linear(self.base.in_features, self.base.out_features, bias=False,
                           device=self.base.weight.device, dtype=self.base.weight.dtype)
        linear.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
        return linear


def add_lora(model: nn.Module, *, rank: int, alpha: float, targets: tuple[str, ...] = TARGETS) -> nn.Module:
    """Freeze every parameter, then put trainable adapters on the targeted projections of every block."""
    for p in model.parameters():
        p.requires_grad_(False)
    for block in model.layers.values():
        for owner in (block.attention, block.feed_forward):
            for name in targets:
                if isinstance(getattr(owner, name, None), nn.Linear):
                    setattr(owner, name, LoRALinear(getattr(owner, name), rank=rank, alpha=alpha))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight; the result has the plain model's modules and state-dict keys."""
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, name, child.merged())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapter weights (what a LoRA run needs to save)."""
    return {k: v for k, v in model.state_dict().items() if k.endswith(("lora_a", "lora_b"))}


def trainable_share(model: nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / max(total, 1)
