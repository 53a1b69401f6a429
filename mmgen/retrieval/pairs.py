"""Image–caption pairs as token ids: the dual encoder's training and evaluation data."""

from __future__ import annotations

import json
import posixpath

import fsspec
import torch
from PIL import Image

from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import TextTokenizer


def tokenized_caption_pairs(
    jsonl_url: str, text: TextTokenizer, image: ImageTokenizer, *, batch_size: int = 256
) -> tuple[torch.Tensor, list[list[int]], list[str]]:
    """(code grids [N, h, w], caption piece ids, caption strings) of a caption-pair jsonl file."""
    fs, path = fsspec.core.url_to_fs(jsonl_url)
    if not fs.exists(path):
        raise FileNotFoundError(f"missing input {jsonl_url}")
    base = posixpath.dirname(path)
    with fs.open(path, "r") as f:
        records = [json.loads(line) for line in f if line.strip()]
    captions = [r["caption"] for r in records]
    grids = []
    for start in range(0, len(records), batch_size):
        images = []
        for r in records[start : start + batch_size]:
            with fs.open(posixpath.join(base, r["image"]), "rb") as f:
                images.append(Image.open(f).convert("RGB"))
        grids.append(image.encode(images).cpu())
    return torch.cat(grids), [text.encode(c) for c in captions], captions
