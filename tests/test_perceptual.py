import pytest
import torch
from safetensors.torch import save_file

from mmgen.tokenizers.perceptual import _VGG16, PerceptualLoss


@pytest.fixture(scope="module")
def vgg_weights(tmp_path_factory):
    torch.manual_seed(0)
    state, channels, index = {}, 3, 0
    for width in _VGG16:
        if width != "M":
            state[f"features.{index}.weight"] = torch.randn(width, channels, 3, 3) * (2 / (9 * channels)) ** 0.5
            state[f"features.{index}.bias"] = torch.zeros(width)
            channels = width
            index += 2
        else:
            index += 1
    path = tmp_path_factory.mktemp("vgg") / "vgg16.safetensors"
    save_file(state, str(path))
    return str(path)


def test_distance_is_zero_for_identical_images_and_grows_with_change(vgg_weights):
    loss = PerceptualLoss(vgg_weights)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    small = loss(x + 0.05 * torch.randn_like(x), x).item()
    large = loss(x + 0.5 * torch.randn_like(x), x).item()
    assert 0 < small < large


def test_gradients_reach_the_reconstruction_not_the_network(vgg_weights):
    loss = PerceptualLoss(vgg_weights)
    recon = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_()
    loss(recon, torch.zeros(1, 3, 32, 32)).backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.parameters())


def test_missing_weights_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        PerceptualLoss(str(tmp_path / "vgg16.safetensors"))
