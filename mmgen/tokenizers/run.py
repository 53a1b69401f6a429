"""The multimodal tokenizer of a run folder, as tokenizers/encode.py left it.

Every stage after encoding (SFT encoding, sampling, the report, the SFT
comparison) reads the same three files: the joint vocabulary, the
SentencePiece model and the VQ-VAE.
"""

from __future__ import annotations

import torch

from mmgen.config.paths import RunPaths
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import TextTokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab


def load_run_tokenizer(paths: RunPaths, device: torch.device | str = "cpu") -> MultimodalTokenizer:
    """Vocabulary, text tokenizer and image tokenizer (on ``device``) of the run at ``paths``."""
    return MultimodalTokenizer(Vocab.load(paths.vocab), TextTokenizer.load(paths.text_tokenizer),
                               ImageTokenizer.load(paths.image_tokenizer, device=device))
