"""mmgen's decoder and transformers' Chameleon with the same weights, for the benchmarks that compare them
(no torchtitan here: the GPU checks import it on a machine without one)."""

from __future__ import annotations

import importlib.util

import torch

from mmgen.config.schema import ModelConfig
from mmgen.interop.hf_chameleon import hf_config_from_model, hf_state_to_mmgen
from mmgen.model import Transformer
from mmgen.tokenizers.vocab import Vocab


def require_transformers() -> None:
    """Stop with one line when transformers, the baselines' library and one of the test tools, is missing (the
    demo installs mmgen without them)."""
    if importlib.util.find_spec("transformers") is None:
        raise SystemExit("error: the benchmark's baselines need transformers, one of the test tools: "
                         "run scripts/setup.sh test")


def build_models(cfg: ModelConfig, vocab: Vocab, *, seed: int = 0):
    """(mmgen model, Hugging Face Chameleon) with the same weights: the reference built at random, then imported."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    hf_cfg = hf_config_from_model(cfg, vocab)
    # The VQ-VAE is not part of either model's work here; keep it tiny.
    hf_cfg["vq_config"] = dict(embed_dim=4, num_embeddings=16, latent_channels=4, resolution=16,
                               base_channels=32, channel_multiplier=[1, 1], num_res_blocks=1)
    torch.manual_seed(seed)
    hf = ChameleonForConditionalGeneration(ChameleonConfig(**hf_cfg))
    with torch.no_grad():  # random norms too, so the equality check below covers them
        for name, p in hf.named_parameters():
            if "norm" in name and "vqmodel" not in name:
                p.add_(0.1 * torch.randn_like(p))
    theirs = hf.state_dict()
    model = Transformer(cfg, vocab.size)
    model.load_state_dict(hf_state_to_mmgen(theirs.__getitem__, cfg))
    return model, hf
