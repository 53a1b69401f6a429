"""The one document model every reader yields and every tokenizer consumes.

A document is an ordered list of parts, each either text (``str``) or an image
(``PIL.Image.Image`` in RGB). Ground truth and provenance ride along as plain
JSON-able dicts so they survive pretokenization and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from PIL import Image

Part = Union[str, Image.Image]


@dataclass
class Document:
    parts: list[Part]
    """Text and images in reading order."""
    image_metadata: list[dict[str, Any]] = field(default_factory=list)
    """One dict per image part, in order (shapes world: the scene's ground truth)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Document-level metadata, including provenance: ``source`` (shard URL) and ``row``."""

    @property
    def texts(self) -> list[str]:
        return [p for p in self.parts if isinstance(p, str)]

    @property
    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]
