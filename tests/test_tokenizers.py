"""Text tokenizer round trips, VQ-VAE training and coding, and the unified vocabulary."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmgen.config.schema import ImageTokenizerConfig, TextTokenizerConfig, WorldConfig
from mmgen.data.document import Document
from mmgen.data.shapes_world import random_scene, render_scene
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.image_train import fit
from mmgen.tokenizers.text import TextTokenizer, train_text_tokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab

CORPUS = [
    "A small red circle sits in the top left corner.",
    "The large blue square moves to the center.\nThen a green triangle appears on the right.",
    "Two shapes: 1 yellow circle and 2 purple squares, on a white background.",
    "  Spaces  are   kept, and so are tabs\tand trailing spaces.  ",
]


@pytest.fixture(scope="module")
def text_tok(tmp_path_factory) -> TextTokenizer:
    path = str(tmp_path_factory.mktemp("text") / "text.model")
    train_text_tokenizer(iter(CORPUS * 50), TextTokenizerConfig(vocab_size=400), path, log=lambda _: None)
    return TextTokenizer.load(path)


def shapes_images(n: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [render_scene(random_scene(rng, WorldConfig()), 32) for _ in range(n)]


TINY_VQ = ImageTokenizerConfig(
    channels=32, res_blocks=1, codebook_size=64, codebook_dim=8, batch_size=16, train_steps=80, lr=3e-3,
    max_train_seconds=0,  # a fixed step count keeps the result independent of machine load
    precision="float32",  # bf16 convolutions this narrow are slower than fp32 on CPUs
)


@pytest.fixture(scope="module")
def trained_vq(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("image"))
    train = shapes_images(256, seed=1)
    heldout = shapes_images(32, seed=2)
    torch.manual_seed(0)
    _, metrics = fit(train, heldout, TINY_VQ, out_dir, log=lambda _: None, device="cpu")
    return out_dir, metrics, heldout


# ----- text -----


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_text_round_trip_is_exact_for_any_unicode(text_tok, text):
    ids = text_tok.encode(text)
    assert all(0 <= i < text_tok.vocab_size for i in ids)
    assert text_tok.decode(ids) == text


@pytest.mark.parametrize(
    "text",
    ["<eos>", "<unk> <s></s> <pad>", "\u2581", "a\u2581 b\u2581\u2581"]
    + ["\n\n  x  \n", " ", "😀🎉 日本語", "\x00\r\n"],
)
def test_special_literals_and_whitespace_stay_text(text_tok, text):
    ids = text_tok.encode(text)
    assert 0 not in ids  # never <unk>: byte fallback covers everything
    assert text_tok.decode(ids) == text


SPECIAL_LITERALS = ["<eos>", "<bos>", "<pad>", "<boi>", "<eoi>", "<sep>", "<unk>", "<s>", "</s>", "<racm3:break>", "<eoss>"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.text(), st.sampled_from(SPECIAL_LITERALS)), max_size=8))
def test_special_token_literals_in_text_never_become_special_ids(text_tok, fragments):
    vocab = Vocab.build(text_tok.vocab_size, codebook_size=64, grid=(8, 8))
    tok = MultimodalTokenizer(vocab, text_tok)
    text = "".join(fragments)
    literals = [vocab.special_piece(name) for name in vocab.specials]
    text += "".join(literals[: len(fragments)])  # the vocabulary's own special pieces, spelled out
    ids = tok.encode_text(text)
    assert not vocab.is_special(torch.tensor(ids, dtype=torch.long)).any()
    assert text_tok.decode([vocab.id_to_text(i) for i in ids]) == text


def test_text_tokenizer_saves_through_fsspec_and_learns_pieces(text_tok):
    path = "memory://mmgen-test/text.model"
    text_tok.save(path)
    loaded = TextTokenizer.load(path)
    sentence = "The large blue square moves to the center."
    assert loaded.encode(sentence) == text_tok.encode(sentence)
    assert len(loaded.encode(sentence)) < len(sentence) / 2  # merges, not characters


def test_too_small_vocab_is_raised_to_the_byte_fallback_floor():
    messages = []
    path = "memory://mmgen-test/small.model"
    tok = train_text_tokenizer(iter(CORPUS), TextTokenizerConfig(vocab_size=50), path, log=messages.append)
    assert tok.vocab_size > 256 and "below" in messages[0]
    assert tok.decode(tok.encode("Zebra ✓")) == "Zebra ✓"


# ----- image -----


def test_vq_training_learns_and_saves(trained_vq):
    out_dir, metrics, _ = trained_vq
    # Predicting the held-out mean image scores about 9 dB on shapes; a trained tokenizer clears it easily.
    assert metrics["psnr"] > 16.0
    assert 0 < metrics["codebook_usage"] <= 1
    assert metrics["code_perplexity"] >= 1
    with open(f"{out_dir}/metrics.json") as f:
        assert json.load(f)["psnr"] == pytest.approx(metrics["psnr"])
    with open(f"{out_dir}/config.json") as f:
        assert json.load(f)["codebook_size"] == TINY_VQ.codebook_size


def test_vq_encode_decode_shapes_and_ranges(trained_vq):
    out_dir, metrics, heldout = trained_vq
    tok = ImageTokenizer.load(out_dir)
    assert tok.grid == (8, 8) and tok.codebook_size == 64 and tok.image_size == 32
    codes = tok.encode(heldout[:5])
    assert codes.dtype == torch.long and codes.shape == (5, 8, 8)
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    images = tok.decode(codes)
    assert images.dtype == torch.uint8 and images.shape == (5, 32, 32, 3)
    # uint8 tensors in, the same codes out; decoding is deterministic.
    pixels = torch.from_numpy(np.stack([np.asarray(im) for im in heldout[:5]]))
    assert torch.equal(tok.encode(pixels), codes)
    assert torch.equal(tok.decode(codes), images)
    assert tok.evaluate(heldout)["psnr"] == pytest.approx(metrics["psnr"], abs=1e-3)
    # Other sizes are resized on the way in.
    assert tok.encode([heldout[0].resize((48, 48))]).shape == (1, 8, 8)
    with pytest.raises(ValueError):
        tok.decode(torch.full((1, 8, 8), 64))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 4), st.integers(0, 2**32 - 1), st.sampled_from(["noise", "flat", "extremes"]))
def test_image_round_trip_shapes_dtypes_and_ranges(trained_vq, n, seed, kind):
    out_dir, _, _ = trained_vq
    tok = _loaded(out_dir)
    g = torch.Generator().manual_seed(seed)
    if kind == "noise":
        pixels = torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
    elif kind == "flat":
        pixels = torch.randint(0, 256, (n, 1, 1, 3), generator=g, dtype=torch.uint8).expand(n, 32, 32, 3).contiguous()
    else:
        pixels = (torch.randint(0, 2, (n, 32, 32, 3), generator=g) * 255).to(torch.uint8)
    codes = tok.encode(pixels)
    assert codes.dtype == torch.long and codes.shape == (n, 8, 8)
    assert 0 <= int(codes.min()) and int(codes.max()) < tok.codebook_size
    images = tok.decode(codes)
    assert images.dtype == torch.uint8 and images.shape == (n, 32, 32, 3)
    assert torch.equal(tok.decode(codes), images)  # deterministic


_LOADED: dict[str, ImageTokenizer] = {}


def _loaded(out_dir: str) -> ImageTokenizer:
    if out_dir not in _LOADED:
        _LOADED[out_dir] = ImageTokenizer.load(out_dir)
    return _LOADED[out_dir]


# ----- vocab -----


def test_vocab_default_layout_and_save_load(tmp_path):
    vocab = Vocab.build(text_vocab_size=300, codebook_size=64, grid=(8, 8))
    assert vocab.pad == 0 and vocab.text_range == (vocab.text_offset, vocab.text_offset + 300)
    assert vocab.image_range == (vocab.text_offset + 300, vocab.size)
    assert vocab.special("infill_7") < vocab.text_offset and vocab.special("task_t2i") < vocab.text_offset
    path = str(tmp_path / "vocab.json")
    vocab.save(path)
    loaded = Vocab.load(path)
    assert loaded == vocab and loaded.grid == (8, 8) and loaded.size == vocab.size


def test_vocab_masks_work_on_tensors_and_ints():
    vocab = Vocab.build(text_vocab_size=10, codebook_size=4, grid=(2, 2))
    ids = torch.arange(vocab.size).view(2, -1)
    text, image = vocab.is_text(ids), vocab.is_image(ids)
    assert text.shape == ids.shape and text.dtype == torch.bool
    assert int(text.sum()) == 10 and int(image.sum()) == 4 and not (text & image).any()
    assert int(vocab.is_special(ids).sum()) == len(vocab.specials)
    assert vocab.is_text(vocab.text_to_id(0)) and vocab.is_image(vocab.code_to_id(3))
    assert not vocab.is_image(vocab.boi)
    assert torch.equal(vocab.id_to_code(vocab.code_to_id(torch.arange(4))), torch.arange(4))


def test_vocab_represents_a_chameleon_like_layout():
    specials = {"bos": 0, "pad": 1, "eos": 2, "sep": 3, "eoi": 8196, "boi": 8197}
    vocab = Vocab(
        specials=specials, text_offset=8198, text_size=65536 - 8198, image_offset=4, image_size=8192,
        grid=(32, 32), special_pieces={"boi": "<racm3:break>", "eoi": "<eoss>"},
    )  # fmt: skip
    assert vocab.size == 65536 and vocab.image_range == (4, 8196)
    assert vocab.special_piece("boi") == "<racm3:break>" and vocab.special_piece("bos") == "<bos>"
    assert Vocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    with pytest.raises(ValueError):
        # begin-image inside the image code range is ambiguous: rejected
        Vocab(specials={**specials, "boi": 100}, text_offset=8198, text_size=9, image_offset=4, image_size=8192, grid=(1, 1))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.one_of(st.text(min_size=1), st.integers(0, 2**31)), max_size=6))
def test_document_round_trip_is_exact(text_tok, layout):
    vocab = Vocab.build(text_tok.vocab_size, codebook_size=64, grid=(8, 8))
    tok = MultimodalTokenizer(vocab, text_tok)
    parts, previous_text = [], False
    for item in layout:
        if isinstance(item, str):
            if previous_text:  # adjacent texts would merge into one run
                continue
            parts.append(item)
        else:
            parts.append(torch.randint(0, 64, (8, 8), generator=torch.Generator().manual_seed(item)))
        previous_text = isinstance(item, str)
    ids = tok.encode_parts(parts)
    assert ids[0] == vocab.bos and ids[-1] == vocab.eos
    assert ids.count(vocab.boi) == ids.count(vocab.eoi) == sum(isinstance(p, torch.Tensor) for p in parts)
    decoded = tok.decode_parts(torch.tensor(ids))
    assert len(decoded) == len(parts)
    for got, want in zip(decoded, parts):
        assert type(got) is type(want)
        assert got == want if isinstance(want, str) else torch.equal(got, want)


def test_decode_parts_strict_and_lenient(text_tok):
    vocab = Vocab.build(text_tok.vocab_size, codebook_size=64, grid=(2, 2))
    tok = MultimodalTokenizer(vocab, text_tok)
    codes = [vocab.code_to_id(c) for c in (1, 2, 3)]
    truncated = [vocab.bos, *tok.encode_text("a red"), vocab.boi, *codes, *tok.encode_text(" circle"), vocab.eos]
    with pytest.raises(ValueError):
        tok.decode_parts(truncated)
    assert tok.decode_parts(truncated, strict=False) == ["a red", " circle"]
    with pytest.raises(ValueError):
        tok.decode_parts([vocab.boi, *codes])


def test_encode_document_with_images(text_tok, trained_vq):
    out_dir, _, heldout = trained_vq
    image_tok = ImageTokenizer.load(out_dir)
    vocab = Vocab.build(text_tok.vocab_size, image_tok.codebook_size, image_tok.grid)
    tok = MultimodalTokenizer(vocab, text_tok, image_tok)
    doc = Document(parts=["Look: <eos> ", heldout[0], "and then", heldout[1]])
    ids = tok.encode_document(doc)
    text_ids = len(text_tok.encode("Look: <eos> ")) + len(text_tok.encode("and then"))
    assert len(ids) == 2 + text_ids + 2 * vocab.image_tokens
    assert tok.encode_documents([doc, doc]) == [ids, ids]
    parts = tok.decode_parts(ids)
    assert parts[0] == "Look: <eos> " and torch.equal(parts[1], image_tok.encode([heldout[0]])[0])
    rendered = tok.decode_document(ids)
    assert rendered.texts == ["Look: <eos> ", "and then"] and rendered.images[0].size == (32, 32)
