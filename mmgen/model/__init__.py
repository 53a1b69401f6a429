"""The early-fusion decoder (plain PyTorch; never imports torchtitan)."""

from mmgen.model.loss import per_token_loss
from mmgen.model.transformer import Transformer, TransformerBlock

__all__ = ["Transformer", "TransformerBlock", "per_token_loss"]
