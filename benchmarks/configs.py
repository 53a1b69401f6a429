"""The two decoder sizes ``benchmarks/run.py`` measures: the demo's, and one of ~40 M parameters."""

from __future__ import annotations

import dataclasses

from mmgen.config.presets import demo
from mmgen.config.schema import ModelConfig
from mmgen.tokenizers.vocab import Vocab


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    name: str
    model: ModelConfig
    vocab: Vocab
    seq_len: int
    batch_size: int
    """Training batch (rows of ``seq_len``) per process."""


def demo_config() -> BenchConfig:
    """The demo's decoder, vocabulary and per-rank batch (8 x 8 code grid)."""
    cfg = demo()
    image = cfg.image_tokenizer
    side = image.image_size // image.downsample
    vocab = Vocab.build(cfg.text_tokenizer.vocab_size, image.codebook_size, (side, side))
    # transformers' Chameleon, which the benchmarks run beside it, has no grid embedding of image codes; it costs
    # two embedding lookups per token
    model = dataclasses.replace(cfg.model, image_grid_embedding=False)
    return BenchConfig("demo", model, vocab, cfg.training.seq_len, cfg.training.local_batch_size)


def medium_config() -> BenchConfig:
    """dim 512, 8 layers, 8,192 text ids + 8,192 codes on Chameleon's 32 x 32 grid: ~42 M parameters."""
    model = ModelConfig(dim=512, n_layers=8, n_heads=8, max_seq_len=2048)
    return BenchConfig("medium", model, Vocab.build(8192, 8192, (32, 32)), seq_len=512, batch_size=2)
