"""Inductor on a CPU freezes the weights into the compiled decode step (mmgen/generation/frozen.py): it samples what
eager sampling samples, a second call compiles nothing, and no frozen graph ever runs weights that are not the
model's own now — after an in-place change, for another model that may reuse the first one's addresses, or for a
model loaded under inference mode."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
from torch._dynamo.utils import counters
from test_sampler import HW, PROMPTS, VOCAB

from mmgen.config.schema import ModelConfig
from mmgen.generation import frozen
from mmgen.generation.sampler import SamplingParams, sample
from mmgen.model import Transformer

pytestmark = pytest.mark.slow  # each compilation is seconds of generated C++

GREEDY = SamplingParams(max_new_tokens=12, temperature=0.0, max_images=0, eos_stops=False)
SAMPLED = SamplingParams(max_new_tokens=12, temperature=1.0, top_k=8, max_images=0, eos_stops=False, seed=4)


def decoder(seed: int) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2), VOCAB.size)
    m.init_weights()
    return m.eval()


def compilations() -> int:
    return counters["stats"]["unique_graphs"]


def test_frozen_step_samples_as_eager_and_compiles_once():
    model = decoder(0)
    for params in (GREEDY, SAMPLED):
        assert sample(model, VOCAB, PROMPTS, params, compile=True) == sample(model, VOCAB, PROMPTS, params)
    before = compilations()
    session = frozen._sessions[model]["step"]
    assert sample(model, VOCAB, PROMPTS, GREEDY, compile=True) == sample(model, VOCAB, PROMPTS, GREEDY)
    assert compilations() == before and frozen._sessions[model]["step"] is session  # the same graph and cache
    assert model.layers["0"].attention.kv_cache is None  # and the model is left without it, ready to train


def test_changed_weights_compile_anew_and_never_run_a_stale_graph():
    model = decoder(1)
    first = sample(model, VOCAB, PROMPTS, GREEDY, compile=True)
    with torch.no_grad():  # in place: the same parameter objects, so dynamo's identity guards alone would pass
        model.output.weight.neg_()
    changed = sample(model, VOCAB, PROMPTS, GREEDY)
    assert changed != first
    assert sample(model, VOCAB, PROMPTS, GREEDY, compile=True) == changed


def test_a_model_is_freed_with_its_session_and_the_next_samples_as_eager():
    model = decoder(2)
    sample(model, VOCAB, PROMPTS, GREEDY, compile=True)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None  # nothing kept the model alive, so its session, graphs and caches went with it
    other = decoder(3)  # same shapes, other weights: its tensors may well take the freed addresses
    assert sample(other, VOCAB, PROMPTS, GREEDY, compile=True) == sample(other, VOCAB, PROMPTS, GREEDY)


def test_a_model_loaded_under_inference_mode_is_compiled_for_each_call():
    """Inference tensors keep no version counter, so an in-place change cannot be seen: nothing is kept."""
    with torch.inference_mode():
        model = decoder(4)
        first = sample(model, VOCAB, PROMPTS, GREEDY, compile=True)
        assert first == sample(model, VOCAB, PROMPTS, GREEDY)
        model.output.weight.neg_()
        assert sample(model, VOCAB, PROMPTS, GREEDY, compile=True) == sample(model, VOCAB, PROMPTS, GREEDY) != first


def test_jacobi_decoding_freezes_the_forward_alone_and_samples_as_eager():
    """With Jacobi decoding only the model's forward is compiled (a graph per window width): frozen as well, on
    its own cache, the same tokens as eager Jacobi decoding, and nothing compiled on a second call."""
    model = decoder(5)
    params = SamplingParams(max_new_tokens=HW + 6, temperature=0.0, force_image=True, eos_stops=False, jacobi_window=3)
    eager = sample(model, VOCAB, PROMPTS, params)
    assert sample(model, VOCAB, PROMPTS, params, compile=True) == eager
    before = compilations()
    assert sample(model, VOCAB, PROMPTS, params, compile=True) == eager
    assert compilations() == before and set(frozen._sessions[model]) == {"forward"}
