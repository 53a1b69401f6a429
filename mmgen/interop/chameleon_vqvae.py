"""Chameleon's VQ-VAE (VQGAN) weights → an mmgen ``ImageTokenizer``.

mmgen's VQ-VAE uses VQGAN's module layout, so the weights map key for key:
``encoder.*``, ``quant_conv``, ``post_quant_conv`` and ``decoder.*`` keep their
names, and the codebook ``quantize.embedding.weight`` becomes the EMA codebook
of vector-quantize-pytorch (``embed``, with ``embed_avg`` = embed and unit
cluster sizes so that further EMA training starts from the same codebook).

Sources (local paths only, nothing is downloaded):
- a Hugging Face ``ChameleonForConditionalGeneration`` directory (``vq_config``
  in config.json, tensors under ``model.vqmodel.``), or a ``ChameleonVQVAE``
  saved on its own (``model_type: chameleon_vqgan``, tensors without prefix);
- Hugging Face ships the encoder side only (no ``decoder.*`` tensors). Meta's
  released ``tokenizer/vqgan.ckpt`` holds the decoder too: pass it (or any
  VQGAN-layout ``.ckpt``/``.pt``/``.safetensors`` file) as ``decoder_weights``.
  Without a decoder the tokenizer encodes but refuses to decode.

Codes equal the reference's: both pick the codebook entry at the smallest
Euclidean distance, and the imported tokenizer computes in float32
(``precision="float32"``) as the reference does. Pixels map to [-1, 1] as
``x / 127.5 - 1`` (Meta's preprocessing; Hugging Face's image processor rounds
the scale to 0.0078); images of another size are fitted as Meta's code does
(shorter side to the target with Lanczos, centre crop, transparency on white:
``resize="center_crop"``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import load_file

from mmgen.config.schema import ImageTokenizerConfig
from mmgen.interop.hf_chameleon import _Shards, read_hf_config
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.vqvae import NORM_GROUPS, VQVAE

HF_PREFIX = "model.vqmodel."
CODEBOOK_KEY = "quantize.embedding.weight"


def config_from_vq_config(vq: dict[str, Any]) -> ImageTokenizerConfig:
    """mmgen's tokenizer config for a ``ChameleonVQVAEConfig`` (as a dict, defaults as transformers has them)."""
    mults = tuple(vq.get("channel_multiplier", (1, 1, 2, 2, 4)))
    base = vq.get("base_channels", 128)
    if vq.get("double_latent", False):
        raise ValueError("double_latent VQ-VAEs (a VAE posterior) are not Chameleon's tokenizer; not supported")
    if vq.get("in_channels", 3) != 3:
        raise ValueError(f"only RGB VQ-VAEs are supported, not in_channels={vq['in_channels']}")
    return ImageTokenizerConfig(
        image_size=vq.get("resolution", 512),
        downsample=2 ** (len(mults) - 1),
        channels=base * max(mults),
        channel_multipliers=mults,
        res_blocks=vq.get("num_res_blocks", 2),
        latent_channels=vq.get("latent_channels", 256),
        codebook_size=vq.get("num_embeddings", 8192),
        codebook_dim=vq.get("embed_dim", 256),
        norm_groups=NORM_GROUPS,
        attention_at_lowest=vq.get("attn_type", "vanilla") == "vanilla",
        attention_resolutions=tuple(vq.get("attn_resolutions") or ()) if vq.get("attn_type", "vanilla") == "vanilla" else (),
        commitment_weight=vq.get("beta", 0.25),
        quantizer="vq",
        cosine_lookup=False,
        kmeans_init=False,
        precision="float32",
        resize="center_crop",
    )


def _read_weights_file(path: str) -> dict[str, torch.Tensor]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"missing input {path}")
    if path.endswith(".safetensors"):
        return load_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickles with arbitrary objects are refused by weights_only loading
        raise ValueError(
            f"{path} cannot be read as plain tensors ({type(e).__name__}); save its state_dict as safetensors first"
        ) from None
    return data.get("state_dict", data) if isinstance(data, dict) else data


def state_from_vqgan(tensors: dict[str, torch.Tensor], model: VQVAE) -> dict[str, torch.Tensor]:
    """A VQGAN-layout state dict (``encoder.*``, ``quantize.embedding.weight``, …) → ``model``'s state dict."""
    state = {}
    for key, value in tensors.items():
        if key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            state[key] = value.float()
    codebook = tensors[CODEBOOK_KEY].float()
    state.update({
        "quantizer._codebook.embed": codebook[None].clone(),
        "quantizer._codebook.embed_avg": codebook[None].clone(),
        "quantizer._codebook.cluster_size": torch.ones(1, codebook.shape[0]),
        "quantizer._codebook.initted": torch.tensor(True),
    })  # fmt: skip
    expected = set(model.state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        detail = f"missing {sorted(missing)[:4]}" if missing else f"unexpected {sorted(unexpected)[:4]}"
        raise ValueError(f"the VQ-VAE weights do not fit the architecture in its config: {detail}")
    return state


def import_chameleon_vqvae(
    source: str, *, decoder_weights: str | None = None, device: torch.device | str = "cpu"
) -> ImageTokenizer:
    """Load Chameleon's VQ-VAE from a Hugging Face directory (+ optional VQGAN decoder weights) as an ImageTokenizer."""
    hf = read_hf_config(source)
    if "vq_config" in hf:
        vq, prefix = hf["vq_config"] or {}, HF_PREFIX
    elif hf.get("model_type") == "chameleon_vqgan":
        vq, prefix = hf, ""
    else:
        raise ValueError(f"{source}/config.json describes neither a Chameleon model nor its VQ-VAE")
    shards = _Shards(source)
    tensors = {k[len(prefix) :]: shards(k) for k in shards.keys() if k.startswith(prefix)}
    if CODEBOOK_KEY not in tensors:
        raise ValueError(f"{source} holds no VQ-VAE weights ({prefix}{CODEBOOK_KEY} is missing)")
    if decoder_weights is not None:
        extra = _read_weights_file(decoder_weights)
        tensors.update({k: v for k, v in extra.items() if k.startswith(("decoder.", "post_quant_conv."))})
    config = config_from_vq_config(vq)
    model = VQVAE(config)
    if not any(k.startswith("decoder.") for k in tensors):
        model.decoder = None
    model.load_state_dict(state_from_vqgan(tensors, model))
    return ImageTokenizer(model=model, config=config, device=device)

