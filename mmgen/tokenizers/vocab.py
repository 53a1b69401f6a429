"""The unified vocabulary of the early-fusion model, and interleaved encode/decode.

``Vocab`` is data, not code: special tokens (role name → id), one contiguous
range of text ids (SentencePiece id ``i`` ↦ ``text_offset + i``), one contiguous
range of image code ids (code ``c`` ↦ ``image_offset + c``), the image code
grid and the total size. ``Vocab.build`` lays out mmgen's default (specials
first, then text pieces, then image codes), but any layout can be constructed
with explicit fields — Chameleon's, for instance, puts image codes at 4..8195
and its begin/end-image tokens after them.

Special roles every layout has: ``pad bos eos boi eoi sep``. The default layout
adds ``mask``, CM3 infill sentinels ``infill_0..infill_7`` and task tokens
(``task_caption task_t2i task_vqa``). ``special_pieces`` gives each role the
string it prints as (default ``<role>``); those strings are for display only,
so a text that literally contains ``"<eos>"`` stays text.

``MultimodalTokenizer`` turns a document into
``BOS text… BOI code×(h·w) EOI text… EOS`` and back exactly.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence, Union

import fsspec
import torch
from PIL import Image

from mmgen.config.paths import StaleInputError
from mmgen.data.document import Document
from mmgen.files import reading, write_json

if TYPE_CHECKING:
    from mmgen.tokenizers.image import ImageTokenizer
    from mmgen.tokenizers.text import TextTokenizer

REQUIRED_SPECIALS = ("pad", "bos", "eos", "boi", "eoi", "sep")
INFILL_SENTINELS = 8
TASK_TOKENS = ("task_caption", "task_t2i", "task_vqa")
DEFAULT_SPECIALS = (*REQUIRED_SPECIALS, "mask", *(f"infill_{i}" for i in range(INFILL_SENTINELS)), *TASK_TOKENS)

TokenIds = Union[Sequence[int], torch.Tensor]
DecodedPart = Union[str, torch.Tensor]


@dataclass
class Vocab:
    specials: dict[str, int]
    """Special token role → id; must hold pad, bos, eos, boi, eoi, sep."""
    text_offset: int
    """Id of text piece 0."""
    text_size: int
    """Text pieces (the text tokenizer's vocabulary size)."""
    image_offset: int
    """Id of image code 0."""
    image_size: int
    """Image codes (the VQ codebook size)."""
    grid: tuple[int, int]
    """Image code grid (h, w); an image is h·w code tokens."""
    size: int = 0
    """Total vocabulary size (embedding rows); 0 means just past the highest id in use."""
    special_pieces: dict[str, str] = field(default_factory=dict)
    """Display string per special role; roles left out print as <role>."""

    def __post_init__(self) -> None:
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        self.specials = {str(k): int(v) for k, v in self.specials.items()}
        missing = [name for name in REQUIRED_SPECIALS if name not in self.specials]
        if missing:
            raise ValueError(f"vocab lacks special tokens: {', '.join(missing)}")
        highest = max([*self.specials.values(), self.text_range[1] - 1, self.image_range[1] - 1])
        self.size = self.size or highest + 1
        if highest >= self.size or min(self.specials.values()) < 0 or self.text_offset < 0 or self.image_offset < 0:
            raise ValueError(f"vocab ids must lie in [0, {self.size})")
        (t0, t1), (i0, i1) = self.text_range, self.image_range
        if t0 < i1 and i0 < t1:
            raise ValueError(f"text ids {self.text_range} overlap image ids {self.image_range}")
        self._special_names = {}
        for name, i in self.specials.items():
            if t0 <= i < t1 or i0 <= i < i1:
                raise ValueError(f"special token {name}={i} lies inside the text or image ids")
            if i in self._special_names:
                raise ValueError(f"special tokens {self._special_names[i]} and {name} share id {i}")
            self._special_names[i] = name

    @classmethod
    def build(
        cls,
        text_vocab_size: int,
        codebook_size: int,
        grid: tuple[int, int],
        *,
        specials: Sequence[str] = DEFAULT_SPECIALS,
    ) -> "Vocab":
        """mmgen's default layout: specials, then text pieces, then image codes."""
        ids = {name: i for i, name in enumerate(specials)}
        return cls(
            specials=ids,
            text_offset=len(ids),
            text_size=text_vocab_size,
            image_offset=len(ids) + text_vocab_size,
            image_size=codebook_size,
            grid=grid,
        )

    # ----- serialisation -----

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["grid"] = list(self.grid)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Vocab":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def save(self, path: str) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str) -> "Vocab":
        with fsspec.open(path, "r") as f, reading(path, "vocabulary"):
            return cls.from_dict(json.load(f))

    # ----- specials -----

    def special(self, name: str) -> int:
        try:
            return self.specials[name]
        except KeyError:
            raise KeyError(f"vocab has no special token '{name}'") from None

    def special_name(self, token_id: int) -> str | None:
        return self._special_names.get(int(token_id))

    def special_piece(self, name: str) -> str:
        return self.special_pieces.get(name, f"<{name}>")

    pad = property(lambda self: self.specials["pad"])
    bos = property(lambda self: self.specials["bos"])
    eos = property(lambda self: self.specials["eos"])
    boi = property(lambda self: self.specials["boi"])
    eoi = property(lambda self: self.specials["eoi"])
    sep = property(lambda self: self.specials["sep"])

    # ----- ranges -----

    @property
    def text_range(self) -> tuple[int, int]:
        return self.text_offset, self.text_offset + self.text_size

    @property
    def image_range(self) -> tuple[int, int]:
        return self.image_offset, self.image_offset + self.image_size

    @property
    def image_tokens(self) -> int:
        """Tokens one image occupies in a sequence: BOI, h·w codes, EOI."""
        return self.grid[0] * self.grid[1] + 2

    def text_to_id(self, i):
        return i + self.text_offset

    def id_to_text(self, j):
        return j - self.text_offset

    def code_to_id(self, c):
        return c + self.image_offset

    def id_to_code(self, j):
        return j - self.image_offset

    def is_text(self, ids):
        """Whether ids are text pieces; an int gives a bool, a tensor (or sequence) a bool tensor."""
        return _in_range(ids, *self.text_range)

    def is_image(self, ids):
        """Whether ids are image codes; an int gives a bool, a tensor (or sequence) a bool tensor."""
        return _in_range(ids, *self.image_range)

    def is_special(self, ids):
        if isinstance(ids, int):
            return ids in self._special_names
        ids = torch.as_tensor(ids)
        return torch.isin(ids, torch.tensor(sorted(self._special_names), device=ids.device))


def _in_range(ids, start: int, stop: int):
    if isinstance(ids, int):
        return start <= ids < stop
    ids = torch.as_tensor(ids)
    return (ids >= start) & (ids < stop)


class MultimodalTokenizer:
    """Documents ↔ token ids in one ``Vocab``: text through SentencePiece, images through the VQ-VAE."""

    def __init__(self, vocab: Vocab, text_tok: "TextTokenizer", image_tok: "ImageTokenizer | None" = None):
        # a tokenizer retrained after encoding no longer fits the run's vocab.json: a stale input, one error line
        if text_tok.vocab_size > vocab.text_size:
            raise StaleInputError(f"text tokenizer has {text_tok.vocab_size} pieces, vocab holds {vocab.text_size}")
        if image_tok is not None:
            if image_tok.codebook_size > vocab.image_size or tuple(image_tok.grid) != vocab.grid:
                raise StaleInputError(
                    f"image tokenizer (codebook {image_tok.codebook_size}, grid {tuple(image_tok.grid)}) does not "
                    f"fit the vocab (image ids {vocab.image_size}, grid {vocab.grid})"
                )
        self.vocab = vocab
        self.text_tok = text_tok
        self.image_tok = image_tok

    # ----- encode -----

    def encode_text(self, text: str) -> list[int]:
        return [self.vocab.text_to_id(i) for i in self.text_tok.encode(text)]

    def encode_grid(self, codes: torch.Tensor) -> list[int]:
        """BOI, the h·w codes in raster order, EOI."""
        codes = torch.as_tensor(codes)
        if tuple(codes.shape) != self.vocab.grid:
            raise ValueError(f"expected a code grid of shape {self.vocab.grid}, got {tuple(codes.shape)}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.vocab.image_size):
            raise ValueError(f"image codes must lie in [0, {self.vocab.image_size})")
        return [self.vocab.boi, *self.vocab.code_to_id(codes.flatten()).tolist(), self.vocab.eoi]

    def encode_parts(
        self, parts: Sequence[Union[str, torch.Tensor, Image.Image]], *, bos: bool = True, eos: bool = True
    ) -> list[int]:
        """Text, code grids (LongTensor [h, w]) and PIL images, in order, framed by BOS/EOS."""
        pil = [p for p in parts if isinstance(p, Image.Image)]
        grids = iter(self._encode_images(pil)) if pil else iter(())
        ids = [self.vocab.bos] if bos else []
        for part in parts:
            if isinstance(part, str):
                ids += self.encode_text(part)
            elif isinstance(part, Image.Image):
                ids += self.encode_grid(next(grids))
            else:
                ids += self.encode_grid(part)
        if eos:
            ids.append(self.vocab.eos)
        return ids

    def encode_document(self, doc: Document) -> list[int]:
        return self.encode_parts(doc.parts)

    def encode_documents(self, docs: Sequence[Document]) -> list[list[int]]:
        """Like ``encode_document`` for each, with all images of all documents encoded in one batch."""
        images = [p for doc in docs for p in doc.parts if isinstance(p, Image.Image)]
        grids = iter(self._encode_images(images)) if images else iter(())
        return [
            self.encode_parts([next(grids) if isinstance(p, Image.Image) else p for p in doc.parts]) for doc in docs
        ]

    def _encode_images(self, images: list[Image.Image]) -> torch.Tensor:
        if self.image_tok is None:
            raise ValueError("this tokenizer has no image tokenizer; pass code grids instead of images")
        return self.image_tok.encode(images)

    # ----- decode -----

    def decode_parts(self, ids: TokenIds, *, strict: bool = True) -> list[DecodedPart]:
        """The inverse of ``encode_parts``: text runs as ``str``, images as LongTensor ``[h, w]`` grids.

        BOS, EOS and PAD are dropped. ``strict`` raises on anything malformed (an
        unfinished image, a text token inside an image, another special token);
        ``strict=False`` — for sampled sequences — skips such tokens and drops
        unfinished images instead.
        """
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else [int(i) for i in ids]
        vocab, (h, w) = self.vocab, self.vocab.grid
        frame = {vocab.bos, vocab.eos, vocab.pad}
        parts: list[DecodedPart] = []
        text: list[int] = []
        image: list[int] | None = None

        def flush_text() -> None:
            if text:
                parts.append(self.text_tok.decode([vocab.id_to_text(i) for i in text]))
                text.clear()

        def malformed(message: str) -> None:
            if strict:
                raise ValueError(message)

        for pos, i in enumerate(ids):
            if image is not None:
                if vocab.is_image(i) and len(image) < h * w:
                    image.append(vocab.id_to_code(i))
                    continue
                if i == vocab.eoi and len(image) == h * w:
                    parts.append(torch.tensor(image, dtype=torch.long).view(h, w))
                    image = None
                    continue
                malformed(f"token {i} at position {pos} breaks an image ({len(image)} of {h * w} codes)")
                if i == vocab.eoi or not vocab.is_image(i):
                    image = None  # abandon the unfinished image; text resumes after it
                    if i == vocab.eoi:
                        continue
                else:
                    continue  # surplus codes of an over-long image
            if vocab.is_text(i):
                text.append(i)
            elif i == vocab.boi:
                flush_text()
                image = []
            elif i in frame:
                continue
            else:
                malformed(f"unexpected token {i} ({vocab.special_name(i) or 'image code'}) at position {pos}")
        if image is not None:
            malformed(f"sequence ends inside an image ({len(image)} of {h * w} codes)")
        flush_text()
        return parts

    def decode_images(self, grids: Union[torch.Tensor, Sequence[torch.Tensor]]) -> list[Image.Image]:
        """Code grids (``[B, h, w]`` or a list of ``[h, w]``) to RGB images through the VQ-VAE decoder."""
        if self.image_tok is None:
            raise ValueError("this tokenizer has no image tokenizer to decode images with")
        grids = grids if isinstance(grids, torch.Tensor) else torch.stack(list(grids)) if len(grids) else None
        if grids is None or len(grids) == 0:
            return []
        pixels = self.image_tok.decode(grids)
        return [Image.fromarray(p.numpy(), mode="RGB") for p in pixels]

    def decode_document(self, ids: TokenIds, *, strict: bool = False) -> Document:
        """Token ids to a Document with decoded images (lenient by default, for sampled sequences)."""
        parts = self.decode_parts(ids, strict=strict)
        grids = [p for p in parts if isinstance(p, torch.Tensor)]
        images = iter(self.decode_images(grids))
        return Document(parts=[p if isinstance(p, str) else next(images) for p in parts])
