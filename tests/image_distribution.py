"""The sampled-distribution check the sampler's tests share: guided top-k text-to-image samples of a tiny
vocabulary (6 codes over 3 code values), tested with Pearson's test against the exact distribution, which is
enumerated over all 3^6 grids."""

from __future__ import annotations

import itertools

import torch

from mmgen.config.schema import ModelConfig
from mmgen.generation.logits_processors import guide, sampling_probs
from mmgen.generation.sampler import SamplingParams
from mmgen.model import Transformer
from mmgen.tokenizers.vocab import Vocab

TINY = Vocab.build(text_vocab_size=4, codebook_size=3, grid=(2, 3))
TINY_CODES = TINY.grid[0] * TINY.grid[1]
T2I_PROMPT = [TINY.bos, TINY.text_range[0] + 1, TINY.boi]
T2I = SamplingParams(max_new_tokens=TINY_CODES + 1, temperature=1.0, top_k=2, cfg_scale=2.0, max_images=1,
                     eos_stops=False, seed=1)


def peaked_decoder() -> Transformer:
    """Weights large enough that each code's distribution is peaked and depends on the codes before it,
    so that a wrong acceptance rule shows in the sampled images."""
    torch.manual_seed(0)
    m = Transformer(ModelConfig(dim=16, n_layers=2, n_heads=2, init_std=0.3), TINY.size)
    m.init_weights()
    return m.eval()


def exact_image_distribution(model) -> torch.Tensor:
    """Probability of each of the 3^6 code grids under T2I's guided, top-k sampling, by enumeration."""
    lo = TINY.image_range[0]
    grids = torch.tensor(list(itertools.product(range(3), repeat=TINY_CODES)))
    n = len(grids)
    cond = torch.cat([torch.tensor(T2I_PROMPT).expand(n, -1), grids + lo], dim=1)
    uncond = torch.cat([torch.tensor([TINY.bos, TINY.boi]).expand(n, -1), grids + lo], dim=1)
    with torch.inference_mode():
        cond_logits = model(cond)[:, len(T2I_PROMPT) - 1 : -1].float()
        uncond_logits = model(uncond)[:, 1:-1].float()
    guided = guide(cond_logits, uncond_logits, T2I.cfg_scale)[..., lo : lo + 3]
    probs = sampling_probs(guided, temperature=T2I.temperature, top_k=T2I.top_k)
    return probs.gather(-1, grids[..., None])[..., 0].prod(dim=1).double()


def chi_square_p(observed: torch.Tensor, expected: torch.Tensor) -> float:
    """Pearson's test of counts against expected counts, cells expecting fewer than 5 pooled."""
    small = expected < 5
    o = torch.cat([observed[~small], observed[small].sum()[None]])
    e = torch.cat([expected[~small], expected[small].sum()[None]])
    o, e = o[e > 0], e[e > 0]
    stat, dof = ((o - e) ** 2 / e).sum(), torch.tensor(len(e) - 1.0, dtype=torch.double)
    return float(torch.special.gammaincc(dof / 2, stat / 2))


def image_test_p_values(outs: list[list[int]], exact: torch.Tensor) -> list[float]:
    """p-values of the sampled grids against the exact distribution: the joint one, then each position's."""
    codes = torch.tensor([o[:TINY_CODES] for o in outs]) - TINY.image_range[0]
    cell = (codes * 3 ** torch.arange(TINY_CODES - 1, -1, -1)).sum(dim=1)
    n = len(outs)
    p_values = [chi_square_p(torch.bincount(cell, minlength=len(exact)).double(), exact * n)]
    grids = torch.tensor(list(itertools.product(range(3), repeat=TINY_CODES)))
    for i in range(TINY_CODES):
        marginal = torch.stack([exact[grids[:, i] == c].sum() for c in range(3)])
        p_values.append(chi_square_p(torch.bincount(codes[:, i], minlength=3).double(), marginal * n))
    return p_values
