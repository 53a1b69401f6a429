"""Where each stage of a run reads and writes, derived from the run folder.

Stages never hard-code each other's files: they ask ``RunPaths``. Every path is
a string so any fsspec URL works as a run folder.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass


class StaleInputError(ValueError):
    """An input of a stage exists but no longer matches the others (e.g. a bank built over older shards)."""


@dataclass(frozen=True)
class RunPaths:
    root: str

    def _join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    # shapes world (or the user's corpus)
    @property
    def corpus_dir(self) -> str:
        return self._join("corpus")

    def corpus_split(self, split: str) -> str:
        """Folder of the OBELICS parquet shards of one split ('train' or 'heldout')."""
        return self._join("corpus", split)

    def caption_pairs(self, split: str) -> str:
        """Caption-pair jsonl of one split; image paths are relative to it."""
        return self._join("corpus", f"captions-{split}.jsonl")

    # tokenizers
    @property
    def text_tokenizer(self) -> str:
        return self._join("tokenizers", "text.model")

    @property
    def text_tokenizer_record(self) -> str:
        """Which text tokenizer the run holds (``mmgen.tokenizers.run``); absent: the SentencePiece ``text_tokenizer``."""
        return self._join("tokenizers", "text_tokenizer.json")

    @property
    def image_tokenizer(self) -> str:
        return self._join("tokenizers", "image")

    @property
    def vocab(self) -> str:
        return self._join("tokenizers", "vocab.json")

    # token shards
    def tokens(self, split: str) -> str:
        return self._join("tokens", split)

    # retrieval
    @property
    def retrieval_encoder(self) -> str:
        return self._join("retrieval", "encoder")

    @property
    def memory_bank(self) -> str:
        return self._join("retrieval", "bank")

    def neighbours(self, split: str) -> str:
        """Retrieved-neighbour table [documents, k] stored beside a split's token shards."""
        return self._join("tokens", split, "neighbours.npy")

    # pretraining
    @property
    def pretrain_dir(self) -> str:
        return self._join("pretrain")

    @property
    def loss_log(self) -> str:
        return self._join("pretrain", "loss_log.jsonl")

    # supervised fine-tuning
    def sft_dir(self, folder: str = "sft") -> str:
        return self._join(folder)

    # sampling and summary
    @property
    def samples_dir(self) -> str:
        return self._join("samples")

    def stage_timing(self, stage: str) -> str:
        return self._join("timings", f"{stage}.json")

    @property
    def summary(self) -> str:
        return self._join("demo_summary.json")
