"""The sampler obeys the interleaved grammar, is reproducible, and its cache and guidance paths are exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sampling_reference import FullRecompute

from mmgen.generation.logits_processors import contrastive_top_k, guide, repetition_penalty
from mmgen.generation.sampler import SamplingParams, guidance_prompt, sample
from mmgen.tokenizers.vocab import Vocab

VOCAB = Vocab.build(text_vocab_size=20, codebook_size=16, grid=(2, 3))
HW = VOCAB.grid[0] * VOCAB.grid[1]


T0, I0 = VOCAB.text_range[0], VOCAB.image_range[0]
PROMPTS = [
    [VOCAB.bos, T0 + 1, T0 + 2, T0 + 3],
    [VOCAB.bos],
    [VOCAB.bos, T0 + 4, VOCAB.boi, *range(I0, I0 + HW), VOCAB.eoi, T0 + 5],
]


def check_grammar(seq: list[int], *, max_images: int, max_new_tokens: int, eos_stops: bool = True):
    assert len(seq) <= max_new_tokens
    images, i = 0, 0
    while i < len(seq):
        tok = seq[i]
        if tok == VOCAB.boi:
            codes = seq[i + 1 : i + 1 + HW]
            assert len(codes) == HW and all(VOCAB.image_range[0] <= c < VOCAB.image_range[1] for c in codes)
            assert seq[i + 1 + HW] == VOCAB.eoi
            images += 1
            i += HW + 2
            continue
        assert tok == VOCAB.eos or VOCAB.text_range[0] <= tok < VOCAB.text_range[1], seq
        if tok == VOCAB.eos and eos_stops:
            assert i == len(seq) - 1
        i += 1
    assert images <= max_images
    return images


@pytest.mark.parametrize("max_images", [0, 1, 2])
def test_samples_obey_grammar(model, max_images):
    prompts = PROMPTS * 3
    params = SamplingParams(max_new_tokens=60, temperature=1.0, max_images=max_images, seed=3, eos_stops=False)
    outs = sample(model, VOCAB, prompts, params)
    images = [check_grammar(o, max_images=max_images, max_new_tokens=60, eos_stops=False) for o in outs]
    assert all(len(o) == 60 for o in outs)
    if max_images:
        assert max(images) > 0  # BOI is reachable from text mode


def test_eos_ends_sequences_and_budget_holds(model):
    outs = sample(model, VOCAB, PROMPTS * 4, SamplingParams(max_new_tokens=40, temperature=1.5, top_k=20, max_images=3, seed=1))
    for o in outs:
        check_grammar(o, max_images=3, max_new_tokens=40)
    assert any(o and o[-1] == VOCAB.eos for o in outs)


def test_image_needs_room_in_budget(model):
    # HW + 2 = 8 tokens would overflow a budget of 7, so BOI is never allowed.
    outs = sample(model, VOCAB, PROMPTS * 4, SamplingParams(max_new_tokens=7, max_images=2, force_image=True, seed=0))
    assert all(VOCAB.boi not in o for o in outs)


def test_seed_reproduces(model):
    kwargs = dict(max_new_tokens=30, temperature=1.0, top_p=0.9, max_images=1, eos_stops=False)
    a = sample(model, VOCAB, PROMPTS, SamplingParams(seed=7, **kwargs))
    b = sample(model, VOCAB, PROMPTS, SamplingParams(seed=7, **kwargs))
    c = sample(model, VOCAB, PROMPTS, SamplingParams(seed=8, **kwargs))
    assert a == b and a != c


def test_force_image_opens_an_image(model):
    outs = sample(model, VOCAB, PROMPTS, SamplingParams(max_new_tokens=12, max_images=1, force_image=True, seed=2,
                                                        eos_stops=False))
    for o in outs:
        assert o[0] == VOCAB.boi and o[HW + 1] == VOCAB.eoi
        check_grammar(o, max_images=1, max_new_tokens=12, eos_stops=False)


def test_greedy_batch_equals_single_prompts(model):
    params = SamplingParams(max_new_tokens=15, temperature=0.0, max_images=1, seed=0, eos_stops=False)
    batched = sample(model, VOCAB, PROMPTS, params)
    assert batched == [sample(model, VOCAB, [p], params)[0] for p in PROMPTS]


def test_prompt_ending_inside_an_image_is_completed(model):
    prompts = [[VOCAB.bos, T0 + 1, VOCAB.boi], [VOCAB.bos, VOCAB.boi, I0, I0 + 1]]
    outs = sample(model, VOCAB, prompts, SamplingParams(max_new_tokens=HW + 6, max_images=1, seed=4, eos_stops=False))
    for prompt, out in zip(prompts, outs):
        due = HW - (len(prompt) - prompt.index(VOCAB.boi) - 1)
        assert all(VOCAB.image_range[0] <= c < VOCAB.image_range[1] for c in out[:due])
        assert out[due] == VOCAB.eoi
        assert VOCAB.boi not in out  # the open image used up max_images


# ----- cache, guidance and processors -----

@pytest.mark.parametrize("options", [dict(), dict(cfg_scale=3.0, image_cfg_scale=1.5), dict(cdk_k=4)])
def test_kv_cache_equals_full_forward(model, options):
    params = SamplingParams(max_new_tokens=2 * (HW + 2) + 6, temperature=1.0, max_images=2, seed=5, eos_stops=False,
                            **options)
    prompts = PROMPTS + [[VOCAB.bos, T0 + 2, VOCAB.boi, I0 + 3]]
    cached = sample(model, VOCAB, prompts, params)
    full = sample(model, VOCAB, prompts, params, decoding=FullRecompute(model))
    assert cached == full
    assert any(VOCAB.boi in o for o in cached)  # images were sampled, so guidance was exercised


def test_cfg_scale_one_equals_unguided(model):
    kwargs = dict(max_new_tokens=3 * (HW + 2), temperature=1.0, max_images=3, force_image=True, seed=11,
                  eos_stops=False)
    unguided = sample(model, VOCAB, PROMPTS * 2, SamplingParams(**kwargs))
    assert sample(model, VOCAB, PROMPTS * 2, SamplingParams(cfg_scale=1.0, **kwargs)) == unguided
    assert sample(model, VOCAB, PROMPTS * 2, SamplingParams(cfg_scale=1.0, image_cfg_scale=1.0, **kwargs)) == unguided
    assert sample(model, VOCAB, PROMPTS * 2, SamplingParams(cfg_scale=5.0, **kwargs)) != unguided


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**16),
    temperature=st.sampled_from([0.0, 0.7, 1.0, 2.0]),
    top_k=st.sampled_from([0, 1, 5]),
    top_p=st.sampled_from([0.5, 1.0]),
    penalty=st.sampled_from([1.0, 1.3]),
    cfg=st.sampled_from([0.0, 1.0, 4.0]),
    image_cfg=st.sampled_from([0.0, 2.0]),
    cdk_k=st.sampled_from([0, 3]),
    max_images=st.integers(0, 3),
    force_image=st.booleans(),
    max_new_tokens=st.integers(1, 30),
    jacobi_window=st.sampled_from([0, 3]),
)
def test_property_never_mixes_modalities(model, seed, temperature, top_k, top_p, penalty, cfg, image_cfg, cdk_k,
                                         max_images, force_image, max_new_tokens, jacobi_window):
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                            repetition_penalty=penalty, cfg_scale=cfg, image_cfg_scale=image_cfg, cdk_k=cdk_k,
                            cdk_alpha=0.1, max_images=max_images, force_image=force_image, seed=seed,
                            jacobi_window=jacobi_window)
    outs = sample(model, VOCAB, PROMPTS, params)
    for o in outs:
        check_grammar(o, max_images=max_images, max_new_tokens=max_new_tokens)


def test_guidance_prompts_drop_text_and_keep_open_image():
    image = [VOCAB.boi, *range(I0, I0 + HW), VOCAB.eoi]
    prompt = [VOCAB.bos, T0 + 1, *image, T0 + 2, VOCAB.boi, I0 + 1]
    assert guidance_prompt(prompt, VOCAB, keep_images=False) == [VOCAB.bos, VOCAB.boi, I0 + 1]
    assert guidance_prompt(prompt, VOCAB, keep_images=True) == [VOCAB.bos, *image, VOCAB.boi, I0 + 1]
    assert guidance_prompt([VOCAB.bos, T0 + 3], VOCAB, keep_images=True) == [VOCAB.bos]


def test_repetition_penalty_lowers_seen_tokens_only():
    logits = torch.tensor([[2.0, -1.0, 3.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    out = repetition_penalty(logits, seen, 2.0)
    assert out.tolist() == [[1.0, -2.0, 3.0, 0.5]]


@pytest.mark.parametrize("compile", [False, True])
def test_greedy_samples_penalise_the_prompts_and_their_own_text_tokens(model, compile):
    """Greedy decoding with a penalty equals a loop that recomputes the whole sequence and penalises every
    text token of the prompt and of what it sampled so far (the sampler keeps them in its own buffer)."""
    penalty, steps = 3.0, 12
    params = SamplingParams(max_new_tokens=steps, temperature=0.0, max_images=0, eos_stops=False,
                            repetition_penalty=penalty)
    text_only = torch.full((VOCAB.size,), float("-inf"))
    text_only[slice(*VOCAB.text_range)] = 0.0
    text_only[VOCAB.eos] = 0.0
    expected = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            seq = list(prompt)
            for _ in range(steps):
                seen = torch.zeros(1, VOCAB.size, dtype=torch.bool)
                seen[0, [t for t in seq if VOCAB.is_text(t)]] = True
                logits = model(torch.tensor([seq]))[:, -1].float()
                seq.append(int((repetition_penalty(logits, seen, penalty) + text_only).argmax()))
            expected.append(seq[len(prompt):])
    got = sample(model, VOCAB, PROMPTS, params, compile="eager" if compile else False)
    assert got == expected
    # the penalty changed what was sampled, so the buffer of seen tokens was read
    assert got != sample(model, VOCAB, PROMPTS, dataclasses.replace(params, repetition_penalty=1.0))


def test_guide_formula_and_cdk_head():
    cond, uncond, io = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.0]]), torch.tensor([[1.0, 1.0]])
    assert torch.allclose(guide(cond, uncond, 3.0), uncond + 3.0 * (cond - uncond))
    chameleon = uncond + 1.5 * (io - uncond) + 3.0 * (cond - io)
    assert torch.allclose(guide(cond, uncond, 3.0, image_only=io, image_scale=1.5), chameleon)
    expert = torch.tensor([[5.0, 4.0, 0.0, -9.0]])
    amateur = torch.tensor([[5.0, 0.0, 0.0, 0.0]])
    scores = contrastive_top_k(expert, amateur, k=2, alpha=0.5)
    # head: p >= 0.5 * p(2nd best) keeps tokens 0 and 1; the amateur's favourite (0) loses to 1
    assert torch.isinf(scores[0, 2:]).all() and scores[0, 1] > scores[0, 0]
