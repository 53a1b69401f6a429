"""Supervised fine-tuning: the pretraining trainer, started from a pretraining checkpoint on SFT shards.

Everything but the data, the schedule and the folders is the pretraining
setup (FSDP2, loss); the architecture is the one the starting checkpoint was
saved with (``pretrain/model.json``), so an imported Chameleon fine-tunes
whatever ``model`` section the config holds. torchtitan loads the pretrained weights through
``checkpoint.initial_load_path`` (model only) on the first start; a restarted
SFT run resumes from its own newest checkpoint instead. With ``sft.lora_rank``
only LoRA adapters train; they are also written on their own as
``<run>/sft/adapters.safetensors``, and loading the run merges them.
"""

from __future__ import annotations

import math
import os
import posixpath
import time

import fsspec

from mmgen.config import ExperimentConfig, RunPaths
from mmgen.data.token_shards import TokenShards
from mmgen.config.schema import ModelConfig
from mmgen.model.checkpoint import checkpoint_steps, read_model_description
from mmgen.train.model_spec import build_model_spec
from mmgen.train.trainer import MMGenTrainer, build_trainer_config, check_training_tokens


def check_sft_inputs(cfg: ExperimentConfig) -> str:
    """The pretraining checkpoint to start from; raises FileNotFoundError naming what is missing."""
    paths = RunPaths(cfg.run_dir)
    manifest = paths.tokens("sft-train") + "/manifest.json"
    fs, local = fsspec.core.url_to_fs(manifest)
    if not fs.exists(local):
        raise FileNotFoundError(f"missing input {manifest} (run tokenizers/encode_sft.py --config {cfg.name} first)")
    check_training_tokens(paths, paths.tokens("sft-train"), cfg.processes)
    checkpoints = posixpath.join(paths.pretrain_dir, cfg.checkpoint.folder)
    steps = checkpoint_steps(checkpoints)
    if not steps:
        raise FileNotFoundError(f"no pretraining checkpoint under {checkpoints} (run train/pretrain.py first)")
    step = steps[-1] if cfg.sft.from_step == -1 else cfg.sft.from_step
    if step not in steps:
        raise FileNotFoundError(f"no pretraining checkpoint for step {step} under {checkpoints} (have {steps})")
    return posixpath.join(checkpoints, f"step-{step}")


def prepare_lora_seed(cfg: ExperimentConfig, start_from: str) -> str:
    """A model-only DCP checkpoint of the pretrained weights plus fresh adapters, for torchtitan's initial load.

    torchtitan loads the initial checkpoint into the model as built, adapters
    included, so their keys must exist in it. Rank 0 writes it once (under a
    temporary name, then renamed); other ranks wait for it.
    """
    seed_dir = posixpath.join(RunPaths(cfg.run_dir).sft_dir(cfg.sft.folder), "lora_seed")
    fs, local = fsspec.core.url_to_fs(seed_dir)
    if int(os.environ.get("RANK", "0")) == 0 and not fs.exists(posixpath.join(local, ".metadata")):
        import torch
        import torch.distributed.checkpoint as dcp

        from mmgen.model.lora import add_lora
        from mmgen.model.checkpoint import load_trained_model

        step = int(posixpath.basename(start_from).split("-")[1])
        model, _ = load_trained_model(RunPaths(cfg.run_dir).pretrain_dir, checkpoint_folder=cfg.checkpoint.folder, step=step)
        torch.manual_seed(cfg.sft.seed)
        add_lora(model, rank=cfg.sft.lora_rank, alpha=cfg.sft.lora_alpha)
        if fs.exists(local + ".tmp"):
            fs.rm(local + ".tmp", recursive=True)
        dcp.save(model.state_dict(), checkpoint_id=local + ".tmp", no_dist=True)
        fs.mv(local + ".tmp", local, recursive=True)
    deadline = time.time() + 600
    while not fs.exists(posixpath.join(local, ".metadata")):
        if time.time() > deadline:
            raise TimeoutError(f"rank 0 did not write the LoRA seed checkpoint {seed_dir}")
        time.sleep(0.5)
    return seed_dir


def sft_steps(cfg: ExperimentConfig, world_size: int) -> int:
    tokens = TokenShards(RunPaths(cfg.run_dir).tokens("sft-train")).manifest["tokens"]
    per_step = cfg.training.local_batch_size * cfg.training.seq_len * world_size
    return max(1, math.ceil(cfg.sft.epochs * tokens / per_step))


def build_sft_config(cfg: ExperimentConfig) -> MMGenTrainer.Config:
    paths = RunPaths(cfg.run_dir)
    start_from = check_sft_inputs(cfg)
    tc = build_trainer_config(cfg)
    # fine-tuning continues the checkpoint's architecture (an imported Chameleon's, say), not the config's
    pretrained = read_model_description(paths.pretrain_dir)
    tc.model_spec = build_model_spec(ModelConfig(**pretrained["model"]), pretrained["vocab_size"], cfg.name)
    tc.dump_folder = paths.sft_dir(cfg.sft.folder)
    tc.loss_log = posixpath.join(tc.dump_folder, "loss_log.jsonl")
    tc.dataloader.tokens_dir = paths.tokens("sft-train")
    tc.dataloader.neighbours_path = ""
    tc.dataloader.sft = True
    tc.training.steps = sft_steps(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    for group in tc.optimizer.param_groups:
        group.optimizer_kwargs["lr"] = cfg.sft.lr
    tc.lr_scheduler.warmup_steps = min(cfg.sft.warmup_steps, max(tc.training.steps - 1, 0))
    if cfg.sft.lora_rank:
        tc.model_spec.model.lora_rank = cfg.sft.lora_rank
        tc.model_spec.model.lora_alpha = cfg.sft.lora_alpha
        start_from = prepare_lora_seed(cfg, start_from)
        # adapters only: one group, no weight decay pulling them back to the base model
        only = tc.optimizer.param_groups[-1]
        only.optimizer_kwargs["weight_decay"] = 0.0
        tc.optimizer.param_groups = [only]
    # torchtitan wants the initial checkpoint as an absolute path or a remote URI
    tc.checkpoint.initial_load_path = start_from if "://" in start_from else os.path.abspath(start_from)
    tc.checkpoint.initial_load_model_only = True
    tc.checkpoint.interval = max(1, min(cfg.checkpoint.interval, tc.training.steps))
    return tc
