"""The early-fusion decoder (plain PyTorch; never imports torchtitan)."""

from mmgen.model.loss import lm_loss, per_token_loss
from mmgen.model.transformer import Transformer, TransformerBlock

__all__ = ["Transformer", "TransformerBlock", "lm_loss", "per_token_loss"]
