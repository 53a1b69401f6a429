"""Chameleon's VQ-VAE imported into mmgen encodes images to the reference's codes.

The reference is transformers' ``ChameleonVQVAE`` (a test-only dependency),
built tiny and random. transformers ships the encoder side only, so the decoder
is checked for its layout (VQGAN's key names load strictly) and determinism.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

transformers = pytest.importorskip("transformers")

from mmgen.interop.chameleon_vqvae import import_chameleon_vqvae  # noqa: E402
from mmgen.tokenizers.image import ImageTokenizer  # noqa: E402

TINY = dict(
    embed_dim=16, num_embeddings=64, latent_channels=32, resolution=32, base_channels=32,
    channel_multiplier=[1, 1, 2], num_res_blocks=1, attn_resolutions=[16],
)  # fmt: skip


def reference(**overrides) -> "transformers.ChameleonVQVAE":
    torch.manual_seed(0)
    model = transformers.ChameleonVQVAE(transformers.ChameleonVQVAEConfig(**{**TINY, **overrides})).eval()
    with torch.no_grad():
        # transformers' init leaves activations tiny; a default-scaled init spreads them over many codes
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.reset_parameters()
        # codebook entries drawn from real latents (plus noise), as a trained codebook would sit, so many are used
        x = images().permute(0, 3, 1, 2).float() / 127.5 - 1.0
        latents = model.quant_conv(model.encoder(x)).permute(0, 2, 3, 1).flatten(0, 2)
        rows = torch.randperm(len(latents))[: model.config.num_embeddings]
        weight = model.quantize.embedding.weight
        weight.copy_(latents[rows] + 0.05 * latents.std() * torch.randn_like(weight))
    return model


def images(n: int = 6, side: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, side // 4, side // 4, generator=g), size=side)
    return (smooth * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def reference_codes(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        out = model.encode(x, return_dict=True)
    side = x.shape[-1] // 2 ** (len(model.config.channel_multiplier) - 1)
    return out.image_tokens.view(len(x), side, side), out.quantized_last_hidden_state


@pytest.mark.parametrize("overrides", [{}, {"attn_resolutions": [], "attn_type": "none"}], ids=["attention", "plain"])
def test_standalone_vqvae_encodes_to_the_reference_codes(tmp_path, overrides):
    ref = reference(**overrides)
    ref.save_pretrained(tmp_path)
    tok = import_chameleon_vqvae(str(tmp_path))
    assert tok.grid == (8, 8) and tok.codebook_size == 64 and tok.image_size == 32
    pixels = images()
    want, want_quantized = reference_codes(ref, pixels)
    assert len(want.unique()) > 8  # the comparison means something only when many codes occur
    codes = tok.encode(pixels)
    assert torch.equal(codes, want)
    vectors = tok.model.codes_to_vectors(codes)
    torch.testing.assert_close(vectors, want_quantized, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(tok.model.post_quant_conv(vectors), ref.post_quant_conv(want_quantized))
    with pytest.raises(ValueError, match="no decoder"):
        tok.decode(codes)


def test_conditional_generation_layout_with_vqgan_decoder(tmp_path):
    """``model.vqmodel.*`` tensors of a ChameleonForConditionalGeneration folder, plus Meta-style decoder weights."""
    ref = reference()
    checkpoint = tmp_path / "chameleon"
    checkpoint.mkdir()
    state = {f"model.vqmodel.{k}": v.contiguous() for k, v in ref.state_dict().items()}
    state["model.embed_tokens.weight"] = torch.zeros(4, 4)  # language-model tensors are ignored
    save_file(state, str(checkpoint / "model.safetensors"))
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "chameleon", "vq_config": ref.config.to_dict()}))
    encoder_only = import_chameleon_vqvae(str(checkpoint))
    assert encoder_only.model.decoder is None

    # A VQGAN decoder in taming-transformers' key layout, as in Meta's vqgan.ckpt (weights are random here).
    torch.manual_seed(2)
    donor = import_chameleon_vqvae(str(checkpoint)).model
    from mmgen.tokenizers.vqvae import Decoder

    donor.decoder = Decoder(encoder_only.config)
    decoder_state = {k: v for k, v in donor.state_dict().items() if k.startswith(("decoder.", "post_quant_conv."))}
    assert "decoder.up.0.block.1.conv2.weight" in decoder_state and "decoder.up.1.upsample.conv.weight" in decoder_state
    torch.save({"state_dict": decoder_state}, tmp_path / "vqgan.ckpt")
    tok = import_chameleon_vqvae(str(checkpoint), decoder_weights=str(tmp_path / "vqgan.ckpt"))

    pixels = images(3)
    codes = tok.encode(pixels)
    assert torch.equal(codes, reference_codes(ref, pixels)[0])
    decoded = tok.decode(codes)
    assert decoded.dtype == torch.uint8 and decoded.shape == (3, 32, 32, 3)
    with torch.no_grad():
        want = donor.decoder(ref.post_quant_conv(reference_codes(ref, pixels)[1]))
    want = want.add(1).mul(127.5).round().clamp(0, 255).permute(0, 2, 3, 1)
    assert (decoded.float() - want).abs().max() <= 1  # one grey level: float rounding at .5

    # An imported tokenizer saves and loads like a trained one, with or without its decoder.
    tok.save(str(tmp_path / "with"))
    encoder_only.save(str(tmp_path / "without"))
    assert torch.equal(ImageTokenizer.load(str(tmp_path / "with")).decode(codes), decoded)
    assert torch.equal(ImageTokenizer.load(str(tmp_path / "without")).encode(pixels), codes)


def test_not_a_chameleon_folder_is_a_clear_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="neither"):
        import_chameleon_vqvae(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        import_chameleon_vqvae(str(tmp_path / "missing"))
