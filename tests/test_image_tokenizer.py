"""VQ-VAE geometry, quantizer variants, PatchGAN, checkpoints/resume, TensorBoard and data-parallel training."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from mmgen.config.schema import ImageTokenizerConfig, WorldConfig
from mmgen.data.shapes_world import random_scene, render_scene
from mmgen.tokenizers.image import ImageTokenizer, ssim
from mmgen.tokenizers.image_train import fit
from mmgen.tokenizers.vqvae import VQVAE, stage_widths

QUICK = ImageTokenizerConfig(
    channels=32, res_blocks=1, codebook_size=64, codebook_dim=8, batch_size=8, train_steps=4, lr=3e-3,
    max_train_seconds=0, precision="float32", checkpoint_every=0,
)  # fmt: skip


def shapes(n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([np.asarray(render_scene(random_scene(rng, WorldConfig()), 32)) for _ in range(n)]))


def quiet(_: str) -> None:
    pass


def test_geometry_follows_vqgan_and_rejects_mismatches():
    chameleon = ImageTokenizerConfig(image_size=512, downsample=16, channels=512, channel_multipliers=(1, 1, 2, 2, 4))
    assert stage_widths(chameleon) == (128, [128, 128, 256, 256, 512])
    assert stage_widths(ImageTokenizerConfig(channels=128, downsample=4)) == (32, [32, 64, 128])
    with pytest.raises(ValueError, match="downsample"):
        stage_widths(dataclasses.replace(chameleon, downsample=8))
    with pytest.raises(ValueError, match="power of 2"):
        stage_widths(ImageTokenizerConfig(downsample=3))
    with pytest.raises(ValueError, match="codebook_size"):
        VQVAE(dataclasses.replace(QUICK, quantizer="fsq", fsq_levels=(4, 4)))
    model = VQVAE(dataclasses.replace(QUICK, attention_at_lowest=True, attention_resolutions=(16,)))
    names = set(model.state_dict())
    assert "encoder.mid.attn_1.q.weight" in names and "encoder.down.1.attn.0.proj_out.weight" in names
    assert "decoder.up.1.attn.1.q.weight" in names and "encoder.down.2.attn.0.q.weight" not in names
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    recon, codes, _ = model(x)
    assert recon.shape == x.shape and codes.shape == (2, 8, 8)


def test_ssim_is_one_for_identical_images_and_drops_with_noise():
    a = shapes(4, 0).permute(0, 3, 1, 2)
    assert ssim(a, a) == pytest.approx(1.0)
    noisy = (a.float() + torch.randn(a.shape, generator=torch.Generator().manual_seed(0)) * 40).clamp(0, 255)
    assert 0 < ssim(noisy.to(torch.uint8), a) < 0.9


def nan_batch_at_step(monkeypatch, poisoned_step: int) -> None:
    """The training batch of one step (1-based) holds a NaN pixel, as a corrupt input or an overflow would."""
    from mmgen.tokenizers import image_train

    original, calls = image_train._Batches.next, []

    def next_batch(self, progress, device):
        x = original(self, progress, device)
        calls.append(1)
        if len(calls) == poisoned_step:
            x = x.clone()
            x[0, 0, 0, 0] = float("nan")
        return x

    monkeypatch.setattr(image_train._Batches, "next", next_batch)


def test_a_non_finite_step_stops_training_or_is_skipped_with_its_codebook_update_undone(tmp_path, monkeypatch):
    from mmgen.nonfinite import NonFiniteError

    nan_batch_at_step(monkeypatch, 3)
    with pytest.raises(NonFiniteError, match="image tokenizer training step 3"):
        fit(shapes(32, 1), shapes(8, 2), QUICK, str(tmp_path / "stop"), log=quiet, device="cpu")
    assert not (tmp_path / "stop" / "model.safetensors").exists()  # nothing poisoned was saved

    nan_batch_at_step(monkeypatch, 3)
    model, metrics = fit(shapes(32, 1), shapes(8, 2), dataclasses.replace(QUICK, nonfinite="skip"),
                         str(tmp_path / "skip"), log=quiet, device="cpu")  # fmt: skip
    assert all(t.isfinite().all() for t in [*model.parameters(), *model.buffers()] if t.is_floating_point())
    assert np.isfinite(metrics["psnr"])


def test_a_patch_encoder_codes_each_patch_from_its_own_pixels_alone():
    torch.manual_seed(0)
    fsq = dataclasses.replace(QUICK, encoder="patch", quantizer="fsq", fsq_levels=(4, 4, 4))
    patch, vqgan = VQVAE(fsq), VQVAE(dataclasses.replace(fsq, encoder="vqgan"))
    flat = torch.full((1, 3, 32, 32), 0.8)
    assert patch.encode(flat).unique().numel() == 1
    assert vqgan.encode(flat).unique().numel() > 1  # zero padding at the border reaches the codes there
    edited = flat.clone()
    edited[:, :, 12:16, 20:24] = -0.5  # exactly the patch of code (3, 5)
    changed = (patch.encoder(edited) - patch.encoder(flat)).abs().sum(1)[0] > 0
    assert changed.nonzero().tolist() == [[3, 5]]
    assert ((vqgan.encoder(edited) - vqgan.encoder(flat)).abs().sum(1)[0] > 0).sum() > 1


@pytest.mark.parametrize(
    "overrides",
    [dict(quantizer="fsq", fsq_levels=(4, 4, 4)), dict(cosine_lookup=True), dict(adversarial_weight=0.1, gan_start_step=1),
     dict(encoder="patch")],
    ids=["fsq", "cosine", "patchgan", "patch-encoder"],
)
def test_quantizer_and_loss_variants_train_and_round_trip(tmp_path, overrides):
    cfg = dataclasses.replace(QUICK, **overrides)
    _, metrics = fit(shapes(32, 1), shapes(8, 2), cfg, str(tmp_path), log=quiet, device="cpu")
    assert {"psnr", "ssim", "codebook_usage", "code_perplexity"} <= set(metrics)
    tok = ImageTokenizer.load(str(tmp_path))
    codes = tok.encode(shapes(3, 3))
    assert codes.shape == (3, 8, 8) and 0 <= int(codes.min()) and int(codes.max()) < 64
    images = tok.decode(codes)
    assert images.dtype == torch.uint8 and images.shape == (3, 32, 32, 3)


class _Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_and_ends_where_an_uninterrupted_run_ends(tmp_path):
    cfg = dataclasses.replace(QUICK, train_steps=6, checkpoint_every=3)
    train, heldout = shapes(40, 1), shapes(8, 2)
    full = str(tmp_path / "full")
    torch.manual_seed(0)
    _, want = fit(train, heldout, cfg, full, log=quiet, device="cpu", log_every=2)
    assert any(name.startswith("events") for name in os.listdir(f"{full}/tensorboard"))
    assert not os.path.exists(f"{full}/checkpoint")  # a finished run leaves nothing to resume

    def crash_at_step_4(message: str) -> None:
        if "step 4:" in message:
            raise _Interrupted

    resumed = str(tmp_path / "resumed")
    with pytest.raises(_Interrupted):
        fit(train, heldout, cfg, resumed, log=crash_at_step_4, device="cpu", log_every=2)
    assert os.path.exists(f"{resumed}/checkpoint/progress.json")  # written at step 3
    messages: list[str] = []
    torch.manual_seed(123)  # the checkpoint's RNG state, not this one, drives the rest of the run
    _, got = fit(train, heldout, cfg, resumed, log=messages.append, device="cpu", log_every=2)
    assert any("resuming at step 3" in m for m in messages)
    assert got["train_steps"] == 6 and got["psnr"] == pytest.approx(want["psnr"], abs=1e-4)
    a, b = load_file(f"{full}/model.safetensors"), load_file(f"{resumed}/model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)

    # a checkpoint made with another config is left alone and training starts afresh
    with pytest.raises(_Interrupted):
        fit(train, heldout, cfg, resumed, log=crash_at_step_4, device="cpu", log_every=2)
    messages.clear()
    other = dataclasses.replace(cfg, channels=64)
    fit(train, heldout, other, resumed, log=messages.append, device="cpu", log_every=2)
    assert any("ignoring the checkpoint" in m for m in messages)
    assert not any("resuming" in m for m in messages)


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # a high dead-code threshold makes restarts happen, which sample new codes on each rank
        cfg = dataclasses.replace(QUICK, train_steps=5, dead_code_threshold=4.0)
        model, _ = fit(shapes(64, 1), shapes(8, 2), cfg, f"{out}/run", log=quiet, device="cpu")
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, f"{out}/rank{rank}.safetensors")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_data_parallel_training_keeps_one_codebook(tmp_path, free_port):
    """Two gloo ranks: k-means init, EMA updates, dead-code restarts and weights stay identical across ranks."""
    mp.start_processes(_ddp_worker, args=(2, free_port, str(tmp_path)), nprocs=2, start_method="spawn")
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert rank0["quantizer._codebook.initted"].item()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=1e-5, atol=1e-6, msg=key)
    tok = ImageTokenizer.load(str(tmp_path / "run"))
    assert tok.encode(shapes(2, 5)).shape == (2, 8, 8)
