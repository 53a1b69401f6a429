"""Helpers the shapes-world option tests share: a small world config and a folder's files, byte for byte."""

from __future__ import annotations

from pathlib import Path

from mmgen.config.schema import WorldConfig


def world_cfg(**overrides) -> WorldConfig:
    """A world of 40 training documents (up to 3 images each) and 160 caption pairs, with ``overrides``."""
    cfg = WorldConfig(train_documents=40, heldout_documents=6, train_caption_pairs=160, heldout_caption_pairs=6,
                      documents_per_shard=40, max_images_per_document=3)  # fmt: skip
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def files_of(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
