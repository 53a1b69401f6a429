"""Packing documents into fixed-length training sequences, with exact resume.

Each document of ``L`` tokens contributes ``L - 1`` (input, label) pairs, so no
label ever crosses a document boundary; the ``document_ids`` of a packed row let
the model mask attention block-diagonally and restart RoPE positions. Documents
are never split (an image cut in half would train the model on a grid with no
``BOI``): one that does not fit the rest of a row starts the next row, and the
gap is padding with label ``-100``. Documents longer than a row are truncated and
counted.

Sources may also give per-token loss weights (a ``weights(i)`` method, as the
retrieval-augmented view does); batches then carry ``loss_weights`` aligned
with the labels.

Order: every epoch draws a fresh permutation from ``seed + epoch``; data-parallel
rank ``r`` of ``n`` takes positions ``r, r + n, …`` of it. The state is just
``(epoch, cursor)`` at a batch boundary, so a resumed run reads the very
batches the interrupted one would have read.
"""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np
import torch

from mmgen.data.token_shards import TokenShards

IGNORE_INDEX = -100


class PackedBatches:
    """Iterator of ``({"input", "document_ids", "positions"}, labels)`` batches of shape [B, T]."""

    def __init__(
        self,
        shards: TokenShards,
        *,
        seq_len: int,
        batch_size: int,
        pad_id: int,
        seed: int = 0,
        dp_rank: int = 0,
        dp_world_size: int = 1,
        infinite: bool = True,
    ):
        if len(shards) < dp_world_size:
            raise ValueError(f"{shards.folder} holds {len(shards)} documents, fewer than {dp_world_size} data-parallel ranks")
        self.shards = shards
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        self.infinite = infinite
        self.epoch = 0
        self.cursor = 0
        self.truncated_documents = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng(self.seed + epoch).permutation(len(self.shards))
        return perm[self.dp_rank :: self.dp_world_size]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "cursor": self.cursor, "truncated_documents": self.truncated_documents}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.truncated_documents = int(state.get("truncated_documents", 0))
        self._order = self._epoch_order(self.epoch)

    @property
    def weighted(self) -> bool:
        return hasattr(self.shards, "weights")

    def _next_document(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        if self.cursor >= len(self._order):
            if not self.infinite:
                return None
            self.epoch += 1
            self.cursor = 0
            self._order = self._epoch_order(self.epoch)
        i = int(self._order[self.cursor])
        return self.shards[i], (self.shards.weights(i) if self.weighted else None)

    def _row(self) -> tuple[np.ndarray, ...] | None:
        T = self.seq_len
        inputs = np.full(T, self.pad_id, dtype=np.int64)
        labels = np.full(T, IGNORE_INDEX, dtype=np.int64)
        doc_ids = np.zeros(T, dtype=np.int64)
        positions = np.zeros(T, dtype=np.int64)
        weights = np.zeros(T, dtype=np.float32)
        filled, doc = 0, 0
        while filled < T:
            item = self._next_document()
            if item is None:
                break
            tokens, token_weights = item
            n = len(tokens) - 1
            if n > T:
                tokens, n = tokens[: T + 1], T
                self.truncated_documents += 1
            if n > T - filled:
                if filled == 0:
                    raise AssertionError("unreachable: a truncated document always fits an empty row")
                break
            inputs[filled : filled + n] = tokens[:-1]
            labels[filled : filled + n] = tokens[1 : n + 1]
            weights[filled : filled + n] = 1.0 if token_weights is None else token_weights[1 : n + 1]
            doc_ids[filled : filled + n] = doc
            positions[filled : filled + n] = np.arange(n)
            filled += n
            doc += 1
            self.cursor += 1
        if filled == 0:
            return None
        # padding is its own document, so real tokens never attend to it
        doc_ids[filled:] = doc
        positions[filled:] = np.arange(T - filled)
        return inputs, labels, doc_ids, positions, weights

    def __iter__(self) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        while True:
            rows = []
            for _ in range(self.batch_size):
                row = self._row()
                if row is None:
                    break
                rows.append(row)
            if len(rows) < self.batch_size:
                return
            inputs, labels, doc_ids, positions, weights = (torch.from_numpy(np.stack(col)) for col in zip(*rows))
            batch = {"input": inputs, "document_ids": doc_ids, "positions": positions}
            if self.weighted:
                batch["loss_weights"] = weights
            yield batch, labels
