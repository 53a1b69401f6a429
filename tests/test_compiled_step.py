"""``sample(..., compile=...)`` compiles the whole decode step as one graph: compiled once per call's settings
(never per step), without random ops or host syncs in it, and sampling what eager sampling samples."""

from __future__ import annotations

import pytest
import torch
from image_distribution import T2I, T2I_PROMPT, TINY, exact_image_distribution, image_test_p_values, peaked_decoder
from test_sampler import HW, I0, T0, VOCAB
from test_sampler import PROMPTS as SAMPLER_PROMPTS

from mmgen.generation import sampler
from mmgen.generation.sampler import CachedDecoding, SamplingParams, sample

PROMPTS = SAMPLER_PROMPTS + [[VOCAB.bos, T0 + 2, VOCAB.boi, I0 + 3]]  # the last ends inside an image
SETTINGS = [
    dict(temperature=0.0),
    dict(temperature=1.0, top_k=5, repetition_penalty=1.3),
    dict(temperature=0.7, top_p=0.8, force_image=True),
    dict(temperature=1.0, cfg_scale=3.0, image_cfg_scale=1.5),
    dict(temperature=0.0, cdk_k=4),
]


class GraphCounter:
    """A torch.compile backend that runs the captured graph as it is (no code generation, so fast) and keeps
    every graph it was given: one per compilation."""

    def __init__(self):
        self.graphs: list[torch.fx.GraphModule] = []

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        self.graphs.append(graph)
        return graph.forward


@pytest.mark.parametrize("options", SETTINGS)
def test_whole_step_is_one_graph_compiled_once_and_samples_as_eager(model, options):
    params = SamplingParams(max_new_tokens=2 * (HW + 2) + 6, max_images=2, seed=3, eos_stops=False, **options)
    eager_decoding, compiled_decoding = CachedDecoding(model), CachedDecoding(model)
    eager = sample(model, VOCAB, PROMPTS, params, decoding=eager_decoding)
    counter = GraphCounter()
    compiled = sample(model, VOCAB, PROMPTS, params, compile=counter, decoding=compiled_decoding)
    assert compiled == eager
    assert any(VOCAB.boi in o for o in compiled)  # images too, so the mask and guidance ran in the graph
    assert compiled_decoding.forward_passes == eager_decoding.forward_passes == params.max_new_tokens
    # one graph for all 21 compiled steps; a second call with the same settings compiles nothing
    assert len(counter.graphs) == 1
    assert sample(model, VOCAB, PROMPTS, params, compile=counter) == eager
    assert len(counter.graphs) == 1
    graph = counter.graphs[0]
    # the whole step is in it: the model's attention over the cache (its products, cached_math_attention on
    # CPU) and the draw's argmax, with no random op and no tensor turned into a Python number (a host sync)
    called = [str(node.target) for node in graph.graph.nodes if node.op in ("call_function", "call_method")]
    assert any("matmul" in c for c in called) and any("argmax" in c for c in called), called
    random_ops = [c for c in called if "exponential" in c or "rand" in c or "multinomial" in c]
    assert not random_ops and "item" not in called and "tolist" not in called, called


def test_a_graph_per_span_of_the_cache_read_samples_as_eager(model, monkeypatch):
    """A compiled loop reads the cache's first 64 slots while they hold everything written, then 128: two
    graphs, the same samples as eager decoding over the whole cache."""
    params = SamplingParams(max_new_tokens=100, temperature=1.0, max_images=2, seed=5, eos_stops=False)
    eager = sample(model, VOCAB, PROMPTS, params)
    spans, span_of = [], sampler._cache_span

    def recorded(written, cache_len):
        spans.append((written, cache_len, span_of(written, cache_len)))
        return spans[-1][-1]

    monkeypatch.setattr(sampler, "_cache_span", recorded)  # the loop looks it up in the module on every step
    counter = GraphCounter()
    assert sample(model, VOCAB, PROMPTS, params, compile=counter) == eager
    assert len(counter.graphs) == 2
    assert {span for _, _, span in spans} == {64, 128} and {cache for _, cache, _ in spans} == {128}
    assert all(written <= span for written, _, span in spans)


def test_compiled_samples_stop_at_eos_and_report_progress(model):
    params = SamplingParams(max_new_tokens=40, temperature=1.0, max_images=1, seed=11)
    seen: list[int] = []
    eager = sample(model, VOCAB, PROMPTS, params)
    compiled = sample(model, VOCAB, PROMPTS, params, compile=GraphCounter(), progress=lambda s, n: seen.append(s))
    assert compiled == eager
    assert any(o and o[-1] == VOCAB.eos and len(o) < params.max_new_tokens for o in compiled)
    assert seen == [32] or all(len(o) < 32 for o in compiled)  # progress every 32 steps, unless all ended first


def test_compiled_step_samples_the_exact_distribution():
    """3,000 guided top-k images of 6 codes from the compiled step against the exact distribution (Pearson
    tests on the 729 grids and on each position), as tests/test_jacobi.py tests plain and Jacobi sampling."""
    model = peaked_decoder()
    outs = sample(model, TINY, [T2I_PROMPT] * 3000, T2I, compile=GraphCounter())
    p_values = image_test_p_values(outs, exact_image_distribution(model))
    assert min(p_values) > 1e-3, p_values


@pytest.mark.slow
def test_inductor_whole_step_samples_as_eager(model):
    """The default backend (inductor, generated C++): greedy and sampled tokens as eager's (the same random
    times; a float rounding could only flip a near-tie, which this seeded model does not have)."""
    for options in (SETTINGS[0], SETTINGS[3]):
        params = SamplingParams(max_new_tokens=HW + 4, max_images=1, seed=5, eos_stops=False, **options)
        assert sample(model, VOCAB, PROMPTS, params, compile=True) == sample(model, VOCAB, PROMPTS, params)


def test_prompts_of_similar_lengths_share_a_compilation(model):
    """The cache's length is one of the graph's shapes; it is rounded up, so a longer prompt compiles nothing
    new."""
    params = SamplingParams(max_new_tokens=10, temperature=0.0, max_images=0)
    counter = GraphCounter()
    for prompt in ([VOCAB.bos], [VOCAB.bos, T0 + 1, T0 + 2, T0 + 3, T0 + 4]):
        assert sample(model, VOCAB, [prompt], params, compile=counter) == sample(model, VOCAB, [prompt], params)
    assert len(counter.graphs) == 1


def test_steps_after_the_first_skip_guards_and_leave_the_callers_stance(model):
    """Steps after a loop's first run without dynamo's guard checks; afterwards the stance is the caller's again,
    so a call with another batch shape compiles its own graph (a skipped check would raise instead), and under a
    caller's ``force_eager`` nothing is compiled."""
    from torch._dynamo import eval_frame

    params = SamplingParams(max_new_tokens=8, temperature=0.0, max_images=0)
    counter = GraphCounter()
    seen = []
    original = eval_frame._stance

    def checking(graph, example_inputs):  # each compiled step, when it runs, records the stance it runs under
        run = counter(graph, example_inputs)
        return lambda *args: (seen.append(eval_frame._stance.skip_guard_eval_unsafe), run(*args))[1]

    assert sample(model, VOCAB, PROMPTS[:1], params, compile=checking) == sample(model, VOCAB, PROMPTS[:1], params)
    assert seen[0] is False and all(seen[1:]) and len(seen) == params.max_new_tokens - 1
    assert eval_frame._stance is original and not original.skip_guard_eval_unsafe
    assert sample(model, VOCAB, PROMPTS[:2], params, compile=checking) == sample(model, VOCAB, PROMPTS[:2], params)
    assert len(counter.graphs) == 2
    with torch.compiler.set_stance("force_eager"):
        assert sample(model, VOCAB, PROMPTS[:3], params, compile=counter) == sample(model, VOCAB, PROMPTS[:3], params)
    assert len(counter.graphs) == 2
