"""The embedder interface retrieval and curation use, and its two implementations.

Anything with ``dim``, ``embed_texts(list[str])`` and ``embed_images(list[PIL])``
returning unit vectors works. ``TokenEmbedder`` is mmgen's own dual encoder
behind the run's tokenizers; ``CLIPEmbedder`` wraps a CLIP checkpoint the user
already has on disk (Hugging Face format; ``transformers`` is an optional
dependency and nothing is ever downloaded). ``load_embedder`` picks one from a folder.
"""

from __future__ import annotations

import posixpath
from typing import Protocol, Sequence

import fsspec
import numpy as np
import torch
from PIL import Image

from mmgen.config.paths import RunPaths
from mmgen.retrieval.encoder import DualEncoder, pad_texts
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.run import load_text_tokenizer


class Embedder(Protocol):
    dim: int

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class TokenEmbedder:
    def __init__(self, encoder: DualEncoder, text_tokenizer, image_tokenizer):
        self.encoder = encoder
        self.text = text_tokenizer
        self.image = image_tokenizer
        self.dim = encoder.dim

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        ids, valid = pad_texts([self.text.encode(t) for t in texts], self.encoder.shape.max_text_tokens)
        return self.encoder.embed_text(ids, valid).float().numpy()

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encoder.embed_image(self.image.encode(list(images)).cpu()).float().numpy()


class CLIPEmbedder:
    """A local CLIP checkpoint directory (config.json + weights); ``local_files_only`` so it never downloads."""

    def __init__(self, path: str, device: str = "cpu"):
        try:
            from transformers import CLIPModel, CLIPProcessor
        except ImportError as err:
            raise ImportError("CLIPEmbedder needs the optional dependency transformers") from err
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        self.device = device
        self.dim = self.model.config.projection_dim

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        batch = self.processor(text=list(texts), return_tensors="pt", padding=True, truncation=True).to(self.device)
        return torch.nn.functional.normalize(self.model.get_text_features(**batch), dim=-1).float().cpu().numpy()

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        batch = self.processor(images=list(images), return_tensors="pt").to(self.device)
        return torch.nn.functional.normalize(self.model.get_image_features(**batch), dim=-1).float().cpu().numpy()


def load_embedder(folder: str, paths: RunPaths) -> Embedder:
    """A CLIP checkpoint folder (``config.json``), or else mmgen's dual encoder (``encoder.json``) in ``folder``
    behind the tokenizers of the run at ``paths``."""
    fs, root = fsspec.core.url_to_fs(folder)
    if not fs.exists(posixpath.join(root, "encoder.json")) and fs.exists(posixpath.join(root, "config.json")):
        return CLIPEmbedder(folder)
    encoder = DualEncoder.load(folder)  # a missing encoder is named before the tokenizers are read
    return TokenEmbedder(encoder, load_text_tokenizer(paths), ImageTokenizer.load(paths.image_tokenizer))
