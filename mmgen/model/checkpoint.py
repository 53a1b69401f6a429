"""Load a trained decoder from a pretraining run, without torchtitan.

torchtitan saves distributed (DCP) checkpoints under ``<pretrain>/checkpoint/step-N``
with the model's parameters at top-level keys; ``torch.distributed.checkpoint``
reads just those keys into a plain ``Transformer`` in one process. The
architecture comes from ``model.json``, which pretraining writes next to the
checkpoints, so sampling cannot silently build a different model.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import re
import warnings

import sys
from typing import Callable

import fsspec
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata

from mmgen.config.paths import RunPaths
from mmgen.config.schema import ExperimentConfig, ModelConfig
from mmgen.files import CorruptFileError, reading, write_json
from mmgen.model.lora import add_lora, merge_lora
from mmgen.model.transformer import Transformer

MODEL_FILE = "model.json"
METADATA = ".metadata"


def model_description(model: ModelConfig, vocab_size: int, *, lora_rank: int = 0, lora_alpha: float = 0.0) -> dict:
    """What ``model.json`` holds: the architecture (``model``), ``vocab_size`` and LoRA settings."""
    # through JSON, so a description compares equal to one read back from its file (tuples become lists)
    return json.loads(json.dumps({"model": dataclasses.asdict(model), "vocab_size": vocab_size,
                                  "lora_rank": lora_rank, "lora_alpha": lora_alpha}))  # fmt: skip


def write_model_description(run_dir: str, description: dict) -> None:
    write_json(posixpath.join(run_dir, MODEL_FILE), description)


def save_model_description(run_dir: str, model: ModelConfig, vocab_size: int, *, lora_rank: int = 0, lora_alpha: float = 0.0) -> None:
    write_model_description(run_dir, model_description(model, vocab_size, lora_rank=lora_rank, lora_alpha=lora_alpha))


def read_model_description(run_dir: str) -> dict:
    """``model.json`` of a training folder: the architecture (``model``), ``vocab_size`` and LoRA settings."""
    description = posixpath.join(run_dir, MODEL_FILE)
    fs, local = fsspec.core.url_to_fs(description)
    if not fs.exists(local):
        raise FileNotFoundError(f"missing input {description} (run train/pretrain.py first)")
    with fs.open(local, "r") as f, reading(description, "model description"):
        saved = json.load(f)
        # the z-loss weight moved to training.z_loss_weight; files written before still list it with the model
        saved["model"].pop("z_loss_weight", None)
        # fields added since the file was written take their defaults, which keep the model as it was trained
        # (image_grid_embedding off), so the run still resumes and loads
        saved["model"] = {**model_description(ModelConfig(), 0)["model"], **saved["model"]}
        return saved


def checkpoint_steps(checkpoint_dir: str) -> list[int]:
    fs, root = fsspec.core.url_to_fs(checkpoint_dir)
    if not fs.exists(root):
        return []
    steps = []
    for entry in fs.ls(root, detail=False):
        match = re.fullmatch(r"step-(\d+)", posixpath.basename(entry.rstrip("/")))
        if match and fs.exists(posixpath.join(entry, ".metadata")):
            steps.append(int(match.group(1)))
    return sorted(steps)


def read_checkpoint_metadata(checkpoint: str) -> Metadata:
    if "://" in checkpoint:
        from torch.distributed.checkpoint import FsspecReader

        return FsspecReader(checkpoint).read_metadata()
    return FileSystemReader(checkpoint).read_metadata()


def checkpoint_problem(checkpoint: str) -> str | None:
    """Why the DCP checkpoint folder ``checkpoint`` cannot be loaded, or None when its files hold what it lists."""
    try:
        metadata = read_checkpoint_metadata(checkpoint)
        storage = dict(metadata.storage_data)
    except Exception as err:  # a pickle of garbage raises anything
        return f"its {METADATA} does not read ({type(err).__name__})"
    needed: dict[str, int] = {}
    for info in storage.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    fs, root = fsspec.core.url_to_fs(checkpoint)
    for name, end in sorted(needed.items()):
        path = posixpath.join(root, name)
        if not fs.isfile(path):
            return f"{name} is missing"
        size = fs.size(path)
        if size < end:
            return f"{name} holds {size} bytes, its metadata lists data up to byte {end}"
    return None


def newest_sound_step(checkpoint_dir: str, warn: Callable[[str], None]) -> int:
    """The newest step under ``checkpoint_dir`` whose checkpoint is whole (-1: none saved).

    Each corrupt one on the way is named through ``warn``; when every one is corrupt, one error names them all.
    Training resumes from the step this returns and the eval stages load it, so both skip the same checkpoints.
    """
    problems = []
    for step in sorted(checkpoint_steps(checkpoint_dir), reverse=True):  # folders with .metadata: saves that completed
        checkpoint = posixpath.join(checkpoint_dir, f"step-{step}")
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            return step
        problems.append(f"{checkpoint}: {problem}")
        warn(f"checkpoint {checkpoint} is corrupt ({problem}); trying the previous one")
    if problems:
        raise CorruptFileError(f"every checkpoint in {checkpoint_dir} is corrupt ({'; '.join(problems)})")
    return -1


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def load_pretrained_model(cfg: ExperimentConfig, paths: RunPaths, device: torch.device | str = "cpu") -> tuple[Transformer, int]:
    """The run's pretrained decoder at ``sample.checkpoint_step`` (-1: the newest), as the eval stages load it."""
    return load_trained_model(paths.pretrain_dir, checkpoint_folder=cfg.checkpoint.folder,
                              step=cfg.sample.checkpoint_step, device=device)


def load_trained_model(pretrain_dir: str, *, checkpoint_folder: str = "checkpoint", step: int = -1,
                       device: torch.device | str = "cpu") -> tuple[Transformer, int]:
    """The decoder of a pretraining (or SFT) run at ``step`` (-1: the newest whole one, past corrupt ones with a
    warning line each), in eval mode; returns (model, step).

    LoRA adapters of a LoRA fine-tuning run are merged into the base weights.
    """
    description = posixpath.join(pretrain_dir, MODEL_FILE)
    saved = read_model_description(pretrain_dir)
    with reading(description, "model description"):
        cfg = ModelConfig(**saved["model"])
        vocab_size, lora_rank, lora_alpha = int(saved["vocab_size"]), int(saved.get("lora_rank", 0)), saved.get("lora_alpha", 0.0)
    checkpoint_dir = posixpath.join(pretrain_dir, checkpoint_folder)
    steps = checkpoint_steps(checkpoint_dir)
    if not steps:
        raise FileNotFoundError(f"no checkpoint under {checkpoint_dir} (run train/pretrain.py first)")
    if step == -1:
        step = newest_sound_step(checkpoint_dir, _warn)
    elif step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} under {checkpoint_dir} (have {steps})")
    with reading(description, "model description"):
        model = Transformer(cfg, vocab_size)
        if lora_rank:
            add_lora(model, rank=lora_rank, alpha=lora_alpha)
    state = model.state_dict()
    checkpoint = posixpath.join(checkpoint_dir, f"step-{step}")
    # DCP logs each failed metadata read with its traceback (on the root logger) before raising; the raised
    # error says the same in one line
    dcp_log = logging.getLogger()
    level = dcp_log.level
    dcp_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), reading(checkpoint, f"checkpoint of the model {MODEL_FILE} describes", also=(CheckpointException,)):
            warnings.simplefilter("ignore", UserWarning)  # DCP warns that it loads in one process, which is the intent
            dcp.load(state, checkpoint_id=checkpoint, no_dist=True)
            model.load_state_dict(state)
    finally:
        dcp_log.setLevel(level)
    if lora_rank:
        merge_lora(model)
    return model.to(device).eval(), step
