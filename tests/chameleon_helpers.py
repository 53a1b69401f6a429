"""Tiny random Chameleon checkpoints as a user would download them, built with transformers and tokenizers.

Nothing is downloaded: the language model and VQ-VAE are random
``ChameleonForConditionalGeneration`` weights, the text tokenizer a byte-level
BPE trained here on a few sentences, its ids laid out as Meta's release lays
them out (``<s> <pad> </s> <unk>``, the image codes, ``<eoss>``
``<racm3:break>``, reserved tokens, then text), and the VQGAN decoder (which
Hugging Face does not ship) comes from transformers' Janus VQ-VAE, whose
decoder is VQGAN's, renamed into taming's key layout as Meta's ``vqgan.ckpt``
has it.
"""

from __future__ import annotations

import json
import os

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import ChameleonConfig, ChameleonForConditionalGeneration, JanusVQVAE, JanusVQVAEConfig

from mmgen.interop.hf_chameleon import image_code_name

CODES = 32  # image codes at ids 4..35
RESERVED = 16  # <reserved08706> (the separator) and 15 more, which mmgen's roles take
SENTENCES = [
    "a red circle on the left", "two blue squares above a green triangle", "the picture shows a small yellow star",
    "Here is a drawing of a cat.", "Here is a drawing of a dog.", "What colour is the circle? Red.",
    "large shapes on a white background", "an orange hexagon in the middle of the image",
]  # fmt: skip
# VQ-VAE: 16-pixel images, 8x8 codes; GroupNorm(32) needs 32 channels; attention at the lowest resolution only
VQ_CONFIG = dict(embed_dim=4, num_embeddings=CODES, latent_channels=8, resolution=16, base_channels=32,
                 channel_multiplier=[1, 1], num_res_blocks=1, attn_resolutions=[8])  # fmt: skip


def non_text_tokens() -> list[str]:
    """Every token before the text pieces, in id order."""
    return [
        "<s>", "<pad>", "</s>", "<unk>", *(image_code_name(c) for c in range(CODES)), "<eoss>", "<racm3:break>",
        "<reserved08706>", "<image>", *(f"<reserved{8707 + i:05d}>" for i in range(RESERVED - 1)),
    ]  # fmt: skip


def bpe_tokenizer(vocab_size: int = 420) -> Tokenizer:
    """A byte-level BPE whose first ids are Chameleon's non-text tokens (special, so never merged)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=non_text_tokens(), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(SENTENCES * 4, trainer)
    return tok


def hf_config(tok: Tokenizer, **overrides) -> ChameleonConfig:
    kwargs = dict(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        vocabulary_map=tok.get_vocab(), vq_config=dict(VQ_CONFIG),
        bos_token_id=0, pad_token_id=1, eos_token_id=2,
    )  # fmt: skip
    kwargs.update(overrides)
    return ChameleonConfig(**kwargs)


def random_chameleon(tok: Tokenizer, seed: int = 0, **overrides) -> ChameleonForConditionalGeneration:
    """Random weights large enough that context matters, norms included; a VQ-VAE that uses many codes."""
    torch.manual_seed(seed)
    model = randomise_language_model(ChameleonForConditionalGeneration(hf_config(tok, **overrides)).eval())
    with torch.no_grad():
        spread_vq(model.model.vqmodel)
    return model


@torch.no_grad()
def randomise_language_model(model: ChameleonForConditionalGeneration) -> ChameleonForConditionalGeneration:
    """Every language-model parameter random, norms too, and large enough that context matters."""
    for name, p in model.named_parameters():
        if "vqmodel" in name:
            continue
        if p.dim() == 1 or "norm" in name:
            p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.3 * torch.randn_like(p))
        else:
            p.normal_(0, 0.15)
    return model


def sample_images(n: int = 6, side: int = 16) -> torch.Tensor:
    """Smooth random uint8 images [n, side, side, 3]."""
    g = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, max(side // 4, 1), max(side // 4, 1), generator=g), size=side)
    return (smooth * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def spread_vq(vq) -> None:
    """transformers' init leaves activations tiny: default-scaled convolutions, codebook drawn from real latents."""
    for module in vq.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.reset_parameters()
    x = sample_images(8, vq.config.resolution).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    latents = vq.quant_conv(vq.encoder(x)).permute(0, 2, 3, 1).flatten(0, 2)
    rows = torch.randperm(len(latents))[: vq.config.num_embeddings]
    weight = vq.quantize.embedding.weight
    weight.copy_(latents[rows] + 0.05 * latents.std() * torch.randn_like(weight))


def janus_decoder(vq_config: dict, seed: int = 7) -> JanusVQVAE:
    """transformers' Janus VQ-VAE shaped like ``vq_config``: its decoder is the reference VQGAN decoder."""
    torch.manual_seed(seed)
    side = vq_config["resolution"] // 2 ** (len(vq_config["channel_multiplier"]) - 1)
    keys = ("embed_dim", "num_embeddings", "latent_channels", "base_channels", "channel_multiplier", "num_res_blocks")
    model = JanusVQVAE(JanusVQVAEConfig(**{k: vq_config[k] for k in keys}, num_patches=side)).eval()
    with torch.no_grad():
        for name, p in model.decoder.named_parameters():
            if "norm" in name:  # affine GroupNorms that are not the identity
                p.copy_(1.0 + 0.2 * torch.randn_like(p) if name.endswith("weight") else 0.2 * torch.randn_like(p))
            elif name.endswith("weight"):
                p.normal_(0, (2.0 / p[0].numel()) ** 0.5)
    return model


def taming_decoder_state(janus: JanusVQVAE, post_quant_conv: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The Janus decoder (+ a post-quant conv) under taming's keys: ``decoder.up`` is indexed finest level first."""
    levels = len(janus.config.channel_multiplier)
    state = {}
    for key, value in janus.decoder.state_dict().items():
        parts = key.split(".")
        if parts[0] == "up":  # Janus appends levels coarsest first, taming inserts them finest first
            parts[1] = str(levels - 1 - int(parts[1]))
        state["decoder." + ".".join(parts)] = value.clone()
    state.update({f"post_quant_conv.{k}": v.clone() for k, v in post_quant_conv.state_dict().items()})
    return state


def write_checkpoint(directory: str, seed: int = 0, **overrides) -> tuple[ChameleonForConditionalGeneration, Tokenizer]:
    """A Chameleon folder as a user has it: save_pretrained weights and config, plus tokenizer.json."""
    tok = bpe_tokenizer()
    model = random_chameleon(tok, seed=seed, **overrides)
    model.save_pretrained(directory)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>"}, f)
    return model, tok


def write_vqgan_checkpoint(path: str, model: ChameleonForConditionalGeneration) -> JanusVQVAE:
    """Decoder weights for ``model``'s VQ-VAE in Meta's vqgan.ckpt layout; returns the reference they came from."""
    janus = janus_decoder(model.config.vq_config.to_dict())
    torch.save({"state_dict": taming_decoder_state(janus, model.model.vqmodel.post_quant_conv)}, path)
    return janus
