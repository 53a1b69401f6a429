"""The documents a memory bank holds: the training token shards, then the run's bank corpus when it has one.

CM3leon retrieves from its training data; a world with named entities (or a user's memory edits) adds a
corpus of its own, ``corpus/bank/`` encoded into ``tokens/bank/``, that training never reads directly: the
definitions of entities training uses by name only. Bank id ``i`` is training document ``i`` for
``i < len(train)`` and bank-corpus document ``i - len(train)`` after, so neighbour tables built before the
bank corpus existed keep their meaning.
"""

from __future__ import annotations

import hashlib
import posixpath
from typing import Sequence

import fsspec
import numpy as np

from mmgen.config.paths import RunPaths
from mmgen.data.token_shards import TokenShards


class BankDocuments:
    """Several token folders read back to back: ``len``, ``[i]`` → token array, ``metadata(i)``."""

    def __init__(self, parts: Sequence[TokenShards]):
        self.parts = list(parts)
        self.folder = "+".join(p.folder for p in self.parts)
        self._starts = np.cumsum([0, *(len(p) for p in self.parts)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _locate(self, i: int) -> tuple[TokenShards, int]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = int(np.searchsorted(self._starts, i, side="right") - 1)
        return self.parts[part], i - int(self._starts[part])

    def __getitem__(self, i: int) -> np.ndarray:
        part, j = self._locate(int(i))
        return part[j]

    def metadata(self, i: int) -> dict:
        part, j = self._locate(int(i))
        return part.metadata(j)

    def offset_of(self, shards: TokenShards) -> int | None:
        """The bank id of ``shards``' first document when they are one of the parts (same folder), else None."""
        for part, start in zip(self.parts, self._starts):
            if part.folder == shards.folder:
                return int(start)
        return None

    def fingerprint(self) -> str:
        h = hashlib.blake2b(digest_size=16)
        for part in self.parts:
            h.update(part.fingerprint().encode())
        return h.hexdigest()


def has_bank_corpus(paths: RunPaths) -> bool:
    """Whether the run's bank corpus has been encoded (``tokens/bank/manifest.json``)."""
    fs, root = fsspec.core.url_to_fs(paths.tokens("bank"))
    return fs.exists(posixpath.join(root, "manifest.json"))


def bank_documents(paths: RunPaths) -> BankDocuments:
    """The run's memory-bank documents: ``tokens/train``, then ``tokens/bank`` when it exists."""
    parts = [TokenShards(paths.tokens("train"))]
    if has_bank_corpus(paths):
        parts.append(TokenShards(paths.tokens("bank")))
    return BankDocuments(parts)
