"""Pretraining through torchtitan's Trainer, configured from the experiment config.

``build_trainer_config`` maps the experiment config's torchtitan sections onto
torchtitan's ``Trainer.Config`` field by field (same names), and plugs in
mmgen's model spec, packing data loader and modality-aware loss.
``MMGenTrainer`` changes the stock trainer in two places. Its forward-backward
step hands the batch's per-token ``loss_weights`` to the loss (not the model)
and keeps the per-modality sums the loss returns as its metrics (torchtitan
0.3.0 drops a loss's metrics). At every logged step it reduces the text-token
and image-token losses across ranks and writes them to TensorBoard and to a
JSONL loss log that later stages (the demo summary) read.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import posixpath
import sys
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import fsspec
import spmd_types as spmd
import torch
import torch.distributed as dist
from torchtitan.components.optimizer import ParamGroupConfig
from torchtitan.components.tokenizer import BaseTokenizer
from torchtitan.distributed.activation_checkpoint import FullAC
from torchtitan.trainer import Trainer

from mmgen.config import ExperimentConfig, RunPaths
from mmgen.config.paths import StaleInputError
from mmgen.data.token_shards import TokenShardError, TokenShards
from mmgen.device import compute_dtype, default_device
from mmgen.files import append_jsonl, read_jsonl, write_atomic
from mmgen.fingerprints import check_tokens_inputs
from mmgen.model.checkpoint import MODEL_FILE, checkpoint_steps, model_description, read_model_description, write_model_description
from mmgen.model.transformer import with_image_layout
from mmgen.nonfinite import NonFiniteGuard, all_finite
from mmgen.retrieval.bank_documents import has_bank_corpus
from mmgen.tokenizers.run import load_text_tokenizer
from mmgen.tokenizers.vocab import Vocab
from mmgen.train.checkpointing import MMGenCheckpointManager
from mmgen.train.components import MODALITY_SUMS, ModalityLoss, PackedDataLoader
from mmgen.train.console import MachineMetrics, rank_console
from mmgen.train.fault_injection import nan_asked, pause_if_asked
from mmgen.train.model_spec import build_model_spec


class VocabTokenizer(BaseTokenizer):
    """torchtitan's tokenizer slot, filled with mmgen's text side (the trainer only asks for sizes and EOS)."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseTokenizer.Config):
        run_dir: str = ""

    def __init__(self, config: Config, **_: Any):
        super().__init__()
        paths = RunPaths(config.run_dir)
        self.vocab = Vocab.load(paths.vocab)
        self.text = load_text_tokenizer(paths, self.vocab)
        self.eos_id = self.vocab.eos

    def encode(self, text: str) -> list[int]:
        return [self.vocab.text_to_id(i) for i in self.text.encode(text)]

    def decode(self, ids: list[int]) -> str:
        return self.text.decode([self.vocab.id_to_text(i) for i in ids if self.vocab.is_text(i)])

    def get_vocab_size(self) -> int:
        return self.vocab.size


class MMGenTrainer(Trainer):
    @dataclass(kw_only=True, slots=True)
    class Config(Trainer.Config):
        loss_log: str = ""
        """JSONL file receiving text and image losses at every logged step."""
        nonfinite: str = "stop"
        """A NaN or inf loss or gradient: "stop" before the optimizer steps, or "skip" the step."""

    modality_sums: torch.Tensor | None = None
    """The loss's per-modality sums since the last logged step."""

    def __init__(self, config: Config):
        super().__init__(config)
        self.nonfinite = NonFiniteGuard(config.nonfinite)
        self.step_losses: list[torch.Tensor] = []
        self.step_sums: torch.Tensor | None = None
        # torchtitan's step clips the gradients and then steps the optimizers; the check sits between the two
        step_optimizers = self.optimizers.step
        self.optimizers.step = lambda: self._step_if_finite(step_optimizers)

    def _step_if_finite(self, step_optimizers) -> None:
        """Step the optimizers unless a loss or gradient of this step is NaN or inf on any rank."""
        pause_if_asked(f"step-{self.step}")
        losses, self.step_losses = self.step_losses, []
        sums, self.step_sums = self.step_sums, None
        grads = [p.grad for m in self.model_parts for p in m.parameters()]
        if not self.nonfinite.allow_step(self.step, all_finite([*losses, *grads])):
            return  # the next step's zero_grad drops the gradients; this step's losses stay out of the loss log
        step_optimizers()
        if sums is not None:
            self.modality_sums = sums if self.modality_sums is None else self.modality_sums + sums

    def _forward_backward_body(self, inputs, labels, global_valid_tokens, extra_kwargs):
        # torchtitan's body, but loss weights go to the loss and the loss's metrics are kept
        model_kwargs = {k: v for k, v in extra_kwargs.items() if k != "loss_weights"}
        with self.train_context():
            pred = self.model_parts[0](inputs, **model_kwargs)
            loss, metrics = self.loss_fn(pred, labels, global_valid_tokens, loss_weights=extra_kwargs.get("loss_weights"))
            if nan_asked(f"step-{self.step}"):
                loss = loss * float("nan")
            del pred
            with spmd.no_typecheck():  # as torchtitan: type-checking the backward conflicts with checkpointing
                loss.backward()
        sums = metrics[MODALITY_SUMS]
        self.step_sums = sums if self.step_sums is None else self.step_sums + sums
        loss = loss.detach()
        self.step_losses.append(loss)
        # what torchtitan logs: a skipped step's non-finite loss must not trip its own NaN check (a crash)
        return torch.where(loss.isfinite(), loss, torch.zeros_like(loss))

    _loss_log_checked = False

    def train_step(self, data_iterator):
        if not self._loss_log_checked:
            # the first step this process runs: after a resume, the log may hold steps that are about to run again
            self._loss_log_checked = True
            self._forget_logged_steps_from(self.step)
        super().train_step(data_iterator)
        if not self.metrics_processor.should_log(self.step):
            return
        sums, self.modality_sums = self.modality_sums, None
        if sums is None:
            return
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(sums)
        text_sum, text_n, image_sum, image_n = sums.tolist()
        metrics = {
            "loss_metrics/text_loss": text_sum / max(text_n, 1.0),
            "loss_metrics/image_loss": image_sum / max(image_n, 1.0),
            "loss_metrics/loss": (text_sum + image_sum) / max(text_n + image_n, 1.0),
        }
        self.metrics_processor.logger.log(metrics, self.step)
        if self.config.loss_log and (not dist.is_initialized() or dist.get_rank() == 0):
            record = {"step": self.step, "time": time.time(), "text_tokens": int(text_n), "image_tokens": int(image_n)}
            record.update({k.split("/")[1]: v for k, v in metrics.items()})
            append_jsonl(self.config.loss_log, record)

    def _forget_logged_steps_from(self, step: int) -> None:
        """Drop loss-log records of ``step`` and later (logged after the checkpoint this run resumed from)."""
        log = self.config.loss_log
        if not log or (dist.is_initialized() and dist.get_rank() != 0):
            return
        fs, local = fsspec.core.url_to_fs(log)
        if not fs.exists(local):
            return
        kept = [r for r in read_jsonl(log) if r.get("step", 0) < step]
        write_atomic(log, "".join(json.dumps(r) + "\n" for r in kept))


def copy_fields(section: Any, target: Any, *, mmgen_only: tuple[str, ...] = ()) -> None:
    """Set every field of an experiment config section on torchtitan's section of the same name.

    ``mmgen_only`` names fields torchtitan does not have, which mmgen applies itself.
    """
    for f in dataclasses.fields(section):
        if f.name in mmgen_only:
            continue
        if not hasattr(target, f.name):
            raise AttributeError(f"torchtitan's {type(target).__name__} has no field {f.name}")
        setattr(target, f.name, getattr(section, f.name))


def build_trainer_config(cfg: ExperimentConfig) -> MMGenTrainer.Config:
    paths = RunPaths(cfg.run_dir)
    vocab = Vocab.load(paths.vocab)
    tc = MMGenTrainer.Config(
        model_spec=build_model_spec(with_image_layout(cfg.model, vocab), vocab.size, cfg.name),
        dump_folder=paths.pretrain_dir,
        loss_log=paths.loss_log,
        nonfinite=cfg.training.nonfinite,
    )
    tc.tokenizer = VocabTokenizer.Config(run_dir=cfg.run_dir)
    tc.dataloader = PackedDataLoader.Config(
        tokens_dir=paths.tokens("train"),
        pad_id=vocab.pad,
        seed=cfg.data.shuffle_seed,
        neighbours_path=paths.neighbours("train") if cfg.retrieval.enable else "",
        bank_tokens_dir=paths.tokens("bank") if cfg.retrieval.enable and has_bank_corpus(paths) else "",
        specials=(vocab.bos, vocab.eos, vocab.sep),
        retrieved_loss_weight=cfg.retrieval.retrieved_loss_weight,
        vocab_path=paths.vocab,
        cm3_rate=cfg.data.cm3_rate,
        cm3_image_share=cfg.data.cm3_image_share,
        cm3_text_cue=cfg.data.cm3_text_cue,
        condition_dropout=cfg.data.condition_dropout,
    )
    image_start, image_stop = vocab.image_range
    tc.loss = ModalityLoss.Config(image_start=image_start, image_stop=image_stop, z_loss_weight=cfg.training.z_loss_weight)

    copy_fields(cfg.training, tc.training, mmgen_only=("nonfinite", "z_loss_weight"))
    precision = compute_dtype(cfg.training.mixed_precision_param, default_device())  # "auto" picks by device
    tc.training.mixed_precision_param = "bfloat16" if precision == torch.bfloat16 else "float32"
    # the forward-backward step adds up the loss's per-modality sums in Python, which a replayed CUDA graph skips
    tc.training.disable_cuda_graphs = True

    o = cfg.optimizer
    no_decay = r"(norm|bias|tok_embeddings)"
    kwargs = {"lr": o.lr, "betas": (o.beta1, o.beta2), "eps": o.eps}
    tc.optimizer.param_groups = [
        ParamGroupConfig(pattern=no_decay, optimizer_name=o.name, optimizer_kwargs={**kwargs, "weight_decay": 0.0}),
        ParamGroupConfig(pattern=r".*", optimizer_name=o.name, optimizer_kwargs={**kwargs, "weight_decay": o.weight_decay}),
    ]
    tc.optimizer.implementation = "fused" if torch.cuda.is_available() else "foreach"

    copy_fields(cfg.lr_scheduler, tc.lr_scheduler)
    tc.checkpoint = MMGenCheckpointManager.Config()
    copy_fields(cfg.checkpoint, tc.checkpoint)
    # resuming from the last step needs the optimizer and data loader too
    tc.checkpoint.last_save_model_only = False
    tc.metrics = MachineMetrics.Config(compute_dtype=tc.training.mixed_precision_param)
    copy_fields(cfg.metrics, tc.metrics)
    copy_fields(cfg.parallelism, tc.parallelism)
    # mmgen's decoder is plain PyTorch, not written in torchtitan's spmd_types dialect
    tc.parallelism.spmd_backend = "partial_dtensor"

    tc.activation_checkpoint = FullAC.Config() if cfg.activation_checkpoint.mode == "full" else None
    tc.compile.enable = cfg.compile.enable
    tc.debug.seed = cfg.seed
    tc.debug.enable_structured_logging = False
    return tc


def check_pretraining_inputs(cfg: ExperimentConfig) -> None:
    """Fail before any process starts when an earlier stage's output is missing, unreadable or empty.

    Each rank would otherwise print its own traceback, after torchrun's start-up.
    """
    paths = RunPaths(cfg.run_dir)
    needed = {
        paths.vocab: "tokenizers/encode.py",
        paths.text_tokenizer: "tokenizers/train_text.py",
        paths.tokens("train") + "/manifest.json": "tokenizers/encode.py",
    }
    if cfg.retrieval.enable:
        needed[paths.neighbours("train")] = "retrieval/build_index.py"
    for path, stage in needed.items():
        fs, local = fsspec.core.url_to_fs(path)
        if not fs.exists(local):
            raise FileNotFoundError(f"missing input {path} (run {stage} --config {cfg.name} first)")
    check_training_tokens(paths, paths.tokens("train"), cfg.processes)
    vocab = Vocab.load(paths.vocab)
    spec = build_model_spec(with_image_layout(cfg.model, vocab), vocab.size, cfg.name)
    check_resumable(paths.pretrain_dir, cfg.checkpoint.folder, described(spec))


def check_training_tokens(paths: RunPaths, tokens: str, processes: int) -> None:
    """The run's vocabulary and text tokenizer read, and ``tokens`` holds documents encoded with the run's tokenizers,
    in every mixed corpus at least one per training process (each rank draws from every corpus)."""
    vocab = Vocab.load(paths.vocab)
    load_text_tokenizer(paths, vocab)
    shards = TokenShards(tokens)
    if len(shards) == 0:
        raise TokenShardError(f"{tokens} holds no documents to train on")
    for corpus, _ in shards.components:
        kept = len(corpus.kept_indices())
        if kept < processes:
            raise TokenShardError(f"{corpus.folder} holds {kept} documents to train on, fewer than the "
                                  f"{processes} training processes (each draws its own): encode more into it")
    if int(shards.manifest.get("vocab_size", vocab.size)) != vocab.size:
        raise StaleInputError(f"{tokens} was encoded with a vocabulary of {shards.manifest['vocab_size']} tokens, "
                              f"but {paths.vocab} has {vocab.size}: encode again")
    check_tokens_inputs(shards.manifest, tokens, paths)


def described(spec: Any) -> dict:
    """The ``model.json`` of a torchtitan model spec."""
    m = spec.model
    return model_description(m.model, m.vocab_size, lora_rank=m.lora_rank, lora_alpha=m.lora_alpha)


def check_resumable(folder: str, checkpoint_folder: str, description: dict) -> None:
    """A resume continues the model its checkpoints hold: ``model.json`` in ``folder`` must describe this model.

    Checked before ``model.json`` is written, so a mistaken config never overwrites the description of a
    run's checkpoints (the checkpoint's tensor shapes are checked again when it loads).
    """
    checkpoints = posixpath.join(folder, checkpoint_folder)
    if not checkpoint_steps(checkpoints):
        return
    fs, local = fsspec.core.url_to_fs(posixpath.join(folder, MODEL_FILE))
    if not fs.exists(local):
        return
    saved = read_model_description(folder)
    changed = sorted(k for k in {*saved.get("model", {}), *description["model"]}
                     if saved.get("model", {}).get(k) != description["model"].get(k))  # fmt: skip
    lora = ("lora_rank", "lora_alpha") if saved.get("lora_rank") or description["lora_rank"] else ()  # alpha: only with LoRA
    changed += [k for k in ("vocab_size", *lora) if saved.get(k) != description[k]]
    if changed:
        diff = ", ".join(f"{k} {_described(saved, k)} there, {_described(description, k)} now" for k in changed)
        raise StaleInputError(f"{checkpoints} holds checkpoints of another model than this config's ({diff}; "
                              f"from {posixpath.join(folder, MODEL_FILE)}): resume with the config it was trained "
                              f"with, or use another output folder")  # fmt: skip


def _described(description: dict, key: str) -> Any:
    return description["model"].get(key) if key in description.get("model", {}) else description.get(key)


def save_adapters(model: torch.nn.Module, path: str) -> None:
    """Gather the LoRA adapters (collective: every rank calls it) and write them from rank 0."""
    from safetensors.torch import save

    from mmgen.model.lora import lora_state_dict

    adapters = {k: (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu().contiguous()
                for k, v in lora_state_dict(model).items()}
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_atomic(path, save(adapters))


def run_pretraining(cfg: ExperimentConfig, trainer_config: MMGenTrainer.Config | None = None) -> None:
    """Train in this process as one rank of a torchrun job (or alone); SFT passes its own trainer config."""
    rank_console(int(os.environ.get("RANK", "0")))
    if trainer_config is None:
        check_pretraining_inputs(cfg)
        trainer_config = build_trainer_config(cfg)
    description = described(trainer_config.model_spec)
    check_resumable(trainer_config.dump_folder, trainer_config.checkpoint.folder, description)  # every rank: all stop or none
    if int(os.environ.get("RANK", "0")) == 0:
        write_model_description(trainer_config.dump_folder, description)
    trainer = trainer_config.build()
    try:
        trainer.train()
        if trainer_config.model_spec.model.lora_rank:
            save_adapters(trainer.model_parts[0], posixpath.join(trainer_config.dump_folder, "adapters.safetensors"))
    finally:
        trainer.close()
    # Only after success: tearing down a group while a failed peer is mid-collective can hang (torchtitan does the same).
    # The trainer sits in reference cycles, so without a collection its DTensors would live on into interpreter exit.
    del trainer
    gc.collect()
    if dist.is_initialized():
        dist.barrier()  # no peer still waits on this rank's gloo threads
        dist.destroy_process_group()


def end_rank_process() -> NoReturn:
    """End a finished torchrun rank without interpreter finalization; call it once its outputs are written.

    torch's DTensor caches keep the device meshes, and with them the gloo process groups and their worker threads,
    alive until the interpreter finalizes. A worker thread that then drops a tensor must take the GIL, which a
    finalizing interpreter answers with pthread_exit; unwinding a C++ thread that way aborts the process
    ("terminate called without an active exception", exit -6) although all work is done. Exiting here, with
    streams and logs flushed, leaves no finalization to race with.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
