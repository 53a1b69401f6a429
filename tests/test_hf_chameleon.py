"""Hugging Face Chameleon interop: logits equal the reference's, export/import is exact.

Tiny random ``ChameleonForConditionalGeneration`` models (transformers is a
test-only dependency) are saved with ``save_pretrained`` and read back by
mmgen. The reference sets image-token logits to the dtype's minimum inside its
forward, so the unmasked logits ``lm_head(final hidden state)`` are compared.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import ChameleonConfig, ChameleonForConditionalGeneration  # noqa: E402

from chameleon_helpers import randomise_language_model, write_checkpoint  # noqa: E402
from mmgen.config.schema import ModelConfig  # noqa: E402
from mmgen.interop import load_chameleon, save_chameleon  # noqa: E402
from mmgen.interop.hf_chameleon import (  # noqa: E402
    VOCAB_FILE,
    image_code_name,
    vocab_from_vocabulary_map,
)
from mmgen.model import Transformer  # noqa: E402
from mmgen.tokenizers.vocab import Vocab  # noqa: E402

transformers.logging.set_verbosity_error()

VOCAB_SIZE = 96
CODES = 16  # image codes at ids 4..19, as Meta's release has them at 4..8195


def chameleon_vocabulary_map() -> dict[str, int]:
    """Meta's layout in miniature: <s> <pad> </s> <unk>, image codes, <eoss> <racm3:break>, reserved, text."""
    vm = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vm.update({image_code_name(c): 4 + c for c in range(CODES)})
    vm.update({"<eoss>": 20, "<racm3:break>": 21, "<reserved08706>": 22, "<image>": 23, "<reserved08708>": 24})
    vm.update({f"piece{i}": i for i in range(25, VOCAB_SIZE)})
    return vm


def hf_config(**overrides) -> ChameleonConfig:
    kwargs = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
        vocabulary_map=chameleon_vocabulary_map(),
        # smallest VQ-VAE transformers accepts (GroupNorm needs 32 channels): 16 px -> 8x8 codes
        vq_config=dict(
            embed_dim=4, num_embeddings=CODES, latent_channels=4, resolution=16,
            base_channels=32, channel_multiplier=[1, 1], num_res_blocks=1,
        ),
    )
    kwargs.update(overrides)
    return ChameleonConfig(**kwargs)


def random_hf_model(seed: int = 0, **overrides) -> ChameleonForConditionalGeneration:
    torch.manual_seed(seed)
    return randomise_language_model(ChameleonForConditionalGeneration(hf_config(**overrides)).eval())


def reference_logits(hf: ChameleonForConditionalGeneration, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf.lm_head(hf.model(input_ids=ids).last_hidden_state)


def token_ids(B=2, T=24, seed=1):
    return torch.randint(0, VOCAB_SIZE, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("swin_norm", [False, True])
def test_imported_logits_match_reference(tmp_path, swin_norm):
    hf = random_hf_model(swin_norm=swin_norm)
    hf.save_pretrained(tmp_path / "hf")
    model, vocab = load_chameleon(str(tmp_path / "hf"))
    assert model.cfg.norm_placement == ("swin" if swin_norm else "pre")
    assert model.cfg.n_kv_heads == 2 and model.cfg.rope_theta == 500.0 and model.cfg.ffn_hidden_dim == 96
    ids = token_ids()
    want = reference_logits(hf, ids)
    with torch.no_grad():
        got = model(ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # The reference's own output differs only on the image codes it masks.
    with torch.no_grad():
        masked = hf(input_ids=ids).logits
    image = torch.zeros(VOCAB_SIZE, dtype=torch.bool)
    image[vocab.image_offset : vocab.image_offset + vocab.image_size] = True
    torch.testing.assert_close(got[..., ~image], masked[..., ~image], atol=1e-4, rtol=1e-4)
    assert (masked[..., image] == torch.finfo(masked.dtype).min).all()
    # Without the RoPE permutation the function would differ: the check above has teeth.
    with torch.no_grad():
        model.layers["0"].attention.wq.weight.copy_(hf.model.layers[0].self_attn.q_proj.weight)
        assert not torch.allclose(model(ids), want, atol=1e-3)


def test_imported_vocab_is_chameleons_layout(tmp_path):
    random_hf_model().save_pretrained(tmp_path / "hf")
    _, vocab = load_chameleon(str(tmp_path / "hf"))
    assert (vocab.image_offset, vocab.image_size, vocab.size) == (4, CODES, VOCAB_SIZE)
    assert (vocab.bos, vocab.pad, vocab.eos, vocab.eoi, vocab.boi, vocab.sep) == (0, 1, 2, 20, 21, 22)
    assert vocab.specials["image"] == 23 and vocab.special_piece("boi") == "<racm3:break>"
    assert vocab.text_range == (25, VOCAB_SIZE)
    assert vocab.grid == (8, 8)
    assert vocab.is_image(4) and vocab.is_image(19) and not vocab.is_image(20)


def test_vocabulary_map_must_hold_contiguous_codes():
    vm = chameleon_vocabulary_map()
    vm[image_code_name(3)], vm["piece30"] = 30, 7  # swap a code out of its run
    with pytest.raises(ValueError, match="contiguous"):
        vocab_from_vocabulary_map(vm, VOCAB_SIZE, (8, 8))
    vm = chameleon_vocabulary_map()
    del vm["<racm3:break>"]
    with pytest.raises(ValueError, match="boi"):
        vocab_from_vocabulary_map(vm, VOCAB_SIZE, (8, 8))


@pytest.mark.parametrize("tie", [False, True])
def test_export_import_round_trip_is_exact(tmp_path, tie):
    hf = random_hf_model(seed=3, tie_word_embeddings=tie, swin_norm=True)
    hf.save_pretrained(tmp_path / "hf")
    model, vocab = load_chameleon(str(tmp_path / "hf"))
    (tmp_path / "hf" / "tokenizer_config.json").write_text("{}")
    save_chameleon(model, vocab, str(tmp_path / "out"), extras_from=str(tmp_path / "hf"), max_shard_bytes=20_000)
    assert os.path.exists(tmp_path / "out" / "model.safetensors.index.json")  # sharded
    again, vocab2 = load_chameleon(str(tmp_path / "out"))
    assert vocab2 == vocab and again.cfg == model.cfg
    # the source's token names and tokenizer files came along
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    assert exported["vocabulary_map"] == chameleon_vocabulary_map()
    assert (tmp_path / "out" / "tokenizer_config.json").exists()
    assert (again.output.weight is again.tok_embeddings.weight) == tie
    state, state2 = model.state_dict(), again.state_dict()
    assert state.keys() == state2.keys()
    for key, value in state.items():
        assert torch.equal(value, state2[key]), key
    # transformers reads the export back to the very tensors it wrote, VQ-VAE included.
    hf2 = ChameleonForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    theirs = hf2.state_dict()
    for key, value in hf.state_dict().items():
        assert torch.equal(value, theirs[key]), key


def test_mmgen_layout_exports_to_a_model_transformers_runs(tmp_path):
    vocab = Vocab.build(40, 16, (4, 4))  # mmgen's own layout: specials, text, image codes
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=1, max_seq_len=64, rope_theta=1000.0)
    torch.manual_seed(0)
    model = Transformer(cfg, vocab.size)
    model.init_weights()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    save_chameleon(model, vocab, str(tmp_path / "out"))
    hf = ChameleonForConditionalGeneration.from_pretrained(tmp_path / "out").eval()
    ids = torch.randint(0, vocab.size, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(reference_logits(hf, ids), model(ids), atol=1e-4, rtol=1e-4)
    # transformers masks exactly mmgen's image codes
    assert hf.model.vocabulary_mapping.image_tokens == list(range(*vocab.image_range))
    again, vocab2 = load_chameleon(str(tmp_path / "out"))
    assert vocab2 == vocab  # mmgen-only roles (mask, infill, task tokens) survive through mmgen_vocab.json
    # Without that file the layout is still read from vocabulary_map, minus the mmgen-only roles.
    os.remove(tmp_path / "out" / VOCAB_FILE)
    _, derived = load_chameleon(str(tmp_path / "out"))
    assert derived.image_range == vocab.image_range
    for role in ("pad", "bos", "eos", "boi", "eoi", "sep"):
        assert derived.special(role) == vocab.special(role)


def test_bad_inputs_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_chameleon(str(tmp_path))
    random_hf_model().save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "attention_bias": True}))
    with pytest.raises(ValueError, match="bias"):
        load_chameleon(str(tmp_path / "hf"))
    path.write_text(json.dumps(config))
    os.remove(tmp_path / "hf" / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_chameleon(str(tmp_path / "hf"))
    # export refuses what Chameleon cannot express, and leaves nothing behind
    vocab = Vocab.build(20, 16, (4, 4))
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=4, qk_norm=False), vocab.size)
    with pytest.raises(ValueError, match="qk_norm"):
        save_chameleon(model, vocab, str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")



def test_cli_imports_into_a_run_and_exports_back(tmp_path, monkeypatch, capsys):
    import runpy
    import sys

    from mmgen.model.checkpoint import load_trained_model

    hf, _ = write_checkpoint(str(tmp_path / "hf"), seed=5)  # a checkpoint as released: with its tokenizer.json
    script = os.path.join(os.path.dirname(__file__), "..", "train", "convert_chameleon.py")

    def convert(*args) -> int:
        monkeypatch.setattr(sys, "argv", [script, *args])
        with pytest.raises(SystemExit) as exit_:
            runpy.run_path(script, run_name="__main__")
        return exit_.value.code or 0

    assert convert("import", "--hf_dir", str(tmp_path / "hf"), "--config", "debug", "--output_dir", str(tmp_path / "run")) == 0
    model, step = load_trained_model(str(tmp_path / "run" / "pretrain"))
    vocab = Vocab.load(str(tmp_path / "run" / "tokenizers" / "vocab.json"))
    assert step == 0 and vocab.boi == hf.config.vocabulary_map["<racm3:break>"]
    ids = torch.randint(0, vocab.size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference_logits(hf, ids), atol=1e-4, rtol=1e-4)
    assert convert("export", "--config", "debug", "--output_dir", str(tmp_path / "run"), "--hf_dir", str(tmp_path / "out")) == 0
    theirs = ChameleonForConditionalGeneration.from_pretrained(tmp_path / "out").state_dict()
    for key, value in hf.state_dict().items():  # the VQ-VAE too: the imported run carries it
        assert torch.equal(value, theirs[key]), key
    capsys.readouterr()
    assert convert("import", "--hf_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "run2")) == 2
    assert capsys.readouterr().err.startswith("error: missing input")
