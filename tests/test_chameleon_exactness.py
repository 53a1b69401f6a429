"""An imported Chameleon behaves as the reference beyond logits: greedy generation, VQ codes, decoded pixels, text ids.

The references are transformers' ``ChameleonForConditionalGeneration.generate``
and ``ChameleonVQVAE``, and the VQGAN decoder of transformers' Janus VQ-VAE
(Hugging Face's Chameleon ships no decoder); all tiny and random, built here.
"""

from __future__ import annotations

import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import GenerationConfig  # noqa: E402

from chameleon_helpers import (  # noqa: E402
    SENTENCES,
    VQ_CONFIG,
    bpe_tokenizer,
    random_chameleon,
    sample_images,
    write_checkpoint,
    write_vqgan_checkpoint,
)
from mmgen.generation.sampler import SamplingParams, sample  # noqa: E402
from mmgen.interop import load_chameleon  # noqa: E402
from mmgen.interop.chameleon_vqvae import import_chameleon_vqvae  # noqa: E402
from mmgen.tokenizers.hf_text import HFTextTokenizer  # noqa: E402
from mmgen.tokenizers.image import images_to_uint8  # noqa: E402
from mmgen.tokenizers.vocab import MultimodalTokenizer  # noqa: E402

transformers.logging.set_verbosity_error()
NEW_TOKENS = 64


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("chameleon") / "hf"
    hf, tok = write_checkpoint(str(directory), seed=4)
    janus = write_vqgan_checkpoint(str(directory.parent / "vqgan.ckpt"), hf)
    return directory, hf, tok, janus


@pytest.mark.slow  # about a minute on two busy cores: 3 prompts x 64 steps in two implementations
def test_greedy_generation_equals_transformers_generate(checkpoint):
    directory, hf, tok, _ = checkpoint
    model, vocab = load_chameleon(str(directory), dtype=torch.float64)
    hf = copy.deepcopy(hf).double()  # the fixture's model stays float32 for the other tests
    text = HFTextTokenizer.load(str(directory / "tokenizer.json"), id_offset=vocab.text_offset, pieces=vocab.text_size)
    tokenizer = MultimodalTokenizer(vocab, text)
    codes = torch.randint(0, vocab.image_size, vocab.grid, generator=torch.Generator().manual_seed(3))
    prompts = [
        tokenizer.encode_parts(["a red circle"], eos=False),
        tokenizer.encode_parts(["Here is a drawing of"], eos=False),
        tokenizer.encode_parts(["Look at this picture.", codes, "It shows"], eos=False),  # interleaved
    ]
    # mmgen's text mode allows text pieces and EOS; the reference masks image codes itself and is told to leave
    # out the remaining special and reserved tokens, so both take the argmax over the same tokens
    others = [i for i in range(vocab.size) if not (vocab.is_text(i) or vocab.is_image(i) or i == vocab.eos)]
    config = GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=None, pad_token_id=vocab.pad,
                              suppress_tokens=others)  # fmt: skip
    ours = sample(model, vocab, prompts, SamplingParams(max_new_tokens=NEW_TOKENS, temperature=0.0, max_images=0, eos_stops=False))
    for prompt, got in zip(prompts, ours):
        with torch.no_grad():
            want = hf.generate(torch.tensor([prompt]), generation_config=config)[0, len(prompt):].tolist()
        assert len(want) == len(got) == NEW_TOKENS
        assert got == want
    assert len({tuple(o) for o in ours}) == len(prompts)  # the prompts steer the model: the check has teeth


def test_vq_codes_and_decoded_pixels_equal_the_references(checkpoint):
    directory, hf, _, janus = checkpoint
    tok = import_chameleon_vqvae(str(directory), decoder_weights=str(directory.parent / "vqgan.ckpt"))
    reference = hf.model.vqmodel
    pixels = sample_images(8, VQ_CONFIG["resolution"])
    x = pixels.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad():
        want_codes = reference.encode(x, return_dict=True).image_tokens.view(len(x), *tok.grid)
    codes = tok.encode(pixels)
    assert torch.equal(codes, want_codes)
    assert len(codes.unique()) > 8  # many codes occur, so equality means something

    # the reference decoder: Chameleon's codebook and post-quant conv, then the VQGAN decoder (Janus's modules)
    with torch.no_grad():
        vectors = reference.quantize.embedding(codes).permute(0, 3, 1, 2)
        want = janus.decoder(reference.post_quant_conv(vectors))
        got = tok.model.decode(codes)
    assert want.std() > 0.1  # not a flat image
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    rendered = tok.decode(codes)  # uint8 pixels, as the sampler writes them
    assert torch.equal(rendered.permute(0, 3, 1, 2), want.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8))


def test_text_tokenizer_ids_are_the_references(checkpoint):
    directory, _, tok, _ = checkpoint
    model, vocab = load_chameleon(str(directory))
    text = HFTextTokenizer.load(str(directory / "tokenizer.json"), id_offset=vocab.text_offset, pieces=vocab.text_size)
    tokenizer = MultimodalTokenizer(vocab, text)
    for sentence in [*SENTENCES, "unseen wörds, ünïcode ✓ and  spaces"]:
        ids = tokenizer.encode_text(sentence)
        assert ids == tok.encode(sentence).ids  # the joint-vocabulary ids are the tokenizer's own
        assert all(vocab.is_text(i) for i in ids)
        assert tokenizer.decode_parts(ids) == [sentence]
    assert text.vocab_size == vocab.text_size and text.highest_id == vocab.size - 1


def test_mmgen_roles_take_free_reserved_tokens():
    tok = bpe_tokenizer()
    hf = random_chameleon(tok)
    from mmgen.interop.hf_chameleon import _grid_from_vq_config, vocab_from_vocabulary_map

    vocab = vocab_from_vocabulary_map(hf.config.vocabulary_map, hf.config.vocab_size, _grid_from_vq_config(VQ_CONFIG))
    names = {v: k for k, v in tok.get_vocab().items()}
    assert names[vocab.sep] == "<reserved08706>" and names[vocab.specials["image"]] == "<image>"
    for role in ("mask", "infill_0", "infill_7", "task_caption", "task_t2i", "task_vqa"):
        assert names[vocab.special(role)].startswith("<reserved") and vocab.special_piece(role) == names[vocab.special(role)]
    assert len(set(vocab.specials.values())) == len(vocab.specials)
    assert vocab.text_offset == len(names) - vocab.text_size  # the text range is untouched: all pieces after the specials


def test_image_preprocessing_is_chameleons(checkpoint):
    """Images of any size and mode become the pixels transformers' Chameleon image processor gives the VQ-VAE."""
    import numpy as np
    from PIL import Image
    from transformers import ChameleonImageProcessorPil

    directory = checkpoint[0]
    tok = import_chameleon_vqvae(str(directory))
    side = tok.image_size
    processor = ChameleonImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                           do_rescale=False, do_normalize=False)  # fmt: skip
    rng = np.random.default_rng(0)
    for shape in [(30, 44, 3), (20, 17, 4), (17, 20, 4), (side, side, 2), (31, 23, 3), (side, 3 * side, 3)]:
        image = Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8))  # LA/RGBA: transparency on white
        want = processor(image, return_tensors="pt")["pixel_values"]
        assert torch.equal(images_to_uint8([image], side, tok.config.resize).float(), want), shape
    assert tok.config.resize == "center_crop"
