"""A CLIP/SigLIP-style dual encoder over mmgen's own tokens.

Both towers read token ids rather than pixels and strings: the text tower reads
SentencePiece ids, the image tower reads the VQ code grid. So a document can be
embedded straight from the token shards (no image decoding), and the neighbour
table lines up with the shards by construction. Each tower is a small
transformer encoder with mean pooling; training uses the sigmoid loss, which
works with small batches. A document's embedding is the normalised mean of the
embeddings of its text and its images, as in CM3leon.
"""

from __future__ import annotations

import json
import math
import posixpath
from dataclasses import asdict, dataclass
from typing import Sequence

import fsspec
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from mmgen.files import write_atomic


@dataclass
class EncoderShape:
    text_vocab_size: int
    codebook_size: int
    grid: tuple[int, int]
    width: int = 128
    layers: int = 2
    heads: int = 4
    embed_dim: int = 64
    max_text_tokens: int = 96


class _Tower(nn.Module):
    def __init__(self, *, vocab: int, length: int, width: int, layers: int, heads: int, embed_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.position = nn.Parameter(torch.randn(length, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.project = nn.Linear(width, embed_dim)

    def forward(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids) + self.position[: ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=~valid)
        pooled = (h * valid.unsqueeze(-1)).sum(1) / valid.sum(1, keepdim=True).clamp(min=1)
        return F.normalize(self.project(pooled), dim=-1)


class DualEncoder(nn.Module):
    """Text ids [B, L] (+ validity mask) and code grids [B, h, w] → unit vectors of ``embed_dim``."""

    def __init__(self, shape: EncoderShape):
        super().__init__()
        self.shape = shape
        tower = dict(width=shape.width, layers=shape.layers, heads=shape.heads, embed_dim=shape.embed_dim)
        self.text = _Tower(vocab=shape.text_vocab_size, length=shape.max_text_tokens, **tower)
        self.image = _Tower(vocab=shape.codebook_size, length=shape.grid[0] * shape.grid[1], **tower)
        # SigLIP's initialisation: temperature 10, bias -10 (most pairs are negatives)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))
        self.logit_bias = nn.Parameter(torch.tensor(-10.0))

    @property
    def dim(self) -> int:
        return self.shape.embed_dim

    def embed_text(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.text(ids[:, : self.shape.max_text_tokens], valid[:, : self.shape.max_text_tokens])

    def embed_image(self, codes: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        flat = codes.flatten(1)
        valid = torch.ones_like(flat, dtype=torch.bool) if valid is None else valid.flatten(1)
        return self.image(flat, valid)

    def sigmoid_loss(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """Pairwise sigmoid loss: the i-th image matches the i-th text, every other pair is a negative."""
        logits = image_emb @ text_emb.T * self.logit_scale.exp() + self.logit_bias
        labels = 2 * torch.eye(len(logits), device=logits.device) - 1
        return -F.logsigmoid(labels * logits).sum() / len(logits)

    def save(self, folder: str) -> None:
        fs, root = fsspec.core.url_to_fs(folder)
        fs.makedirs(root, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        for name, data in (("encoder.safetensors", save_safetensors(state)), ("encoder.json", json.dumps(asdict(self.shape)).encode())):
            write_atomic(posixpath.join(root, name), data, fs)

    @classmethod
    def load(cls, folder: str, device: torch.device | str = "cpu") -> "DualEncoder":
        fs, root = fsspec.core.url_to_fs(folder)
        if not fs.exists(posixpath.join(root, "encoder.json")):
            raise FileNotFoundError(f"missing input {folder}/encoder.json (run retrieval/train_encoder.py first)")
        with fs.open(posixpath.join(root, "encoder.json"), "r") as f:
            raw = json.load(f)
        model = cls(EncoderShape(**{**raw, "grid": tuple(raw["grid"])}))
        with fs.open(posixpath.join(root, "encoder.safetensors"), "rb") as f:
            model.load_state_dict(load_safetensors(f.read()))
        return model.to(device).eval()


def pad_texts(texts: Sequence[Sequence[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad text id lists (truncated to max_len) into ids [B, L] and a validity mask."""
    length = max(1, min(max_len, max((len(t) for t in texts), default=1)))
    ids = torch.zeros(len(texts), length, dtype=torch.long)
    valid = torch.zeros(len(texts), length, dtype=torch.bool)
    for i, t in enumerate(texts):
        t = list(t)[:length]
        ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
        valid[i, : len(t)] = True
    return ids, valid
