"""Retrieval-augmented token sequences: ``retrieved₁ SEP retrieved₂ SEP main``.

``retrieved_prefix`` builds ``BOS r₁ SEP r₂ SEP`` (each retrieved document
without its own BOS/EOS) for training and for conditioning a sample.
``RetrievalAugmentation`` is the packing loader's last per-document transform
(``mmgen.data.transforms``): document ``i`` becomes
``BOS r₁ SEP r₂ SEP main… EOS``, its neighbours read from row ``i`` of the
neighbour table, and each token gets its weight as a prediction target — the
configured factor on the retrieved prefix, the main document's own weight (1)
on the rest. Documents with missing neighbours (-1) get fewer.

The packer truncates a sequence longer than its row from the end, which would
cost the main document its tail; so with ``max_len`` the retrieved part gives
way first: later neighbours are dropped, the last one kept may lose its tail,
and the main document keeps as much of itself as fits. A retrieved document is
only ever cut in its text, never inside an image's code grid.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from mmgen.data.token_shards import TokenShards
from mmgen.data.transforms import DocumentTransform, TrainingDocument


def body(ids: np.ndarray, *, bos: int, eos: int) -> np.ndarray:
    """A document's tokens without its BOS and EOS: what it contributes to a retrieved prefix."""
    ids = np.asarray(ids)
    start = 1 if len(ids) and ids[0] == bos else 0
    stop = len(ids) - 1 if len(ids) > start and ids[-1] == eos else len(ids)
    return ids[start:stop]


def image_safe_cut(ids: np.ndarray, limit: int, *, boi: int, eoi: int) -> int:
    """The largest ``p <= limit`` such that ``ids[:p]`` does not end inside an image (BOI … EOI)."""
    ids = np.asarray(ids)
    if limit >= len(ids):
        return len(ids)
    if limit <= 0:
        return 0
    open_images = np.cumsum((ids[:limit] == boi).astype(np.int64) - (ids[:limit] == eoi))
    closed = np.flatnonzero(open_images == 0)  # ids[:p] is whole where the count after ids[p - 1] is 0
    return int(closed[-1]) + 1 if len(closed) else 0


def fit_retrieved(bodies: Sequence[np.ndarray], max_len: int, *, boi: int, eoi: int) -> list[int]:
    """How many tokens of each body (in order; 0: dropped) fit a prefix ``BOS r₁ SEP r₂ SEP …`` of ``max_len`` tokens.

    Bodies are kept whole while they fit; the first that does not keeps the
    longest head that ends outside an image and the rest are dropped. A body of
    which no such head fits (say it opens with an image) is dropped whole.
    """
    room = max_len - 1  # BOS
    kept = [0] * len(bodies)
    for n, ids in enumerate(bodies):
        cut = image_safe_cut(ids, room - 1, boi=boi, eoi=eoi)  # its SEP needs one more
        if cut == 0:
            continue
        kept[n] = cut
        room -= cut + 1
        if cut < len(ids):
            break
    return kept


def retrieved_prefix(documents: Sequence[np.ndarray], *, bos: int, eos: int, sep: int, max_len: int | None = None,
                     boi: int | None = None, eoi: int | None = None) -> np.ndarray:  # fmt: skip
    """``BOS r₁ SEP r₂ SEP …`` for the given retrieved token sequences; at most ``max_len`` tokens when given.

    Cutting needs the image delimiters ``boi`` and ``eoi``, so no image is cut in half.
    """
    bodies = [body(ids, bos=bos, eos=eos) for ids in documents]
    if max_len is not None:
        if boi is None or eoi is None:
            raise ValueError("retrieved_prefix needs boi and eoi to cut documents to max_len")
        kept = fit_retrieved(bodies, max_len, boi=boi, eoi=eoi)
        bodies = [b[:n] for b, n in zip(bodies, kept) if n > 0]
    parts = [np.array([bos])]
    for b in bodies:
        parts += [b, np.array([sep])]
    return np.concatenate(parts).astype(np.int64)


class RetrievalAugmentation(DocumentTransform):
    """``BOS r₁ SEP r₂ SEP main`` for each document, its neighbours (rows of ``neighbours``) read from ``bank``.

    ``max_len`` (the packer's row length + 1: a row trains on ``max_len - 1``
    next-token pairs) cuts the retrieved part so the main document keeps as
    much of itself as fits; it needs ``vocab`` for the image delimiters.
    """

    sets_weights = True

    def __init__(self, bank: TokenShards, neighbours: np.ndarray, *, bos: int, eos: int, sep: int,
                 retrieved_weight: float, max_len: int | None = None, vocab=None):  # fmt: skip
        if max_len is not None and vocab is None:
            raise ValueError("RetrievalAugmentation needs the vocab (image delimiters) to cut sequences to max_len")
        self.bank = bank
        self.neighbours = neighbours
        self.bos, self.eos, self.sep = bos, eos, sep
        self.retrieved_weight = retrieved_weight
        self.max_len = max_len
        self.boi, self.eoi = (vocab.boi, vocab.eoi) if vocab is not None else (None, None)

    def __call__(self, document: TrainingDocument) -> TrainingDocument:
        retrieved = [self.bank[int(j)] for j in self.neighbours[document.index] if j >= 0]
        main, main_weights = document.tokens, document.weights
        if len(main) and main[0] == self.bos:
            main, main_weights = main[1:], (None if main_weights is None else main_weights[1:])
        room = None if self.max_len is None else max(self.max_len - len(main), 1)  # BOS at least
        prefix = retrieved_prefix(retrieved, bos=self.bos, eos=self.eos, sep=self.sep, max_len=room, boi=self.boi,
                                  eoi=self.eoi)  # fmt: skip
        weights = np.ones(len(prefix) + len(main), dtype=np.float32)
        weights[: len(prefix)] = self.retrieved_weight
        if main_weights is not None:
            weights[len(prefix) :] = main_weights
        return replace(document, tokens=np.concatenate([prefix, main]).astype(np.int64), weights=weights)
