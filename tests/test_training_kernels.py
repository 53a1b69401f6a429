"""The CPU training kernels: attention per packed document, blocked causal attention, and the head fused
with the cross-entropy.

Each replaces a slower path in pretraining's step (SDPA's CPU flash kernel; the
head matmul followed by a loss over materialised logits) and must compute the
same function: checked against float64 references and against the paths they
replace, gradients included.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

import mmgen.model.attention as attention_module
import mmgen.model.loss as loss_module
import mmgen.train  # noqa: F401  (CPU compat layer before torchtitan loads)
from mmgen.config.schema import ModelConfig
from mmgen.model import Transformer
from mmgen.model.attention import blocked_causal_attention
from mmgen.model.loss import head_nll_and_logsumexp, nll_and_logsumexp
from mmgen.model.masks import PackedDocuments, document_causal_mask
from mmgen.model.transformer import HiddenStates
from mmgen.train.components import MODALITY_SUMS, ModalityLoss
from mmgen.train.model_spec import TitanTransformer

VOCAB = 61


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b).norm() / b.norm()).item()


def _attention_errors(q, k, v, grad, allowed, kernel):
    """Relative errors of out, dq, dk, dv against a float64 run of the same bf16 inputs."""
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]
    kernel(*leaves, allowed).backward(grad)
    got = [kernel(*[t.detach() for t in leaves], allowed).detach()] + [t.grad for t in leaves]
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    _sdpa(*exact, allowed).backward(grad.double())
    want = [_sdpa(*[t.detach() for t in exact], allowed)] + [t.grad for t in exact]
    return [_rel(a, b) for a, b in zip(got, want)]


def _blocked(q, k, v, allowed):
    # the kernel takes the projections' [B, T, H, D] layout; these tests speak SDPA's [B, H, T, D]
    return blocked_causal_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), allowed).transpose(1, 2)


def _sdpa(q, k, v, allowed):
    gqa = k.shape[1] != q.shape[1]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, is_causal=allowed is None, enable_gqa=gqa)


@pytest.mark.parametrize(
    "B, H, Hkv, T, D, packed, logit_scale",
    [
        (2, 4, 4, 300, 64, False, 1.0),  # T not a multiple of the block
        (2, 4, 2, 256, 32, True, 3.0),  # grouped-query attention, packed documents, large logits
        (3, 2, 1, 130, 16, True, 1.0),
        (2, 4, 4, 512, 64, False, 4.0),  # logits up to ~60: where bf16-rounded scores would fail
    ],
)
def test_blocked_attention_is_as_accurate_as_sdpa(B, H, Hkv, T, D, packed, logit_scale):
    torch.manual_seed(0)
    q = (torch.randn(B, H, T, D) * logit_scale).bfloat16()
    k = (torch.randn(B, Hkv, T, D) * logit_scale).bfloat16()
    v = torch.randn(B, Hkv, T, D).bfloat16()
    grad = torch.randn(B, H, T, D).bfloat16()
    allowed = document_causal_mask(torch.cumsum(torch.rand(B, T) < 0.02, dim=1)) if packed else None
    ours = _attention_errors(q, k, v, grad, allowed, _blocked)
    sdpa = _attention_errors(q, k, v, grad, allowed, _sdpa)
    # out, dq, dk, dv: bf16-level errors (bf16 epsilon 3.9e-3), within 1.6x of SDPA's CPU flash kernel's own
    for name, a, b in zip(("out", "dq", "dk", "dv"), ours, sdpa):
        assert a < 1e-2 and a < 1.6 * b + 1e-3, (name, a, b)


def test_blocked_attention_rejects_a_non_causal_mask():
    q = torch.randn(1, 8, 2, 4).bfloat16()  # [B, T, H, D]
    allowed = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="later key"):
        blocked_causal_attention(q, q, q, allowed)


def _tiny_model(seed=0, **overrides) -> Transformer:
    cfg = dataclasses.replace(ModelConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=256), **overrides)
    torch.manual_seed(seed)
    model = Transformer(cfg, VOCAB)
    model.init_weights()
    return model.train()


def _grads(model, tokens, **kwargs):
    model.zero_grad(set_to_none=True)
    logits = model(tokens, **kwargs)
    F.cross_entropy(logits[:, :-1].float().flatten(0, 1), tokens[:, 1:].flatten()).backward()
    return {n: p.grad.float().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("packed", [False, True])
def test_bf16_cpu_training_uses_the_blocked_kernel_and_matches_sdpa(packed, monkeypatch):
    calls = []
    real = attention_module.blocked_causal_attention
    monkeypatch.setattr(attention_module, "blocked_causal_attention", lambda *a: calls.append(1) or real(*a))
    model = _tiny_model().bfloat16()
    tokens = torch.randint(0, VOCAB, (2, 200), generator=torch.Generator().manual_seed(1))
    kwargs = {"document_ids": torch.tensor([[0] * 70 + [1] * 130, [0] * 150 + [1] * 50])} if packed else {}
    blocked = _grads(model, tokens, **kwargs)
    per_layer = 3 if packed else 1  # packed: one call per bucket of equal padded length (96, 160, 64)
    assert len(calls) == 2 * per_layer  # both layers
    with torch.no_grad():
        model(tokens, **kwargs)  # inference keeps SDPA
    assert len(calls) == 2 * per_layer
    monkeypatch.setattr(attention_module, "BLOCKED_MAX_SEQ_LEN", 0)  # longer sequences keep SDPA
    sdpa = _grads(model, tokens, **kwargs)
    assert len(calls) == 2 * per_layer
    # Both are bf16 approximations of the same gradients; how close SDPA's bf16 path comes depends on the
    # CPU (AVX512-BF16 or emulated on AVX2), so each is judged against float64, not against the other.
    exact = _grads(model.double(), tokens, **kwargs)
    for name in sdpa:
        assert _rel(blocked[name], exact[name]) < max(2 * _rel(sdpa[name], exact[name]), 1e-2), name


def test_one_document_per_row_is_plain_causal_attention():
    model = _tiny_model().eval()
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(2))
    assert model._training_mask(torch.zeros(2, 40, dtype=torch.long), 2, 40, tokens.device) is None
    two_docs = torch.tensor([[0] * 40, [0] * 10 + [1] * 30])
    assert model._training_mask(two_docs, 2, 40, tokens.device) is not None
    with torch.no_grad():
        torch.testing.assert_close(model(tokens, document_ids=torch.zeros(2, 40, dtype=torch.long)), model(tokens))


def _packed_ids(lengths_per_row):
    return torch.tensor([sum(([d] * n for d, n in enumerate(row)), []) for row in lengths_per_row])


def test_packed_documents_place_every_token_once():
    # lengths at, below and above the 32-token granule, a one-token document, a row that is one document
    ids = _packed_ids([[1, 31, 32, 33, 63], [160]])
    docs = PackedDocuments(ids)
    assert sorted(length for length, _ in docs.buckets) == [32, 64, 160]
    gathered = torch.cat([index for _, index in docs.buckets])
    # each token's slot in the buckets holds that token, and no two tokens share a slot
    torch.testing.assert_close(gathered[docs.inverse], torch.arange(ids.numel()))
    assert docs.inverse.unique().numel() == ids.numel()
    torch.testing.assert_close(docs.dense(), document_causal_mask(ids))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_attention_per_document_equals_the_document_mask(dtype, monkeypatch):
    model = _tiny_model().to(dtype)
    tokens = torch.randint(0, VOCAB, (2, 160), generator=torch.Generator().manual_seed(6))
    ids = _packed_ids([[1, 31, 32, 33, 63], [100, 60]])
    per_document = _grads(model, tokens, document_ids=ids)
    calls = []
    monkeypatch.setattr(attention_module, "per_document_attention", lambda *a: calls.append(1))
    monkeypatch.setattr(model, "_training_mask", lambda d, *a: document_causal_mask(d))
    masked = _grads(model, tokens, document_ids=ids)
    assert not calls  # the reference really took the dense mask
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for name in masked:
        assert _rel(per_document[name], masked[name].double()) < tol, name


@pytest.mark.parametrize("how", ["whole model", "blocks in place"])
def test_compiled_models_attend_within_documents_through_the_dense_mask(how):
    # buckets of packed documents change with every batch; a compiled graph (fullgraph: no breaks) takes the mask
    tokens = torch.randint(0, VOCAB, (2, 160), generator=torch.Generator().manual_seed(7))
    ids = _packed_ids([[1, 31, 32, 33, 63], [100, 60]])
    eager = _grads(_tiny_model(), tokens, document_ids=ids)
    model = _tiny_model()
    if how == "whole model":
        model = torch.compile(model, backend="aot_eager", fullgraph=True)
    else:
        for block in model.layers.values():
            block.compile(backend="aot_eager", fullgraph=True)
    traced = {n.replace("_orig_mod.", ""): g for n, g in _grads(model, tokens, document_ids=ids).items()}
    for name in eager:
        assert _rel(traced[name], eager[name]) < 1e-5, name


def test_per_block_compile_traces_the_blocked_kernel(monkeypatch):
    chosen = []
    real = attention_module._use_blocked
    monkeypatch.setattr(attention_module, "_use_blocked", lambda *a: chosen.append(real(*a)) or chosen[-1])
    model = _tiny_model().bfloat16()
    compiled = _tiny_model().bfloat16()
    for name, block in list(compiled.layers.named_children()):
        compiled.layers.register_module(name, torch.compile(block, backend="aot_eager", fullgraph=True))
    tokens = torch.randint(0, VOCAB, (2, 160), generator=torch.Generator().manual_seed(3))
    eager = _grads(model, tokens)
    traced = {n.replace("_orig_mod.", ""): g for n, g in _grads(compiled, tokens).items()}
    assert traced.keys() == eager.keys()
    assert chosen == [True] * 4  # two eager layers, then two traced ones
    for name in eager:
        assert _rel(traced[name], eager[name]) < 1e-2, name


# ----- the output head fused with the cross-entropy -----


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_head_loss_matches_head_then_loss(dtype, monkeypatch):
    monkeypatch.setattr(loss_module, "_row_block", lambda logits: 7)  # several row blocks, the last one short
    torch.manual_seed(0)
    hidden = torch.randn(3, 10, 16).to(dtype)
    weight = (torch.randn(VOCAB, 16) * 0.7).to(dtype)
    targets = torch.randint(0, VOCAB, (3, 10))
    coef = torch.rand(3, 10)
    coef[0, :4] = 0  # ignored targets contribute no gradient through the nll

    def run(fused: bool):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        nll, lse = head_nll_and_logsumexp(h, w, targets) if fused else nll_and_logsumexp(F.linear(h, w), targets)
        ((coef * nll).sum() + 0.01 * lse.square().sum()).backward()
        return nll.detach(), lse.detach(), h.grad, w.grad

    fused, plain = run(True), run(False)
    assert fused[2].dtype == fused[3].dtype == dtype
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    for name, a, b in zip(("nll", "lse", "grad hidden", "grad weight"), fused, plain):
        torch.testing.assert_close(a.float(), b.float(), **tol, msg=name)


def test_fused_head_loss_target_gradient_survives_a_confident_prediction():
    # p(target) ≈ 1: the gradient at the target, (p − 1)·g, must not vanish in bf16 rounding of p
    hidden = torch.zeros(1, 4, dtype=torch.bfloat16)
    hidden[0, 0] = 1
    weight = torch.zeros(5, 4, dtype=torch.bfloat16)
    weight[2, 0] = 12.0  # logit 12 at the target, 0 elsewhere: 1 − p ≈ 2.5e-5
    w = weight.clone().requires_grad_()
    nll, _ = head_nll_and_logsumexp(hidden, w, torch.tensor([2]))
    nll.sum().backward()
    exact = -4 * torch.exp(torch.tensor(-12.0)) / (1 + 4 * torch.exp(torch.tensor(-12.0)))
    torch.testing.assert_close(w.grad[2, 0].float(), exact, rtol=1e-2, atol=0)


def test_fused_head_loss_skips_a_frozen_head_and_refuses_a_second_backward():
    hidden = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(VOCAB, 8)  # frozen (e.g. under LoRA)
    nll, lse = head_nll_and_logsumexp(hidden, weight, torch.randint(0, VOCAB, (4,)))
    loss = nll.sum() + lse.sum()
    loss.backward(retain_graph=True)
    assert hidden.grad is not None and weight.grad is None
    with pytest.raises(RuntimeError, match="twice"):
        loss.backward()


@pytest.mark.parametrize("tie", [False, True])
def test_modality_loss_on_hidden_states_equals_loss_on_logits(tie):
    model = _tiny_model(tie_embeddings=tie)
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(4))
    labels = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
    labels[0, :3] = -100
    weights = torch.ones(2, 12)
    weights[1, :5] = 0.25  # a retrieved prefix
    results = []
    for hidden in (True, False):
        model.zero_grad(set_to_none=True)
        loss_fn = ModalityLoss.Config(image_start=40, image_stop=VOCAB, z_loss_weight=1e-2).build()
        pred = model(tokens, return_hidden=hidden)
        assert isinstance(pred, HiddenStates) == hidden
        loss, metrics = loss_fn(pred, labels, torch.tensor(21.0), loss_weights=weights)
        loss.backward()
        results.append((loss.detach(), metrics[MODALITY_SUMS], {n: p.grad.clone() for n, p in model.named_parameters()}))
    (loss_h, sums_h, grads_h), (loss_l, sums_l, grads_l) = results
    torch.testing.assert_close(loss_h, loss_l)
    torch.testing.assert_close(sums_h, sums_l)
    assert grads_h.keys() == grads_l.keys() and ("output.weight" in grads_h) != tie
    for name in grads_l:
        torch.testing.assert_close(grads_h[name], grads_l[name], atol=1e-6, rtol=1e-5, msg=name)


def test_pretraining_model_hands_hidden_states_to_the_loss():
    cfg = TitanTransformer.Config(model=ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=16), vocab_size=VOCAB)
    model = TitanTransformer(cfg)
    model.init_weights()
    tokens = torch.randint(0, VOCAB, (1, 8))
    pred = model(tokens)
    assert isinstance(pred, HiddenStates) and pred.head_weight is model.output.weight
    torch.testing.assert_close(F.linear(pred.hidden, pred.head_weight), Transformer.forward(model, tokens))
