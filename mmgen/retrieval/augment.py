"""Retrieval-augmented token sequences: ``retrieved₁ SEP retrieved₂ SEP main``.

``retrieved_prefix`` builds ``BOS r₁ SEP r₂ SEP`` (each retrieved document
without its own BOS/EOS) for training and for conditioning a sample.
``RetrievalAugmented`` is a view over token shards plus their neighbour table
that the packing loader reads like the shards themselves: item ``i`` is
``BOS r₁ SEP r₂ SEP main… EOS`` and ``weights(i)`` gives each token's weight as
a prediction target — the configured factor on the retrieved prefix, 1 on the
main document. Documents with missing neighbours (-1) get fewer.
"""

from __future__ import annotations

import numpy as np

from mmgen.data.token_shards import TokenShards


def _body(ids: np.ndarray, *, bos: int, eos: int) -> np.ndarray:
    start = 1 if len(ids) and ids[0] == bos else 0
    stop = len(ids) - 1 if len(ids) > start and ids[-1] == eos else len(ids)
    return ids[start:stop]


def retrieved_prefix(documents: list[np.ndarray], *, bos: int, eos: int, sep: int) -> np.ndarray:
    """``BOS r₁ SEP r₂ SEP …`` for the given retrieved token sequences."""
    parts = [np.array([bos])]
    for ids in documents:
        parts += [_body(np.asarray(ids), bos=bos, eos=eos), np.array([sep])]
    return np.concatenate(parts).astype(np.int64)


class RetrievalAugmented:
    def __init__(self, main: TokenShards, bank: TokenShards, neighbours: np.ndarray, *, bos: int, eos: int, sep: int,
                 retrieved_weight: float):
        if len(neighbours) != len(main):
            raise ValueError(f"neighbour table has {len(neighbours)} rows for {len(main)} documents")
        self.main = main
        self.bank = bank
        self.neighbours = neighbours
        self.bos, self.eos, self.sep = bos, eos, sep
        self.retrieved_weight = retrieved_weight
        self.folder = main.folder

    def __len__(self) -> int:
        return len(self.main)

    def _parts(self, i: int) -> tuple[np.ndarray, int]:
        """The augmented sequence and the length of its retrieved prefix."""
        retrieved = [self.bank[int(j)] for j in self.neighbours[i] if j >= 0]
        prefix = retrieved_prefix(retrieved, bos=self.bos, eos=self.eos, sep=self.sep)
        main = self.main[i]
        main = main[1:] if len(main) and main[0] == self.bos else main
        return np.concatenate([prefix, main]).astype(np.int64), len(prefix)

    def __getitem__(self, i: int) -> np.ndarray:
        return self._parts(i)[0]

    def weights(self, i: int) -> np.ndarray:
        """Weight of each token as a prediction target (the first token is never a target)."""
        tokens, prefix = self._parts(i)
        w = np.ones(len(tokens), dtype=np.float32)
        w[:prefix] = self.retrieved_weight
        return w
