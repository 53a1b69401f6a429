"""The per-document transforms the packing loader applies, and the document they pass along.

The loader picks a corpus of the mixture, takes that corpus's next document
(cross-shard duplicates already left out), and hands it through its transforms
in order before packing it. A transform sees one document and returns one:
CM3 masking and condition dropout rewrite its tokens
(``mmgen.data.objectives``), SFT targets and retrieval augmentation give its
tokens loss weights (``mmgen.data.objectives``, ``mmgen.retrieval.augment``).
Because transforms never see the token folder, they cannot hide its corpora or
its duplicates from the loader.

Whatever a transform draws at random is seeded by the document's ``index``, so
a document reads the same in every epoch and on every rank, and a resumed run
sees the very sequences the interrupted one would have.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np


@dataclass(frozen=True)
class TrainingDocument:
    index: int
    """Position of the document in the loader's token folder (over all corpora of a mixture): seeds, neighbours, metadata."""
    tokens: np.ndarray
    """int64 token ids."""
    weights: np.ndarray | None = None
    """Loss weight per token as a prediction target (0: context only); None: every token weighs 1."""

    def with_tokens(self, tokens: np.ndarray) -> "TrainingDocument":
        """The same document with rewritten tokens; only unweighted documents can be rewritten."""
        if self.weights is not None:
            raise ValueError("a transform that rewrites tokens must come before any transform that sets loss weights")
        return replace(self, tokens=tokens)


class DocumentTransform(ABC):
    """One step of the loader's per-document pipeline."""

    sets_weights: ClassVar[bool] = False
    """Whether it gives documents loss weights: the batches then carry ``loss_weights``."""

    @abstractmethod
    def __call__(self, document: TrainingDocument) -> TrainingDocument: ...
