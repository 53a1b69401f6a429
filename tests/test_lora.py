import torch

from mmgen.config.schema import ModelConfig
from mmgen.model.lora import LoRALinear, add_lora, lora_state_dict, merge_lora, trainable_share
from mmgen.model.transformer import Transformer


def tiny():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(dim=64, n_layers=2, n_heads=4, max_seq_len=64), 100)
    model.init_weights(seed=0)
    return model


def test_lora_starts_as_the_base_model_and_trains_few_parameters():
    model = tiny()
    tokens = torch.randint(0, 100, (2, 16))
    before = model(tokens)
    add_lora(model, rank=4, alpha=8)
    assert torch.allclose(model(tokens), before, atol=1e-6)
    assert 0 < trainable_share(model) <= 0.2
    assert all(k.endswith(("lora_a", "lora_b")) for k in lora_state_dict(model))


def test_merge_folds_adapters_exactly_and_restores_plain_keys():
    model = tiny()
    plain_keys = set(model.state_dict())
    add_lora(model, rank=4, alpha=8)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.02)
    tokens = torch.randint(0, 100, (2, 16))
    adapted = model(tokens)
    merge_lora(model)
    assert set(model.state_dict()) == plain_keys
    assert torch.allclose(model(tokens), adapted, atol=1e-5)


def test_only_adapters_receive_gradients():
    model = add_lora(tiny(), rank=2, alpha=2)
    model(torch.randint(0, 100, (1, 8))).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == name.endswith(("lora_a", "lora_b")), name


def test_cached_forward_keeps_trained_adapters():
    # setup_cache fuses plain projections into one matmul; adapted ones must stay separate, adapters included
    model = tiny()
    add_lora(model, rank=4, alpha=8)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_b.normal_()
    tokens = torch.randint(0, 100, (2, 12))
    with torch.no_grad():
        full = model(tokens)
        model.setup_cache(2, 12)
        cached = model(tokens, input_pos=torch.arange(12))
        model.clear_cache()
    torch.testing.assert_close(cached, full, atol=1e-4, rtol=1e-4)
