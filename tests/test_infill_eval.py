"""The infilling evaluation: like-with-like reading of text infills, and the documents it runs on."""

import numpy as np
import torch

import mmgen.eval.infill_eval as infill_eval_module
from mmgen.config.schema import ModelConfig, WorldConfig
from mmgen.data.shapes_world import random_scene, render_scene
from mmgen.eval.shapes_eval import world_documents
from mmgen.model import Transformer


def test_text_infill_and_left_context_baseline_are_read_alike_at_the_true_length(tiny_tokenizer, monkeypatch):
    """A scripted sampler: the infill writes the right span but never ends it; the baseline writes an EOS first,
    then the span. Read alike at the span's true length both are exact; only the own-end reading, which asks the
    infill to end the span itself, counts the infill wrong."""
    tokenizer, vocab = tiny_tokenizer, tiny_tokenizer.vocab
    doc = np.array(tokenizer.encode_parts(["a small red circle at the top left and a large blue square on the right."]))
    sentinel = vocab.special("infill_0")
    truth: list[int] = []

    def scripted(model, vocab_, prompts, params, batch_size, desc=""):
        assert not params.eos_stops  # both decoded past EOS, so that both can be read at the true length
        if desc == "infill text":
            (prompt,) = prompts
            start, after = prompt.index(sentinel), prompt[prompt.index(sentinel) + 1 : -1]
            truth[:] = doc[start : len(doc) - 1 - len(after)].tolist()
            return [truth + truth]
        return [[vocab.eos] + truth + [vocab.eos]]

    monkeypatch.setattr(infill_eval_module, "sample_in_batches", scripted)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2), vocab.size)
    model.init_weights()
    result = infill_eval_module.infill_eval(model.eval(), tokenizer, [doc], documents=1)
    assert truth and result["documents"] == {"image": 0, "text": 1}
    assert result["text_exact"] == 1.0 and result["text_exact_left_context"] == 1.0
    assert result["text_exact_own_end"] == 0.0
    assert result["text_exact_gain"] == 0.0 and result["text_exact_gain_items"] == 1
    # random weights: both contexts score the span near log2(vocab) bits per token, and the figures are finite
    for key in ("text_span_bits", "text_span_bits_left_context"):
        assert 0.5 * np.log2(vocab.size) < result[key] < 2 * np.log2(vocab.size), (key, result[key])


def test_image_infills_take_their_own_temperature_and_guidance(tiny_tokenizer, monkeypatch):
    """The image infill is drawn with the given temperature and guidance and read against the original; text spans
    stay greedy and unguided (guidance changes image logits only)."""
    tokenizer, vocab = tiny_tokenizer, tiny_tokenizer.vocab
    image = render_scene(random_scene(np.random.default_rng(0), WorldConfig(image_size=16)), 16)
    doc = np.array(tokenizer.encode_parts(["Here is a small red circle.", image, "It moves to the left of the square."]))
    start = doc.tolist().index(vocab.boi)
    original = doc[start : doc.tolist().index(vocab.eoi) + 1].tolist()
    params = {}

    def scripted(model, vocab_, prompts, p, batch_size, desc=""):
        params[desc] = p
        return [original if desc == "infill images" else [vocab.eos] for _ in prompts]

    monkeypatch.setattr(infill_eval_module, "sample_in_batches", scripted)
    model = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2), vocab.size)
    model.init_weights()
    result = infill_eval_module.infill_eval(model.eval(), tokenizer, [doc], documents=1, temperature=0.3, cfg_scale=1.5)
    assert (params["infill images"].temperature, params["infill images"].cfg_scale) == (0.3, 1.5)
    for desc in ("infill text", "left-context baseline"):
        assert (params[desc].temperature, params[desc].cfg_scale) == (0.0, 0.0)
    assert result["documents"]["image"] == 1 and result["image_accuracy"] == 1.0  # the original, read as itself


def test_world_documents_of_the_validation_split_are_fresh_and_reproducible(tiny_tokenizer):
    world = WorldConfig(image_size=16)
    validation = world_documents(tiny_tokenizer, world, 4, "validation")
    heldout = world_documents(tiny_tokenizer, world, 4, "heldout")
    assert [d.tolist() for d in validation] == [d.tolist() for d in world_documents(tiny_tokenizer, world, 4, "validation")]
    assert not any(v.tolist() == h.tolist() for v in validation for h in heldout)
    vocab = tiny_tokenizer.vocab
    for ids in validation:  # a whole document: BOS, its text and images, EOS
        assert ids[0] == vocab.bos and ids[-1] == vocab.eos and vocab.boi in ids.tolist()
        parts = tiny_tokenizer.decode_parts(ids.tolist())
        assert any(isinstance(p, str) and p.strip() for p in parts) and any(not isinstance(p, str) for p in parts)
