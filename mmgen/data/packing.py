"""Packing documents into fixed-length training sequences, with exact resume.

Each document of ``L`` tokens contributes ``L - 1`` (input, label) pairs, so no
label ever crosses a document boundary; the ``document_ids`` of a packed row let
the model mask attention block-diagonally and restart RoPE positions. Documents
are never split (an image cut in half would train the model on a grid with no
``BOI``): one that does not fit the rest of a row starts the next row, and the
gap is padding with label ``-100``. Documents longer than a row are truncated and
counted.

Documents pass through the loader's per-document transforms
(``mmgen.data.transforms``: CM3, condition dropout, SFT targets, retrieval
augmentation) after they are drawn from their corpus, so mixing and
deduplication below see the token folder itself. When a transform sets loss
weights, batches carry ``loss_weights`` aligned with the labels, and weight-0
tokens are context only (label ``-100``).

Order: every epoch of every corpus draws a fresh permutation from
``(seed, corpus, epoch)``; data-parallel rank ``r`` of ``n`` takes positions
``r, r + n, …`` of it. Cross-shard duplicates that encode marked are left out.

Sampling: a corpus whose documents carry sampling probabilities (``TokenShards.sampling_probabilities``,
written by data/curate.py's balancing that keeps the data) draws each epoch's documents anew, each with its
probability, from ``(seed, corpus, epoch)`` before the ranks split the epoch; an epoch is one such pass.

Mixing: a mixture folder (several corpora, each with a weight) is read by
stride scheduling on tokens — the next document comes from the corpus whose
consumed tokens divided by its weight is smallest — so every prefix of the
stream holds each corpus in its share of *tokens*, with no random draws to
replay; a small corpus simply repeats (its own epochs) more often. Tokens
are counted as packed, after the transforms.

The state is ``(epoch, cursor, tokens)`` per corpus at a batch boundary, so a
resumed run reads the very batches the interrupted one would have read (on as
many data-parallel ranks; on another number, each corpus restarts its epoch).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import numpy as np
import torch

from mmgen.data.token_shards import TokenShards
from mmgen.data.transforms import DocumentTransform, TrainingDocument

IGNORE_INDEX = -100


class _Stream:
    """One corpus's document order on one data-parallel rank: a cursor over seeded per-epoch permutations.

    ``order`` holds indices into ``corpus``; ``start`` is the corpus's first index in the whole token folder.
    """

    def __init__(self, corpus: TokenShards, *, start: int, transforms: Sequence[DocumentTransform], seed: int,
                 index: int, dp_rank: int, dp_world_size: int):  # fmt: skip
        self.corpus = corpus
        self.start = start
        self.transforms = transforms
        self.kept = corpus.kept_indices()
        self.probabilities = corpus.sampling_probabilities()
        if len(self.kept) < dp_world_size:
            raise ValueError(
                f"{corpus.folder} holds {len(self.kept)} documents, fewer than {dp_world_size} data-parallel ranks"
            )
        self.seed, self.index = seed, index
        self.dp_rank, self.dp_world_size = dp_rank, dp_world_size
        self.epoch = self.cursor = self.tokens = 0
        self.order = self._epoch_order(0)
        self.peeked: TrainingDocument | None = None  # a document that did not fit its row is peeked again

    def _epoch_order(self, epoch: int) -> np.ndarray:
        perm = np.random.default_rng((self.seed, self.index, epoch)).permutation(self.kept)
        if self.probabilities is not None:  # this pass's draw, the same on every rank
            drawn = np.random.default_rng((self.seed, self.index, epoch, 1)).random(len(perm)) < self.probabilities[perm]
            if drawn.sum() >= self.dp_world_size:  # else (a tiny corpus) the whole pass: no rank goes empty
                perm = perm[drawn]
        return perm[self.dp_rank :: self.dp_world_size]

    def peek(self, infinite: bool) -> TrainingDocument | None:
        if self.cursor >= len(self.order):
            if not infinite:
                return None
            self.epoch += 1
            self.cursor = 0
            self.order = self._epoch_order(self.epoch)
        if self.peeked is None:
            i = int(self.order[self.cursor])
            self.peeked = TrainingDocument(self.start + i, self.corpus[i])
            for transform in self.transforms:
                self.peeked = transform(self.peeked)
        return self.peeked

    def advance(self, tokens: int) -> None:
        self.peeked = None
        self.cursor += 1
        self.tokens += tokens

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor, "tokens": self.tokens}

    def load(self, state: dict[str, Any]) -> None:
        self.epoch, self.cursor = int(state["epoch"]), int(state["cursor"])
        self.tokens = int(state.get("tokens", 0))
        self.order = self._epoch_order(self.epoch)
        self.peeked = None


class PackedBatches:
    """Iterator of ``({"input", "document_ids", "positions"[, "loss_weights"]}, labels)`` batches of shape [B, T].

    ``shards`` is a token folder (a mixture folder mixes its corpora); ``transforms`` apply to each document
    in order, after it is drawn.
    """

    def __init__(
        self,
        shards: TokenShards,
        *,
        transforms: Sequence[DocumentTransform] = (),
        seq_len: int,
        batch_size: int,
        pad_id: int,
        seed: int = 0,
        dp_rank: int = 0,
        dp_world_size: int = 1,
        infinite: bool = True,
    ):
        self.shards = shards
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        self.infinite = infinite
        self.truncated_documents = 0
        self.weighted = any(t.sets_weights for t in transforms)
        weights = [w for _, w in shards.components]
        if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
            raise ValueError(f"{shards.folder}: mixture weights must be >= 0 and not all 0, got {weights}")
        starts = np.cumsum([0] + [len(corpus) for corpus, _ in shards.components])
        self.streams = [
            _Stream(corpus, start=int(start), transforms=transforms, seed=seed, index=i, dp_rank=dp_rank,
                    dp_world_size=dp_world_size)  # fmt: skip
            for i, ((corpus, w), start) in enumerate(zip(shards.components, starts))
            if w > 0
        ]
        self.weights = [w for w in weights if w > 0]

    def state_dict(self) -> dict[str, Any]:
        return {"streams": [s.state() for s in self.streams], "truncated_documents": self.truncated_documents}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        streams = state.get("streams", [state])  # a single-corpus state from before mixing was (epoch, cursor)
        if len(streams) != len(self.streams):
            raise ValueError(f"loader state holds {len(streams)} corpora, {self.shards.folder} has {len(self.streams)}")
        for stream, s in zip(self.streams, streams):
            stream.load(s)
        self.truncated_documents = int(state.get("truncated_documents", 0))

    def restart_epochs(self, states: list[dict[str, Any]]) -> None:
        """Resume from the states of another number of data-parallel ranks: each corpus restarts the earliest
        epoch any of them was in (positions within an epoch belong to one rank layout and do not carry over)."""
        per_rank = [state.get("streams", [state]) for state in states]
        for i, stream in enumerate(self.streams):
            stream.load({"epoch": min(int(streams[i]["epoch"]) for streams in per_rank), "cursor": 0})
        self.truncated_documents = sum(int(state.get("truncated_documents", 0)) for state in states)

    def _stream(self) -> _Stream:
        if len(self.streams) == 1:
            return self.streams[0]
        return min(zip(self.streams, self.weights), key=lambda sw: sw[0].tokens / sw[1])[0]

    def _row(self) -> tuple[np.ndarray, ...] | None:
        T = self.seq_len
        inputs = np.full(T, self.pad_id, dtype=np.int64)
        labels = np.full(T, IGNORE_INDEX, dtype=np.int64)
        doc_ids = np.zeros(T, dtype=np.int64)
        positions = np.zeros(T, dtype=np.int64)
        weights = np.zeros(T, dtype=np.float32)
        filled, doc = 0, 0
        while filled < T:
            stream = self._stream()
            document = stream.peek(self.infinite)
            if document is None:
                break
            tokens, token_weights = document.tokens, document.weights
            n = len(tokens) - 1
            truncated = n > T
            if truncated:
                tokens, n = tokens[: T + 1], T
            if n > T - filled:
                if filled == 0:
                    raise AssertionError("unreachable: a truncated document always fits an empty row")
                break  # starts the next row (and is counted there)
            self.truncated_documents += truncated
            inputs[filled : filled + n] = tokens[:-1]
            labels[filled : filled + n] = tokens[1 : n + 1]
            if token_weights is None:
                weights[filled : filled + n] = 1.0
            else:
                weights[filled : filled + n] = token_weights[1 : n + 1]
                # weight 0 is context, not a target: it must not count as a valid token either
                labels[filled : filled + n][token_weights[1 : n + 1] == 0] = IGNORE_INDEX
            doc_ids[filled : filled + n] = doc
            positions[filled : filled + n] = np.arange(n)
            filled += n
            doc += 1
            stream.advance(n)
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
