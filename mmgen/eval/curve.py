"""The learning curve of a pretraining run: held-out accuracies and bits per token at every kept checkpoint.

Each checkpoint is scored on the same ``eval.curve_items`` scenes (fewer than the report's final figures,
so the curve stays cheap) and its x position is the number of training tokens it had seen. The curve goes
three ways: into ``metrics.json``, as a PNG in the report, and as TensorBoard scalars under
``<pretrain>/tb/eval`` next to the training losses.
"""

from __future__ import annotations

import io
import posixpath
from typing import Callable

import fsspec

from mmgen.config import ExperimentConfig, RunPaths
from mmgen.eval.likelihood import bits_per_token
from mmgen.eval.shapes_eval import caption_eval, classify_eval, eval_scenes, split_documents, t2i_eval
from mmgen.eval.summary import read_json
from mmgen.model.checkpoint import checkpoint_steps, load_trained_model
from mmgen.progress import print_above, progress_bar

ACCURACY_KEYS = ("caption", "t2i", "shape_image_given_label", "color_image_given_label",
                 "shape_label_given_image", "color_label_given_image")  # fmt: skip


def tokens_per_step(cfg: ExperimentConfig, paths: RunPaths) -> int:
    """Training tokens one optimizer step consumed (all data-parallel ranks, padding included)."""
    fs, local = fsspec.core.url_to_fs(paths.stage_timing("pretrain"))
    ranks = read_json(paths.stage_timing("pretrain")).get("processes", cfg.processes) if fs.exists(local) else cfg.processes
    return cfg.training.local_batch_size * cfg.training.seq_len * int(ranks)


def curve_point(cfg: ExperimentConfig, model, tokenizer, items: int, documents) -> dict[str, float]:
    """The curve's measurements of one model on ``items`` scenes and ``documents`` (token ids) of the evaluation
    split."""
    e, world = cfg.eval, cfg.world
    scenes = lambda offset, **kw: eval_scenes(items, world, seed=e.seed + offset, split=e.split, **kw)
    point = bits_per_token(model, documents,
                           image_range=tokenizer.vocab.image_range, pad_id=tokenizer.vocab.pad,
                           max_len=cfg.model.max_seq_len, batch_size=e.batch_size)
    point["caption"] = caption_eval(model, tokenizer, scenes(0), e, world.image_size)["accuracy"]
    point["t2i"] = t2i_eval(model, tokenizer, scenes(1), e, world.image_size)["accuracy"]
    classes = classify_eval(model, tokenizer, scenes(2, max_shapes=1), e, world.image_size)
    for name, task in classes.items():
        key, direction = name.split("/")
        point[f"{key}_{direction}"] = task["top1"]
    return point


def learning_curve(cfg: ExperimentConfig, paths: RunPaths, tokenizer, device, *,
                   log: Callable[[str], None] = print_above) -> list[dict]:
    """One point per kept pretraining checkpoint: {'step', 'tokens', accuracies, bits per token}."""
    items = cfg.eval.curve_items
    if items <= 0:
        return []
    per_step = tokens_per_step(cfg, paths)
    points = []
    steps = checkpoint_steps(posixpath.join(paths.pretrain_dir, cfg.checkpoint.folder))
    # the same documents score every checkpoint: read (or, for validation, written) once
    documents = split_documents(paths, tokenizer, cfg.world, cfg.eval.split, items) if steps else []
    for step in progress_bar(steps, desc="learning curve", unit="checkpoint"):
        model, _ = load_trained_model(paths.pretrain_dir, checkpoint_folder=cfg.checkpoint.folder, step=step,
                                      device=device)
        point = {"step": step, "tokens": step * per_step, **curve_point(cfg, model, tokenizer, items, documents)}
        log(f"[curve] step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in point.items() if isinstance(v, float)))
        points.append(point)
    return points


def curve_png(points: list[dict], title: str) -> bytes:
    """Accuracies (left) and bits per token (right) against training tokens."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render to a buffer
    import matplotlib.pyplot as plt

    tokens = [p["tokens"] / 1e6 for p in points]
    fig, (acc, bits) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ACCURACY_KEYS:
        acc.plot(tokens, [p[key] for p in points], marker="o", label=key)
    acc.set(xlabel="training tokens (millions)", ylabel="held-out accuracy", ylim=(0, 1), title=title)
    acc.grid(alpha=0.3)
    acc.legend(fontsize=7)
    for key in ("text_bits_per_token", "image_bits_per_token"):
        bits.plot(tokens, [p[key] for p in points], marker="o", label=key)
    bits.set(xlabel="training tokens (millions)", ylabel="bits per token", title="held-out bits per token")
    bits.grid(alpha=0.3)
    bits.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def write_tensorboard(points: list[dict], log_dir: str) -> None:
    """The curve as TensorBoard scalars ``eval/<metric>`` at each checkpoint's step."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(log_dir) as writer:
        for p in points:
            for key, value in p.items():
                if isinstance(value, float):
                    writer.add_scalar(f"eval/{key}", value, global_step=p["step"])
