"""SFT examples → token sequences with the position where the loss starts.

``BOS task instruction SEP input SEP output EOS``; everything before the output
is context (loss weight 0), the output and EOS are targets (the loader's
``SFTTargets`` transform weighs them from the ``loss_start`` this returns).
Images of a batch of examples go through the VQ-VAE together.
"""

from __future__ import annotations

from typing import Sequence

from PIL import Image

from mmgen.data.sft_tasks import SFTExample
from mmgen.tokenizers.vocab import MultimodalTokenizer


def encode_sft_examples(tokenizer: MultimodalTokenizer, examples: Sequence[SFTExample]) -> list[tuple[list[int], int]]:
    """(token ids, index of the first target token) for each example."""
    vocab = tokenizer.vocab
    images = [c for e in examples for c in (e.input, e.output) if isinstance(c, Image.Image)]
    grids = iter(tokenizer.image_tok.encode(images)) if images else iter(())

    def content(c) -> list[int]:
        return tokenizer.encode_grid(next(grids)) if isinstance(c, Image.Image) else tokenizer.encode_text(c)

    out = []
    for e in examples:
        ids = [vocab.bos, vocab.special(f"task_{e.task}"), *tokenizer.encode_text(e.instruction), vocab.sep]
        ids += content(e.input) + [vocab.sep]
        start = len(ids)
        ids += content(e.output) + [vocab.eos]
        out.append((ids, start))
    return out

