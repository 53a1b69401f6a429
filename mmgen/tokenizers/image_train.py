"""Training loop of the image tokenizer: losses, budget, checkpoints, TensorBoard, data parallelism.

Notable choices:
- Training runs ``train_steps`` steps, so the tokenizer (and every image figure
  downstream) does not depend on how busy the machine was. An optional
  ``max_train_seconds`` cap stops it earlier; the learning-rate schedule (linear
  warm-up, cosine decay to 10%) follows whichever budget is binding, so a run
  cut short by the clock still ends with a low learning rate.
- Loss: ``l2_weight·MSE + l1_weight·L1 + commitment``, plus a PatchGAN hinge
  loss from ``gan_start_step`` when ``adversarial_weight > 0``, and an LPIPS-style
  perceptual loss when ``perceptual_weight > 0`` and VGG16 weights exist locally
  (``perceptual_weights``; nothing is downloaded).
- Resumable: every ``checkpoint_every`` steps the model, discriminator, optimizer
  moments, RNG states and elapsed time go to ``out_dir/checkpoint`` as
  safetensors + JSON (written under a temporary name, then renamed); a rerun of
  an interrupted run with the same config continues from there, the time budget
  included. A finished run deletes its checkpoint, so a rerun trains afresh.
- Under ``torchrun`` (an initialised process group) each rank trains on its own
  slice of every batch (``batch_size`` is per rank) in DistributedDataParallel.
  vector-quantize-pytorch syncs the codebook itself (k-means init, EMA statistics
  and dead-code replacements are all-reduced across ranks) because the model is
  built after the process group exists; rank 0 decides when the clock runs out,
  evaluates and writes every file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import posixpath
import time
from typing import Callable

import fsspec
import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from mmgen.config.schema import ImageTokenizerConfig
from mmgen.device import compute_dtype, default_device
from mmgen.files import write_atomic
from mmgen.nonfinite import NonFiniteGuard, all_finite, gradients
from mmgen.progress import print_above, progress_bar
from mmgen.tokenizers.image import (
    EVAL_BATCH,
    ImageTokenizer,
    Images,
    autocast,
    code_statistics,
    images_to_uint8,
    model_to_pixels,
    pixels_to_model,
)
from mmgen.tokenizers.perceptual import PerceptualLoss
from mmgen.tokenizers.vqvae import VQVAE

CHECKPOINT_DIR = "checkpoint"
_GRID_IMAGES = 8


class PatchDiscriminator(nn.Module):
    """PatchGAN: a small strided conv net scoring overlapping patches as real or reconstructed."""

    def __init__(self, channels: int = 32):
        super().__init__()

        def block(i: int, o: int, stride: int) -> list[nn.Module]:
            # GroupNorm, not BatchNorm: statistics stay per sample under data parallelism
            return [nn.Conv2d(i, o, 4, stride, 1), nn.GroupNorm(8, o), nn.LeakyReLU(0.2)]

        self.net = nn.Sequential(
            nn.Conv2d(3, channels, 4, 2, 1),
            nn.LeakyReLU(0.2),
            *block(channels, 2 * channels, 2),
            *block(2 * channels, 4 * channels, 1),
            nn.Conv2d(4 * channels, 1, 4, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _learning_rate(cfg: ImageTokenizerConfig, progress: float, step: int, warmup: int) -> float:
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))


def _adamw(params: list[nn.Parameter], lr: float, betas: tuple[float, float]) -> torch.optim.AdamW:
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": 1e-4}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


def _recon_grid(original: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """uint8 ``[3, 2H, N·W]``: originals on top, reconstructions below."""
    rows = [torch.cat(list(batch), dim=-1) for batch in (original, recon)]
    return torch.cat(rows, dim=-2)


# ----- what trains, and its checkpoints -----


@dataclasses.dataclass
class _Nets:
    """The VQ-VAE, the PatchGAN discriminator when the config has one, and their optimizers."""

    model: VQVAE
    optimizer: torch.optim.AdamW
    disc: PatchDiscriminator | None = None
    disc_optimizer: torch.optim.AdamW | None = None

    @classmethod
    def around(cls, model: VQVAE, disc: PatchDiscriminator | None, lr: float) -> _Nets:
        optimizer = _adamw(list(model.parameters()), lr, (0.9, 0.99))
        # VQGAN's discriminator betas: a short momentum memory keeps the two-player game from oscillating
        disc_optimizer = _adamw(list(disc.parameters()), lr, (0.5, 0.9)) if disc is not None else None
        return cls(model, optimizer, disc, disc_optimizer)

    def set_lr(self, lr: float) -> None:
        for opt in (self.optimizer, self.disc_optimizer):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {**_module_tensors("model", self.model), **_optimizer_tensors("opt", self.optimizer)}
        if self.disc is not None:
            out.update({**_module_tensors("disc", self.disc), **_optimizer_tensors("disc_opt", self.disc_optimizer)})
        return out

    def load(self, tensors: dict[str, torch.Tensor], where: str) -> None:
        try:
            self.model.load_state_dict(_split("model", tensors))
            _load_optimizer("opt", self.optimizer, tensors)
            if self.disc is not None:
                self.disc.load_state_dict(_split("disc", tensors))
                _load_optimizer("disc_opt", self.disc_optimizer, tensors)
        except (RuntimeError, KeyError, ValueError) as e:
            raise ValueError(
                f"the checkpoint in {where} does not fit this image tokenizer config "
                f"({str(e).splitlines()[0]}); delete it or train into another folder"
            ) from None


def _optimizer_tensors(name: str, optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{name}.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    return out


def _load_optimizer(name: str, optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    prefix = f"{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix) :].split(".", 1)
            state_dict["state"].setdefault(int(index), {})[field] = value
    optimizer.load_state_dict(state_dict)


def _module_tensors(prefix: str, module: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _split(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


@dataclasses.dataclass
class _Progress:
    step: int = 0
    elapsed: float = 0.0
    cursor: int = 0


def _save_checkpoint(root: str, tensors: dict[str, torch.Tensor], progress: _Progress, cfg: ImageTokenizerConfig):
    fs, path = fsspec.core.url_to_fs(posixpath.join(root, CHECKPOINT_DIR))
    fs.makedirs(path, exist_ok=True)
    write_atomic(posixpath.join(path, "state.safetensors"), save_safetensors(tensors), fs)
    meta = {**dataclasses.asdict(progress), "config": dataclasses.asdict(cfg)}
    # the JSON is written last: a checkpoint without it (a crash mid-save) is ignored
    write_atomic(posixpath.join(path, "progress.json"), json.dumps(meta).encode(), fs)


def _read_checkpoint(
    root: str, cfg: ImageTokenizerConfig, log: Callable[[str], None]
) -> tuple[dict[str, torch.Tensor], _Progress] | None:
    fs, path = fsspec.core.url_to_fs(posixpath.join(root, CHECKPOINT_DIR))
    if not fs.exists(posixpath.join(path, "progress.json")):
        return None
    with fs.open(posixpath.join(path, "progress.json"), "r") as f:
        meta = json.load(f)
    if meta["config"] != json.loads(json.dumps(dataclasses.asdict(cfg))):
        log(f"image tokenizer: ignoring the checkpoint in {root}/{CHECKPOINT_DIR}, made with another config")
        return None
    with fs.open(posixpath.join(path, "state.safetensors"), "rb") as f:
        tensors = load_safetensors(f.read())
    return tensors, _Progress(step=meta["step"], elapsed=meta["elapsed"], cursor=meta["cursor"])


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fit(
    train_images: Images,
    heldout_images: Images,
    cfg: ImageTokenizerConfig,
    out_dir: str,
    log: Callable[[str], None] = print_above,
    *,
    device: torch.device | str | None = None,
    log_every: int = 50,
    tensorboard_dir: str | None = None,
    resume: bool = True,
) -> tuple[VQVAE, dict]:
    """Train the VQ-VAE on ``train_images``, save it to ``out_dir``; return it and its held-out metrics.

    Under torch.distributed every rank returns its own model (they hold the same
    weights and codebook) and only rank 0 evaluates: the others return ``{}``.

    ``tensorboard_dir`` defaults to ``out_dir/tensorboard`` for a local out_dir
    (scalars and a grid of held-out reconstructions every ``log_every`` steps).
    ``resume`` continues an interrupted run from ``out_dir/checkpoint`` when one
    made with the same config is there.
    """
    rank, world = _world()
    device = torch.device(device) if device is not None else default_device()
    dtype = compute_dtype(cfg.precision, device)
    pixels = images_to_uint8(train_images, cfg.image_size)
    heldout = images_to_uint8(heldout_images, cfg.image_size)
    if len(pixels) == 0:
        raise ValueError("no training images for the image tokenizer")
    torch.manual_seed(cfg.seed)
    # built in this order: each draws its initial weights from the seeded global generator
    model = VQVAE.from_config(cfg).to(device).train()
    perceptual = PerceptualLoss(cfg.perceptual_weights).to(device) if cfg.perceptual_weight > 0 else None
    disc = PatchDiscriminator().to(device).train() if cfg.adversarial_weight > 0 else None
    nets = _Nets.around(model, disc, cfg.lr)
    batches = _Batches(pixels, min(cfg.batch_size, max(len(pixels) // world, 1)), rank, world, cfg.seed)
    checkpoint = _read_checkpoint(out_dir, cfg, log) if resume else None
    progress = _resume(nets, batches, checkpoint, f"{out_dir}/{CHECKPOINT_DIR}", log) if checkpoint else _Progress()
    # buffers (the codebook) are synced by the quantizer; DDP keeps its default broadcast as a safety net
    ddp_model, ddp_disc = (_data_parallel(m, world) for m in (model, disc))
    writer = None
    if rank == 0:
        writer = _open_tensorboard(tensorboard_dir, out_dir)
        log(_describe(nets, cfg, len(pixels), len(heldout), dtype, device, world))

    grid_images = (heldout if len(heldout) else pixels)[:_GRID_IMAGES]
    warmup = max(1, min(100, cfg.train_steps // 20))
    start = time.perf_counter() - progress.elapsed
    window = _Window()
    guard = NonFiniteGuard(cfg.nonfinite, what="image tokenizer training")
    bar = progress_bar(desc="VQ-VAE", total=cfg.train_steps, initial=progress.step, unit="step")
    while progress.step < cfg.train_steps:
        elapsed = time.perf_counter() - start
        if _out_of_time(cfg, elapsed, device, world):
            break
        step = progress.step
        fraction = step / cfg.train_steps
        if cfg.max_train_seconds > 0:
            fraction = max(fraction, elapsed / cfg.max_train_seconds)
        lr = _learning_rate(cfg, fraction, step, warmup)
        nets.set_lr(lr)
        x = batches.next(progress, device)
        gan_active = disc is not None and step >= cfg.gan_start_step
        result = _train_step(nets, ddp_model, ddp_disc if gan_active else None, perceptual, x, cfg, device, dtype,
                             guard, step + 1)
        if result is not None:
            window.add(*result)
        progress.step += 1
        bar.update()
        done = progress.step == cfg.train_steps
        if rank == 0 and (progress.step % log_every == 0 or done) and window.steps:
            figures = window.figures(cfg.codebook_size)
            log(window.line(figures, progress.step, lr, progress.step / max(time.perf_counter() - start, 1e-9)))
            if writer is not None:
                for name, value in {**figures, "lr": lr}.items():
                    writer.add_scalar(f"image_tokenizer/{name}", value, progress.step)
                _write_reconstructions(writer, model, grid_images, progress.step, device, dtype)
            window = _Window()
        if rank == 0 and cfg.checkpoint_every > 0 and progress.step % cfg.checkpoint_every == 0 and not done:
            progress.elapsed = time.perf_counter() - start
            _save_checkpoint(out_dir, {**nets.tensors(), **batches.tensors()}, progress, cfg)

    bar.close()
    seconds = time.perf_counter() - start
    metrics: dict = {}
    if rank == 0:
        metrics = _evaluate_and_save(model, cfg, device, pixels, heldout, progress.step, seconds, out_dir)
        if writer is not None:
            writer.add_scalar("image_tokenizer/heldout_psnr", metrics["psnr"], progress.step)
            writer.close()
        log(
            "image tokenizer: "
            + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
            + f" -> {out_dir}"
        )
    if world > 1:
        dist.barrier()
    model.eval()
    return model, metrics


# ----- the steps of fit -----


class _Batches:
    """Each step's slice of a shuffled order of the training images, reshuffled when the rest is too short for
    every rank; rank ``r`` of ``world`` takes the ``r``-th slice of ``batch_size`` images."""

    def __init__(self, pixels: torch.Tensor, batch_size: int, rank: int, world: int, seed: int):
        self.pixels, self.batch_size, self.rank, self.world = pixels, batch_size, rank, world
        self.generator = torch.Generator().manual_seed(seed)
        self.order: torch.Tensor | None = None

    def next(self, progress: _Progress, device: torch.device) -> torch.Tensor:
        if self.order is None:
            self.order = torch.randperm(len(self.pixels), generator=self.generator)
        if progress.cursor + self.world * self.batch_size > len(self.pixels):
            self.order, progress.cursor = torch.randperm(len(self.pixels), generator=self.generator), 0
        lo = progress.cursor + self.rank * self.batch_size
        progress.cursor += self.world * self.batch_size
        return pixels_to_model(self.pixels[self.order[lo : lo + self.batch_size]], device)

    def tensors(self) -> dict[str, torch.Tensor]:
        # the global generator's state too: dead-code restarts sample from it
        return {"rng.batch": self.generator.get_state(), "rng.torch": torch.get_rng_state(), "order": self.order}


def _resume(nets: _Nets, batches: _Batches, checkpoint, where: str, log: Callable[[str], None]) -> _Progress:
    tensors, progress = checkpoint
    nets.load(tensors, where)
    if len(tensors["order"]) != len(batches.pixels):
        raise ValueError(f"the checkpoint in {where} was trained on another image set")
    batches.generator.set_state(tensors["rng.batch"])
    torch.set_rng_state(tensors["rng.torch"])
    batches.order = tensors["order"]
    log(f"image tokenizer: resuming at step {progress.step} ({progress.elapsed:.0f} s trained)")
    return progress


def _data_parallel(module: nn.Module | None, world: int) -> nn.Module | None:
    if world > 1 and module is not None:
        return nn.parallel.DistributedDataParallel(module)
    return module


def _open_tensorboard(tensorboard_dir: str | None, out_dir: str):
    if tensorboard_dir is None and "://" not in out_dir:
        tensorboard_dir = posixpath.join(out_dir, "tensorboard")
    if not tensorboard_dir:
        return None
    from torch.utils.tensorboard import SummaryWriter  # imported late: it is slow to import

    return SummaryWriter(tensorboard_dir)


def _describe(nets: _Nets, cfg: ImageTokenizerConfig, n_train: int, n_heldout: int, dtype, device, world: int) -> str:
    params = sum(p.numel() for p in nets.model.parameters())
    return (
        f"image tokenizer: {params / 1e6:.2f}M parameters, {n_train} train / "
        f"{n_heldout} held-out images, grid {nets.model.grid}, {cfg.quantizer} codebook {cfg.codebook_size}, "
        f"{dtype} on {device}, {world} rank(s)"
        + (f", PatchGAN weight {cfg.adversarial_weight} from step {cfg.gan_start_step}" if nets.disc is not None else "")
    )


def _out_of_time(cfg: ImageTokenizerConfig, elapsed: float, device: torch.device, world: int) -> bool:
    stop = torch.tensor([float(cfg.max_train_seconds > 0 and elapsed >= cfg.max_train_seconds)], device=device)
    if world > 1:
        dist.broadcast(stop, src=0)  # rank 0's clock decides, so every rank runs the same steps
    return bool(stop.item())


def _train_step(nets: _Nets, model: nn.Module, disc: nn.Module | None, perceptual: PerceptualLoss | None,
                x: torch.Tensor, cfg: ImageTokenizerConfig, device, dtype, guard: NonFiniteGuard, step: int):
    """One optimizer step of the VQ-VAE, then of the discriminator when ``disc`` is given (the GAN is active).

    Returns the loss, the MSE, the generator's GAN loss (or None) and the codes, for the log; None when
    ``guard`` skips a non-finite step (nothing changed: the forward's codebook update is undone too).
    """
    # the EMA codebook moves in the forward pass, before anything can be checked
    codebook = {k: b.clone() for k, b in nets.model.named_buffers()} if guard.policy == "skip" else None
    with autocast(device, dtype):
        recon, codes, commit_loss = model(x)
    recon = recon.float()
    mse = F.mse_loss(recon, x)
    loss = cfg.l2_weight * mse + cfg.l1_weight * F.l1_loss(recon, x) + commit_loss
    if perceptual is not None:
        loss = loss + cfg.perceptual_weight * perceptual(recon, x)
    g_loss = None
    if disc is not None:
        with autocast(device, dtype):
            g_loss = -disc(recon).float().mean()
        loss = loss + cfg.adversarial_weight * g_loss
    nets.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(nets.model.parameters()), 1.0)
    if not guard.allow_step(step, all_finite([loss, *gradients(nets.model)])):
        nets.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, saved in codebook.items():
                nets.model.get_buffer(name).copy_(saved)
        return None
    nets.optimizer.step()
    if disc is not None:
        nets.disc_optimizer.zero_grad(set_to_none=True)  # drop what the generator loss left on it
        with autocast(device, dtype):
            real, fake = disc(x).float(), disc(recon.detach()).float()
        d_loss = F.relu(1 - real).mean() + F.relu(1 + fake).mean()
        d_loss.backward()
        nets.disc_optimizer.step()
    return loss, mse, g_loss, codes


class _Window:
    """The training figures since the last log line."""

    def __init__(self):
        self.loss = self.mse = self.gan = 0.0
        self.steps = 0
        self.gan_active = False
        self.codes: list[torch.Tensor] = []

    def add(self, loss: torch.Tensor, mse: torch.Tensor, gan: torch.Tensor | None, codes: torch.Tensor) -> None:
        if gan is not None:
            self.gan += gan.item()
        self.gan_active = gan is not None  # the last step's, as the line says
        self.loss += loss.item()
        self.mse += mse.item()
        self.codes.append(codes.detach().flatten().cpu())
        self.steps += 1

    def figures(self, codebook_size: int) -> dict[str, float]:
        return {
            "loss": self.loss / self.steps,
            # mse is on [-1, 1] images: 255² / (mse · 127.5²) = 4 / mse
            "train_psnr": 10 * math.log10(4 / max(self.mse / self.steps, 1e-12)),
            "codebook_usage": code_statistics(torch.cat(self.codes), codebook_size)["codebook_usage"],
        }

    def line(self, figures: dict[str, float], step: int, lr: float, steps_per_second: float) -> str:
        return (
            f"image tokenizer step {step}: loss {figures['loss']:.4f} "
            f"train psnr {figures['train_psnr']:.2f} dB usage {figures['codebook_usage']:.2f} lr {lr:.2e} "
            + (f"gan {self.gan / self.steps:.3f} " if self.gan_active else "")
            + f"{steps_per_second:.2f} steps/s"
        )


def _write_reconstructions(writer, model: VQVAE, grid_images: torch.Tensor, step: int, device, dtype) -> None:
    model.eval()
    with torch.no_grad(), autocast(device, dtype):
        shown = model_to_pixels(model(pixels_to_model(grid_images, device))[0]).cpu()
    model.train()
    writer.add_image("image_tokenizer/reconstructions", _recon_grid(grid_images, shown), step)


def _evaluate_and_save(model: VQVAE, cfg: ImageTokenizerConfig, device, pixels: torch.Tensor, heldout: torch.Tensor,
                       steps: int, seconds: float, out_dir: str) -> dict:
    """Save the tokenizer with its metrics and drop the checkpoint: a finished run needs no resuming."""
    tokenizer = ImageTokenizer(model=model, config=cfg, device=device)
    metrics = {"train_steps": steps, "train_seconds": seconds, "steps_per_second": steps / seconds}
    # Without held-out images, the metrics describe (a slice of) the training set and say so.
    metrics["eval_split"] = "heldout" if len(heldout) else "train"
    metrics.update(tokenizer.evaluate((heldout if len(heldout) else pixels[:EVAL_BATCH]).permute(0, 2, 3, 1)))
    tokenizer.save(out_dir, metrics)
    fs, root = fsspec.core.url_to_fs(posixpath.join(out_dir, CHECKPOINT_DIR))
    if fs.exists(root):
        fs.rm(root, recursive=True)
    return metrics
