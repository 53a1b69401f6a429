"""A Hugging Face ``tokenizer.json`` (the ``tokenizers`` package) as a run's text tokenizer.

Released checkpoints such as Chameleon and Anole ship a BPE in this format
whose ids are already ids of the model's joint vocabulary. mmgen's text
tokenizers speak piece ids (``Vocab.text_to_id`` adds ``text_offset``), so this
one returns ``tokenizer id - id_offset`` with ``id_offset`` the vocabulary's
``text_offset``: ``text_to_id`` then gives back exactly the id the tokenizer
produced, also for the rare id outside the vocabulary's text range (a byte or
reserved token the BPE emits), which the model sees as the reference does.

It has the interface of ``mmgen.tokenizers.text.TextTokenizer`` (``encode``,
``encode_batch``, ``decode``, ``vocab_size``, ``id_to_piece``,
``model_proto``). Added tokens written literally in a text (``"<s>"``) are
matched as the tokenizer's own ``encode`` matches them, as transformers does.
"""

from __future__ import annotations

from typing import Iterable

import fsspec
from tokenizers import Tokenizer


class HFTextTokenizer:
    """``tokenizer.json`` bytes; ``pieces`` ids from ``id_offset`` on are the vocabulary's text range."""

    def __init__(self, *, tokenizer_json: bytes, id_offset: int, pieces: int):
        try:
            self._tok = Tokenizer.from_buffer(tokenizer_json)
        except Exception as e:  # the tokenizers package raises a bare Exception on malformed JSON
            raise ValueError(f"not a Hugging Face tokenizer.json ({' '.join(str(e).split())[:120]})") from None
        self.model_proto = tokenizer_json  # the bytes that identify the tokenizer (as SentencePiece's model proto does)
        self.id_offset = int(id_offset)
        self.pieces = int(pieces)

    @classmethod
    def load(cls, path: str, *, id_offset: int, pieces: int) -> "HFTextTokenizer":
        with fsspec.open(path, "rb") as f:
            return cls(tokenizer_json=f.read(), id_offset=id_offset, pieces=pieces)

    def save(self, path: str) -> None:
        with fsspec.open(path, "wb", auto_mkdir=True) as f:
            f.write(self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self.pieces

    @property
    def highest_id(self) -> int:
        """The largest id the tokenizer can produce (it must lie inside the model's vocabulary)."""
        return max(self._tok.get_vocab(with_added_tokens=True).values())

    def token_id(self, token: str) -> int | None:
        """The tokenizer's own id (a joint-vocabulary id) of a token string, or None if it has none."""
        return self._tok.token_to_id(token)

    def encode(self, text: str) -> list[int]:
        return [i - self.id_offset for i in self._tok.encode(text, add_special_tokens=False).ids]

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [[i - self.id_offset for i in e.ids] for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode([int(i) + self.id_offset for i in ids], skip_special_tokens=False)

    def id_to_piece(self, i: int) -> str:
        return self._tok.id_to_token(int(i) + self.id_offset) or ""
