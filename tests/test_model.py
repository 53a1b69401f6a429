"""Behaviour of the decoder: masking, positions, init, losses and the KV cache."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mmgen.config.schema import ModelConfig
from mmgen.model import Transformer, lm_loss, per_token_loss
from mmgen.model.masks import positions_from_document_ids
from mmgen.model.transformer import ffn_hidden_dim

VOCAB = 61


def tiny_cfg(**overrides) -> ModelConfig:
    cfg = ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64)
    return dataclasses.replace(cfg, **overrides)


def make_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(tiny_cfg(**overrides), VOCAB)
    model.init_weights()
    # Larger weights than the default init make logits depend visibly on context.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(10)
    return model.eval()


def rand_tokens(*shape, seed=1):
    return torch.randint(0, VOCAB, shape, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_ffn_width():
    model = make_model()
    assert model(rand_tokens(3, 9)).shape == (3, 9, VOCAB)
    assert isinstance(model.layers, torch.nn.ModuleDict) and list(model.layers) == ["0", "1"]
    assert ffn_hidden_dim(ModelConfig(dim=256)) == 704
    assert ffn_hidden_dim(ModelConfig(dim=64)) == 192
    assert ffn_hidden_dim(ModelConfig(dim=64, ffn_hidden_dim=100)) == 100
    assert not any(n.endswith("bias") for n, _ in model.named_parameters() if "norm" not in n)


@pytest.mark.parametrize("placement", ["pre", "swin"])
@pytest.mark.parametrize("n_kv_heads", [0, 2, 1])
def test_packed_documents_match_separate_runs(placement, n_kv_heads):
    model = make_model(norm_placement=placement, n_kv_heads=n_kv_heads)
    a, b, c = rand_tokens(1, 5, seed=2), rand_tokens(1, 7, seed=3), rand_tokens(1, 4, seed=4)
    packed = torch.cat([a, b, c], dim=1)
    doc_ids = torch.tensor([[0] * 5 + [1] * 7 + [2] * 4])
    with torch.no_grad():
        got = model(packed, document_ids=doc_ids)
        want = torch.cat([model(a), model(b), model(c)], dim=1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    # Without document ids the later documents see the earlier ones.
    with torch.no_grad():
        assert not torch.allclose(model(packed)[:, 5:], want[:, 5:], atol=1e-3)


def test_future_tokens_do_not_change_past_logits():
    model = make_model()
    x = rand_tokens(2, 12)
    y = x.clone()
    y[:, 7:] = rand_tokens(2, 5, seed=9)
    with torch.no_grad():
        lx, ly = model(x), model(y)
    torch.testing.assert_close(lx[:, :7], ly[:, :7])
    assert not torch.allclose(lx[:, 7:], ly[:, 7:], atol=1e-3)


def test_positions_restart_per_document():
    doc_ids = torch.tensor([[3, 3, 3, 5, 5, 9], [0, 0, 0, 0, 1, 1]])
    assert positions_from_document_ids(doc_ids).tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    model = make_model()
    x = rand_tokens(2, 6)
    with torch.no_grad():
        derived = model(x, document_ids=doc_ids)
        explicit = model(x, document_ids=doc_ids, positions=positions_from_document_ids(doc_ids))
        # RoPE is relative: shifting every position by a constant changes nothing.
        shifted = model(x, positions=torch.arange(6).expand(2, 6) + 11)
        plain = model(x)
    torch.testing.assert_close(derived, explicit)
    torch.testing.assert_close(shifted, plain, atol=1e-4, rtol=1e-4)


def test_norm_placements_differ_and_train():
    x = rand_tokens(2, 10)
    outs = {}
    for placement in ("pre", "swin"):
        model = make_model(norm_placement=placement).train()
        logits = model(x)
        lm_loss(logits[:, :-1], x[:, 1:]).backward()
        assert all(p.grad is not None for p in model.parameters())
        outs[placement] = logits.detach()
    assert not torch.allclose(outs["pre"], outs["swin"])


def test_qk_norm_off_and_tied_head():
    model = make_model(qk_norm=False, tie_embeddings=True)
    assert model.output.weight is model.tok_embeddings.weight
    assert not any("q_norm" in n for n, _ in model.named_parameters())
    assert model(rand_tokens(1, 4)).shape == (1, 4, VOCAB)


def test_dropout_only_in_training():
    model = make_model(dropout=0.5)
    x = rand_tokens(1, 8)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        assert not torch.allclose(model(x), model(x))


def test_lm_loss_matches_cross_entropy_and_z_loss_adds():
    logits = torch.randn(2, 5, VOCAB)
    targets = torch.randint(0, VOCAB, (2, 5))
    targets[0, :2] = -100
    ce = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(lm_loss(logits, targets), ce)
    keep = targets != -100
    z = torch.logsumexp(logits, -1)[keep].square().mean()
    torch.testing.assert_close(lm_loss(logits, targets, z_loss_weight=0.1), ce + 0.1 * z)
    per = per_token_loss(logits, targets)
    assert per.shape == (2, 5) and per.dtype == torch.float32
    assert (per[0, :2] == 0).all()
    torch.testing.assert_close(per[keep].mean(), ce)
    # bf16 logits give an fp32 loss; all-ignored targets give 0, not NaN.
    assert lm_loss(logits.bfloat16(), targets).dtype == torch.float32
    assert lm_loss(logits, torch.full_like(targets, -100)).item() == 0.0


def test_bf16_forward_backward():
    model = make_model().to(torch.bfloat16).train()
    x = rand_tokens(2, 16)
    doc_ids = torch.tensor([[0] * 6 + [1] * 10, [0] * 16])
    logits = model(x, document_ids=doc_ids)
    assert logits.dtype == torch.bfloat16
    loss = lm_loss(logits[:, :-1], x[:, 1:], z_loss_weight=1e-4)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_init_weights_after_meta_is_deterministic():
    cfg = tiny_cfg(tie_embeddings=True)
    states = []
    for _ in range(2):
        with torch.device("meta"):
            model = Transformer(cfg, VOCAB)
        model.to_empty(device="cpu")
        torch.manual_seed(123)
        model.init_weights(buffer_device=torch.device("cpu"))
        assert model.output.weight is model.tok_embeddings.weight
        states.append(model.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(value, states[1][name], rtol=0, atol=0)
    # seed= gives the same weights as seeding the global RNG, and leaves the global RNG alone.
    before = torch.random.get_rng_state()
    model.init_weights(seed=123)
    assert torch.equal(before, torch.random.get_rng_state())
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, states[0][name], rtol=0, atol=0)
    std = cfg.init_std
    assert abs(model.layers["0"].attention.wq.weight.std().item() - std) < 0.3 * std
    assert abs(model.layers["0"].attention.wo.weight.std().item() - std / 2) < 0.3 * std


def test_kv_cache_token_by_token_matches_full_forward():
    model = make_model()
    x = rand_tokens(2, 12)
    with torch.no_grad():
        full = model(x)
        model.setup_cache(2, 16)
        steps = [model(x[:, :4], input_pos=torch.arange(4))]
        for t in range(4, 12):
            steps.append(model(x[:, t : t + 1], input_pos=torch.tensor([t])))
        model.clear_cache()
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-4, rtol=1e-4)


def test_batched_prompts_of_different_lengths_match_single_runs():
    model = make_model()
    prompts = [rand_tokens(7, seed=5), rand_tokens(3, seed=6), rand_tokens(5, seed=7)]
    continuation = rand_tokens(3, 4, seed=8)
    lengths = torch.tensor([len(p) for p in prompts])
    padded = torch.zeros(3, 7, dtype=torch.long)
    for b, p in enumerate(prompts):
        padded[b, : len(p)] = p
    with torch.no_grad():
        model.setup_cache(3, 12)
        prefill = model(padded, input_pos=torch.arange(7))
        batched = [prefill[torch.arange(3), lengths - 1]]
        for t in range(4):
            step = model(continuation[:, t : t + 1], input_pos=(lengths + t)[:, None])
            batched.append(step[:, 0])
        batched = torch.stack(batched, dim=1)
        model.clear_cache()
        for b, p in enumerate(prompts):
            alone = model(torch.cat([p, continuation[b]])[None])[0, len(p) - 1 :]
            torch.testing.assert_close(batched[b], alone, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backend is GPU-only")
def test_flex_matches_sdpa_on_gpu():
    sdpa = make_model().cuda()
    flex = make_model(attention_backend="flex").cuda()
    flex.load_state_dict(sdpa.state_dict())
    x = rand_tokens(2, 256).cuda()
    doc_ids = (torch.arange(256) // 100).expand(2, 256).cuda()
    with torch.no_grad():
        for ids in (None, doc_ids):
            torch.testing.assert_close(flex(x, document_ids=ids), sdpa(x, document_ids=ids), atol=2e-3, rtol=2e-3)
