"""Speculative Jacobi decoding: greedy tokens as plain decoding's, sampled images from the same distribution,
a KV cache that after a rejection holds what a fresh prefill of the decided tokens holds."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from image_distribution import T2I, T2I_PROMPT, TINY, exact_image_distribution, image_test_p_values, peaked_decoder
from sampling_reference import FullRecompute

from mmgen.generation import jacobi
from mmgen.generation.sampler import CachedDecoding, SamplingParams, sample
from mmgen.model import Transformer
from mmgen.tokenizers.vocab import Vocab

VOCAB = Vocab.build(text_vocab_size=20, codebook_size=16, grid=(4, 4))
HW = VOCAB.grid[0] * VOCAB.grid[1]
T0, I0 = VOCAB.text_range[0], VOCAB.image_range[0]
PROMPTS = [
    [VOCAB.bos, T0 + 1, T0 + 2],  # text first, then maybe images
    [VOCAB.bos, T0 + 3, VOCAB.boi],  # text-to-image
    [VOCAB.bos, T0 + 4, VOCAB.boi, I0 + 1, I0 + 5],  # an image half given
]


@pytest.mark.parametrize("options", [dict(), dict(cfg_scale=3.0), dict(cfg_scale=2.0, image_cfg_scale=1.5),
                                     dict(cdk_k=3)])
def test_greedy_jacobi_equals_greedy_in_fewer_passes(model, options):
    params = SamplingParams(max_new_tokens=2 * (HW + 2) + 6, temperature=0.0, max_images=2, eos_stops=False,
                            **options)
    expected = sample(model, VOCAB, PROMPTS, params)
    t2i = dataclasses.replace(params, max_new_tokens=HW + 1)  # the batch takes as many passes as its slowest row
    plain = CachedDecoding(model)
    expected_t2i = sample(model, VOCAB, PROMPTS[1:], t2i, decoding=plain)
    for window in (1, 4):
        assert sample(model, VOCAB, PROMPTS, dataclasses.replace(params, jacobi_window=window)) == expected
        fast = CachedDecoding(model)
        assert sample(model, VOCAB, PROMPTS[1:], dataclasses.replace(t2i, jacobi_window=window),
                      decoding=fast) == expected_t2i
        # never more passes; fewer where guesses hit (a random model's greedy codes may defeat every guess)
        assert fast.forward_passes <= plain.forward_passes
        assert fast.forward_passes < plain.forward_passes or options


def test_jacobi_cached_equals_full_recompute(model):
    # sampled, guided, several images: every pass's window read from the cache gives the reference's logits
    params = SamplingParams(max_new_tokens=2 * (HW + 2) + 4, temperature=1.0, top_k=8, cfg_scale=2.0, max_images=2,
                            seed=3, eos_stops=False, jacobi_window=4)
    cached = sample(model, VOCAB, PROMPTS * 2, params)
    assert cached == sample(model, VOCAB, PROMPTS * 2, params, decoding=FullRecompute(model))
    assert any(VOCAB.boi in o for o in cached)  # an image opened after text, besides the prompts' open ones


class _CheckedRollback(CachedDecoding):
    """Before each pass, compares every row's decided cache slots with a fresh prefill of the same tokens."""

    def __init__(self, model):
        super().__init__(model)
        self.fresh = copy.deepcopy(model)
        self.rollbacks = 0  # passes after which a row kept fewer slots than the window wrote
        self.kept_end: torch.Tensor | None = None

    def step(self, seq, fed, slot):
        if self.kept_end is not None:
            self.rollbacks += int((slot < self.kept_end).sum())
            n = int(slot.max())
            self.fresh.setup_cache(seq.shape[0], seq.shape[1])
            self.fresh(seq[:, :n], input_pos=torch.arange(n))
            for block, ref in zip(self.model.layers.values(), self.fresh.layers.values()):
                for r, end in enumerate(slot.tolist()):
                    for got, want in ((block.attention.kv_cache.k, ref.attention.kv_cache.k),
                                      (block.attention.kv_cache.v, ref.attention.kv_cache.v)):
                        torch.testing.assert_close(got[r, :, :end], want[r, :, :end], rtol=1e-4, atol=1e-5)
            self.fresh.clear_cache()
        self.kept_end = slot + fed.shape[1]
        return super().step(seq, fed, slot)


def test_cache_after_rollback_equals_fresh_prefill(model):
    params = SamplingParams(max_new_tokens=HW + 4, temperature=1.0, cfg_scale=2.0, max_images=1, seed=5,
                            eos_stops=False, jacobi_window=5)
    decoding = _CheckedRollback(model)
    sample(model, VOCAB, PROMPTS, params, decoding=decoding)
    assert decoding.rollbacks > 0  # rejected guesses were left behind in the cache and written over


# ----- the sampled distribution -----

@pytest.fixture(scope="module")
def peaked_model() -> Transformer:
    return peaked_decoder()


def test_jacobi_samples_the_distribution_of_plain_sampling(peaked_model, monkeypatch):
    """3,000 guided top-k images of 6 codes (each row an independent sample), plain and with Jacobi decoding,
    against the exact distribution: Pearson tests on the 729 grids and on each position's code. Seeds are
    fixed, so the outcome is too; the last check is that the test catches an acceptance rule that is biased."""
    exact = exact_image_distribution(peaked_model)
    prompts = [T2I_PROMPT] * 3000
    plain = image_test_p_values(sample(peaked_model, TINY, prompts, T2I), exact)
    fast_params = dataclasses.replace(T2I, jacobi_window=3)
    verify, accepted = jacobi.verify, []

    def counted(*args):
        verdict = verify(*args)
        accepted.append(int((verdict.count - 1).sum()))
        return verdict

    monkeypatch.setattr(jacobi, "verify", counted)
    fast = image_test_p_values(sample(peaked_model, TINY, prompts, fast_params), exact)
    assert min(plain) > 1e-3 and min(fast) > 1e-3, (plain, fast)
    assert sum(accepted) > len(prompts)  # guesses were accepted, more than one per image on average

    # a rule that accepts every guess (as if each proposal were the model's distribution) must fail

    def accept_all(target, probs, drafts, limit, generator):
        if drafts is not None and target.shape[1] > 1:
            drafts = jacobi.Drafts(drafts.tokens, probs[:, :-1])
        return verify(target, probs, drafts, limit, generator)

    monkeypatch.setattr(jacobi, "verify", accept_all)
    biased = image_test_p_values(sample(peaked_model, TINY, prompts, fast_params), exact)
    assert min(biased) < 1e-6


def test_window_must_not_be_negative():
    with pytest.raises(ValueError, match="jacobi_window"):
        SamplingParams(max_new_tokens=4, jacobi_window=-1)
