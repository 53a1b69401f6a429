"""The learnt row and column embedding of image codes (``model.image_grid_embedding``): which tokens get it, and
that cached decoding, packed documents, prefix reuse and the compiled decode step all see the cells a full
forward pass sees. That the trainer writes the run's layout into the model's config is checked by test_bad_inputs
(its debug run has the embedding on and must pass the resume check) and the pipeline tests, which train with it."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_compiled_step import GraphCounter
from test_sampler import HW, I0, T0, VOCAB

from mmgen.config.schema import ModelConfig
from mmgen.eval.likelihood import grouped_continuation_logprobs
from mmgen.generation.sampler import SamplingParams, sample
from mmgen.interop.hf_chameleon import hf_config_from_model
from mmgen.model import Transformer
from mmgen.model.masks import positions_from_document_ids
from mmgen.model.transformer import with_image_layout

ROWS, COLS = VOCAB.grid
GRID_CFG = with_image_layout(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, image_grid_embedding=True), VOCAB)
IMAGE = [VOCAB.boi, *range(I0, I0 + HW), VOCAB.eoi]


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(GRID_CFG, VOCAB.size)
    m.init_weights()
    with torch.no_grad():  # larger than the default init, so that the embedding visibly moves the logits
        m.image_rows.weight.mul_(20)
        m.image_cols.weight.mul_(20)
    return m.eval()


def _grid(model, tokens: list[int]) -> torch.Tensor:
    x = torch.tensor([tokens])
    return model._grid_embedding(x, torch.arange(len(tokens))[None], None)[0]


def test_each_code_gets_its_cell_and_nothing_else_gets_any(model):
    doc = [VOCAB.bos, T0 + 1, *IMAGE, T0 + 2, *IMAGE[:3]]  # a second image, cut after two codes
    grid = _grid(model, doc)
    codes = [i for i, t in enumerate(doc) if VOCAB.is_image(t)]
    assert [i for i in range(len(doc)) if grid[i].abs().sum() > 0] == codes
    for n, i in enumerate(codes):
        cell = n % HW  # the second image starts again at its first cell
        torch.testing.assert_close(grid[i], model.image_rows.weight[cell // COLS] + model.image_cols.weight[cell % COLS])
    # codes with no BOI before them are not placed (a prompt that starts inside an image)
    assert _grid(model, [VOCAB.bos, I0, I0 + 1]).abs().sum() == 0


def test_it_changes_the_logits_of_codes_only():
    torch.manual_seed(0)
    plain = Transformer(dataclasses.replace(GRID_CFG, image_grid_embedding=False), VOCAB.size)
    torch.manual_seed(0)
    grid = Transformer(GRID_CFG, VOCAB.size)
    grid.load_state_dict({**plain.state_dict(), "image_rows.weight": torch.randn(ROWS, 32),
                          "image_cols.weight": torch.randn(COLS, 32)})  # fmt: skip
    doc = torch.tensor([[VOCAB.bos, T0 + 1, *IMAGE]])
    with torch.no_grad():
        a, b = plain(doc), grid(doc)
    torch.testing.assert_close(a[:, :3], b[:, :3])  # up to the BOI the two models are the same model
    assert not torch.allclose(a[:, 3:], b[:, 3:])
    # lookups, not matrix products: the FLOPs per token MFU is counted with stay the same
    assert grid.num_params() == plain.num_params() + (ROWS + COLS) * 32
    assert grid.flops_per_token(64) == plain.flops_per_token(64)


@pytest.mark.parametrize("read_written_slots_only", [False, True])
def test_cached_decoding_of_right_padded_prompts_matches_full_forward(model, read_written_slots_only):
    prompts = [[VOCAB.bos, T0 + 3, VOCAB.boi, I0 + 4], [VOCAB.bos, *IMAGE, T0 + 1], [VOCAB.bos, T0 + 2, T0 + 5]]
    continuation = torch.tensor([[I0 + 1, I0 + 2, I0 + 3], [VOCAB.boi, I0 + 5, I0 + 6], [VOCAB.boi, I0, I0 + 7]])
    P = max(len(p) for p in prompts)
    padded = torch.tensor([p + [VOCAB.boi] * (P - len(p)) for p in prompts])  # padding that looks like a BOI
    lengths = torch.tensor([len(p) for p in prompts])
    with torch.no_grad():
        model.setup_cache(3, P + 3 + 8 * read_written_slots_only)
        span = (lambda written: written) if read_written_slots_only else (lambda written: None)
        prefill = model(padded, input_pos=torch.arange(P), cache_span=span(P))
        cached = [prefill[torch.arange(3), lengths - 1]]
        for t in range(3):
            cached.append(model(continuation[:, t : t + 1], input_pos=(lengths + t)[:, None],
                                cache_span=span(int(lengths.max()) + t + 1))[:, 0])
        model.clear_cache()
        for b, p in enumerate(prompts):
            alone = model(torch.cat([torch.tensor(p), continuation[b]])[None])[0, len(p) - 1 :]
            torch.testing.assert_close(torch.stack(cached, 1)[b], alone, atol=1e-4, rtol=1e-4)


def test_a_packed_document_does_not_continue_the_image_before_it(model):
    first = [VOCAB.bos, T0 + 1, VOCAB.boi, I0, I0 + 1]  # ends inside its image
    second = [VOCAB.bos, I0 + 2, I0 + 3, T0 + 4, *IMAGE]
    packed = torch.tensor([first + second])
    document_ids = torch.tensor([[0] * len(first) + [1] * len(second)])
    with torch.no_grad():
        together = model(packed, document_ids=document_ids)
        apart = torch.cat([model(torch.tensor([first])), model(torch.tensor([second]))], dim=1)
    torch.testing.assert_close(together, apart, atol=1e-4, rtol=1e-4)
    grid = model._grid_embedding(packed, positions_from_document_ids(document_ids), None)[0]
    assert grid[len(first) : len(first) + 3].abs().sum() == 0


def test_prefix_reuse_scores_codes_whose_boi_is_in_the_prefix(model):
    groups = [([VOCAB.bos, T0 + 1, VOCAB.boi], [[I0 + 1, I0 + 2], [I0 + 3]]),
              ([VOCAB.bos, *IMAGE, T0 + 2], [[T0 + 3], [VOCAB.boi, I0 + 4, I0 + 5]])]  # fmt: skip
    reused = grouped_continuation_logprobs(model, groups, batch_size=2, reuse_prefix=True)
    plain = grouped_continuation_logprobs(model, groups, batch_size=3, reuse_prefix=False)
    for a_group, b_group in zip(reused, plain):
        for a, b in zip(a_group, b_group):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_compiled_decode_step_samples_as_eager(model):
    params = SamplingParams(max_new_tokens=2 * (HW + 2) + 4, max_images=2, seed=3, eos_stops=False, temperature=1.0,
                            cfg_scale=2.0, force_image=True)  # fmt: skip
    prompts = [[VOCAB.bos, T0 + 1], [VOCAB.bos, T0 + 2, VOCAB.boi, I0 + 3]]
    eager = sample(model, VOCAB, prompts, params)
    counter = GraphCounter()
    assert sample(model, VOCAB, prompts, params, compile=counter) == eager
    assert len(counter.graphs) == 1 and any(VOCAB.boi in o for o in eager)


def test_a_layout_is_needed_and_chameleon_cannot_hold_the_embedding():
    with pytest.raises(ValueError, match="image_layout"):
        Transformer(dataclasses.replace(GRID_CFG, image_layout=(-1, 0, 0)), VOCAB.size)
    with pytest.raises(ValueError, match="image_grid_embedding"):
        hf_config_from_model(GRID_CFG, VOCAB)
