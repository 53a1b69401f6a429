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
        """Folder of the OBELICS parquet shards of one split ('train', 'heldout', or 'bank': the memory-bank
        corpus, which holds the definitions of a world's entities and the documents memory edits add)."""
        return self._join("corpus", split)

    def caption_pairs(self, split: str) -> str:
        """Caption-pair jsonl of one split; image paths are relative to it."""
        return self._join("corpus", f"captions-{split}.jsonl")

    @property
    def entities(self) -> str:
        """The world's named entities (looks, training uses, head/tail) and their evaluation items."""
        return self._join("corpus", "entities.json")

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
    def image_tokenizer_metrics(self) -> str:
        """Held-out PSNR, SSIM and codebook usage, saved with the image tokenizer."""
        return self._join("tokenizers", "image", "metrics.json")

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
    def retrieval_encoder_metrics(self) -> str:
        return self._join("retrieval", "encoder", "metrics.json")

    @property
    def memory_bank(self) -> str:
        return self._join("retrieval", "bank")

    def neighbours(self, split: str) -> str:
        """Retrieved-neighbour table [documents, k] of a split's documents (its info, with the fingerprint of the
        tokens it was built on, is the ``.json`` beside it)."""
        return self._join("retrieval", "neighbours", f"{split}.npy")

    # curation
    @property
    def curated_corpus(self) -> str:
        """Where data/curate.py writes the curated corpus by default."""
        return self._join("curated")

    @property
    def curation_dir(self) -> str:
        """data/curate.py's report: report.html, curation.json and the plots."""
        return self._join("curate")

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

    # evaluation
    @property
    def eval_dir(self) -> str:
        return self._join("eval")

    @property
    def report_metrics(self) -> str:
        return self._join("eval", "metrics.json")

    @property
    def report_page(self) -> str:
        return self._join("eval", "report.html")

    @staticmethod
    def for_split(path: str, split: str) -> str:
        """An evaluation output of ``split``: the held-out one is ``path`` itself, another split's sits beside it
        with the split's name added (``metrics.json`` -> ``metrics_validation.json``), so figures measured while
        choosing settings never overwrite the ones a run reports."""
        if split == "heldout":
            return path
        stem, ext = posixpath.splitext(path)
        return f"{stem}_{split}{ext}"

    @property
    def sft_metrics(self) -> str:
        """eval/compare_sft.py's figures of the pretrained and every fine-tuned checkpoint (held-out SFT prompts)."""
        return self._join("eval", "sft_metrics.json")

    @property
    def classify_dir(self) -> str:
        return self._join("eval", "classify")

    def stage_timing(self, stage: str) -> str:
        return self._join("timings", f"{stage}.json")

    @property
    def summary(self) -> str:
        return self._join("demo_summary.json")
