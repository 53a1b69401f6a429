import torch

import mmgen.train  # noqa: F401  (CPU compat before torchtitan)
from mmgen.train.components import ModalityLoss


def make_loss(z=0.0):
    return ModalityLoss.Config(image_start=10, image_stop=20, z_loss_weight=z).build()


def test_modality_loss_splits_text_and_image_and_matches_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 20)
    labels = torch.tensor([[1, 2, 12, 13, -100], [3, 15, -100, -100, 4]])
    loss_fn = make_loss()
    loss, _ = loss_fn(logits, labels, torch.tensor(7.0))
    reference = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    assert torch.allclose(loss, reference, atol=1e-6)
    text_sum, text_n, image_sum, image_n = loss_fn.pop_sums().tolist()
    assert (text_n, image_n) == (4, 3)
    assert abs((text_sum + image_sum) / 7 - reference.item()) < 1e-5
    assert loss_fn.pop_sums() is None


def test_weights_scale_tokens_and_logging_keeps_main_documents():
    torch.manual_seed(0)
    logits = torch.randn(1, 4, 20)
    labels = torch.tensor([[1, 12, 2, 13]])
    loss_fn = make_loss()
    full, _ = loss_fn(logits, labels)
    loss_fn.pop_sums()
    loss_fn.weights = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    half, _ = loss_fn(logits, labels)
    per_token = torch.nn.functional.cross_entropy(logits[0], labels[0], reduction="none")
    assert torch.allclose(half, per_token[2:].sum()) and torch.allclose(full, per_token.sum())
    _, text_n, _, image_n = loss_fn.pop_sums().tolist()
    assert (text_n, image_n) == (1, 1)
    assert loss_fn.weights is None  # weights apply to one batch only


def test_z_loss_adds_logsumexp_squared():
    logits = torch.randn(1, 3, 20)
    labels = torch.tensor([[1, 2, 3]])
    plain, _ = make_loss()(logits, labels)
    with_z, _ = make_loss(z=1e-2)(logits, labels)
    assert torch.allclose(with_z - plain, 1e-2 * torch.logsumexp(logits[0], -1).square().sum(), atol=1e-5)
