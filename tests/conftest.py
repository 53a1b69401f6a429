"""Fixtures several test files share: a tiny decoder, a tiny multimodal tokenizer, a free port."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pytest
import torch

from corpus_helpers import joint_tokenizer, make_tokenizers
from mmgen.config.schema import ModelConfig
from mmgen.model import Transformer
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import TextTokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer


@pytest.fixture(scope="module")
def model(request) -> Transformer:
    """A seeded two-layer decoder (random weights, eval mode) over the test module's ``VOCAB``."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2), request.module.VOCAB.size)
    m.init_weights()
    return m.eval()


@pytest.fixture(scope="session")
def tiny_tokenizer() -> MultimodalTokenizer:
    """``corpus_helpers.make_tokenizers``' pair (SentencePiece, untrained 16×16 → 4×4 VQ-VAE), loaded."""
    paths = make_tokenizers(Path(tempfile.mkdtemp(prefix="mmgen-tok-")))
    return joint_tokenizer(TextTokenizer.load(paths.text_tokenizer), ImageTokenizer.load(paths.image_tokenizer))


@pytest.fixture
def free_port() -> int:
    """A TCP port free on this machine now, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
