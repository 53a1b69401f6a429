"""SentencePiece text tokenizer with an exact round trip for any string.

``decode(encode(t)) == t`` for every Python string that is valid Unicode:
identity normalization (no NFKC), no dummy prefix, whitespace kept as is, and
byte fallback so characters outside the vocabulary become UTF-8 byte pieces
instead of ``<unk>``. SentencePiece itself owns no BOS/EOS/PAD: the unified
``Vocab`` owns every special token, so a literal ``"<eos>"`` in a text is just
text. Ids live in SentencePiece's own ``0..vocab_size-1`` space (id 0 is
``<unk>``, which byte fallback never emits).

One SentencePiece quirk is handled here: it writes spaces as the meta symbol
U+2581 ("▁") and decodes that symbol back to a space, so a literal U+2581 in a
text would come back as a space. ``encode`` emits its UTF-8 bytes as byte
pieces instead, which decode to the character itself.
"""

from __future__ import annotations

import io
from itertools import islice
from typing import Callable, Iterable

import fsspec
import sentencepiece as spm

from mmgen.config.schema import TextTokenizerConfig
from mmgen.files import reading, write_atomic

_META_SPACE = "\u2581"
_BYTE_PIECES = 256
_MAX_PASSAGE_BYTES = 1 << 16  # SentencePiece silently drops longer training passages


class TextTokenizer:
    """A trained SentencePiece model; load it with ``TextTokenizer.load(path)``."""

    def __init__(self, *, model_proto: bytes):
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        self._meta_space_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in _META_SPACE.encode()]
        if 0 in self._meta_space_ids:
            raise ValueError("text tokenizer was trained without byte fallback; exact round trips need it")

    @classmethod
    def load(cls, path: str) -> "TextTokenizer":
        with fsspec.open(path, "rb") as f, reading(path, "SentencePiece model"):
            return cls(model_proto=f.read())

    def save(self, path: str) -> None:
        write_atomic(path, self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if _META_SPACE not in text:
            return self._sp.encode(text)
        ids: list[int] = []
        for i, chunk in enumerate(text.split(_META_SPACE)):
            if i:
                ids.extend(self._meta_space_ids)
            ids.extend(self._sp.encode(chunk))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if any(_META_SPACE in t for t in texts):
            return [self.encode(t) for t in texts]
        return self._sp.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(int(i))


def _required_pieces(texts: list[str], cfg: TextTokenizerConfig) -> int:
    """Pieces SentencePiece insists on: <unk>, the byte pieces, and every character at full coverage."""
    chars = set()
    for t in texts:
        chars.update(t)
    chars.discard(" ")
    chars.add(_META_SPACE)
    covered = len(chars) if cfg.character_coverage >= 1.0 else 0
    return 1 + (_BYTE_PIECES if cfg.byte_fallback else 0) + covered


def train_text_tokenizer(
    texts: Iterable[str], cfg: TextTokenizerConfig, path: str, *, log: Callable[[str], None] = print
) -> TextTokenizer:
    """Train SentencePiece on up to ``cfg.max_sentences`` passages and save the model bytes to ``path``.

    ``cfg.vocab_size`` is an upper bound (a small corpus yields fewer pieces),
    raised if needed to the floor byte fallback and full character coverage
    impose (256 byte pieces + every distinct character + ``<unk>``).
    """
    passages = [t for t in islice(texts, cfg.max_sentences) if t]
    if not passages:
        raise ValueError("no text to train the text tokenizer on")
    vocab_size = cfg.vocab_size
    floor = _required_pieces(passages, cfg)
    if floor > vocab_size:
        log(f"text tokenizer: vocab_size {vocab_size} is below the {floor} pieces byte fallback needs; using {floor}")
        vocab_size = floor
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(passages),
        model_writer=model,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        model_type=cfg.model_type,
        character_coverage=cfg.character_coverage,
        byte_fallback=cfg.byte_fallback,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        split_digits=True,
        max_sentence_length=_MAX_PASSAGE_BYTES,
        input_sentence_size=cfg.max_sentences,
        shuffle_input_sentence=True,
        # The unified Vocab owns specials; SentencePiece requires an <unk> and keeps it at 0.
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        num_threads=2,
        minloglevel=2,
    )
    tokenizer = TextTokenizer(model_proto=model.getvalue())
    tokenizer.save(path)
    log(f"text tokenizer: {tokenizer.vocab_size} pieces from {len(passages)} passages -> {path}")
    return tokenizer
