"""Range and consistency checks of the experiment config, run once when a CLI builds it.

A value out of range would otherwise surface minutes later as a traceback deep inside a stage (a negative
document count, heads that do not divide the width) or, worse, be accepted silently. Each rule names its
field, so the error line tells the user which override to fix. Checks that need more than the config (an
image size the shapes world can draw, a downsample the VQ-VAE can build) stay with the code that knows.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from mmgen.config.errors import ConfigError
from mmgen.config.schema import ExperimentConfig


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"at least {low:g}"


def _positive() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v > 0), "positive"


def _share(*, upper_open: bool = False) -> tuple[Callable[[Any], bool], str]:
    if upper_open:
        return (lambda v: 0 <= v < 1), "in [0, 1)"
    return (lambda v: 0 <= v <= 1), "in [0, 1]"


# field -> (test, what the test asks for); fields left out take any value of their type
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "processes": _at_least(1),
    # world
    "world.train_documents": _at_least(1),
    "world.heldout_documents": _at_least(0),
    "world.train_caption_pairs": _at_least(0),
    "world.heldout_caption_pairs": _at_least(0),
    "world.pretrain_caption_share": _share(upper_open=True),
    "world.documents_per_shard": _at_least(1),
    "world.noise_misaligned": _share(),
    "world.noise_uninformative": _share(),
    "world.noise_near_duplicates": _share(),
    "world.concept_tail": _at_least(0),
    "world.entities": _at_least(0),
    "eval.entity_items": _at_least(0),
    "world.entity_share": _share(),
    "world.entity_zipf": _at_least(0),
    "world.entity_spell_out": _share(),
    "world.caption_shuffle": _share(),
    "world.qa_share": _share(),
    "world.qa_per_image": _at_least(1),
    "world.qa_question_first": _share(),
    # data
    "data.tokens_per_shard": _at_least(1),
    "data.encode_batch_size": _at_least(1),
    "data.cm3_rate": _share(),
    "data.cm3_image_share": _share(),
    "data.cm3_text_cue": _at_least(0),
    "data.condition_dropout": _share(),
    "data.network_timeout": _positive(),
    "data.network_retries": _at_least(0),
    "data.max_image_pixels": _at_least(1),
    "data.min_text_chars": _at_least(0),
    "data.max_text_chars": _at_least(0),
    "data.min_image_side": _at_least(0),
    "data.max_aspect_ratio": ((lambda v: v == 0 or v >= 1), "0 (no limit) or at least 1"),
    "data.max_images_per_document": _at_least(0),
    # tokenizers
    "text_tokenizer.vocab_size": _at_least(1),
    "text_tokenizer.character_coverage": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "text_tokenizer.max_sentences": _at_least(1),
    "image_tokenizer.image_size": _at_least(1),
    "image_tokenizer.downsample": _at_least(1),
    "image_tokenizer.channels": _at_least(1),
    "image_tokenizer.res_blocks": _at_least(1),
    "image_tokenizer.codebook_size": _at_least(2),
    "image_tokenizer.codebook_dim": _at_least(1),
    "image_tokenizer.commitment_weight": _at_least(0),
    "image_tokenizer.ema_decay": _share(),
    "image_tokenizer.dead_code_threshold": _at_least(0),
    "image_tokenizer.train_steps": _at_least(1),
    "image_tokenizer.max_train_seconds": _at_least(0),
    "image_tokenizer.batch_size": _at_least(1),
    "image_tokenizer.lr": _positive(),
    "image_tokenizer.latent_channels": _at_least(0),
    "image_tokenizer.norm_groups": _at_least(0),
    "image_tokenizer.l1_weight": _at_least(0),
    "image_tokenizer.l2_weight": _at_least(0),
    "image_tokenizer.perceptual_weight": _at_least(0),
    "image_tokenizer.adversarial_weight": _at_least(0),
    "image_tokenizer.gan_start_step": _at_least(0),
    "image_tokenizer.checkpoint_every": _at_least(0),
    # model
    "model.dim": _at_least(1),
    "model.n_layers": _at_least(1),
    "model.n_heads": _at_least(1),
    "model.n_kv_heads": _at_least(0),
    "model.ffn_hidden_dim": _at_least(0),
    "model.norm_eps": _positive(),
    "model.rope_theta": _positive(),
    "model.qk_norm_eps": _positive(),
    "model.dropout": _share(upper_open=True),
    "model.attention_dropout": ((lambda v: v is None or 0 <= v < 1), "none or in [0, 1)"),
    "model.init_std": _positive(),
    "model.max_seq_len": _at_least(2),
    # sampling and evaluation
    "sample.max_new_tokens": _at_least(0),
    "sample.temperature": _at_least(0),
    "sample.top_k": _at_least(0),
    "sample.top_p": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "sample.max_images": _at_least(0),
    "sample.num_samples": _at_least(1),
    "sample.checkpoint_step": _at_least(-1),
    "sample.repetition_penalty": _positive(),
    "sample.cfg_scale": _at_least(0),
    "sample.image_cfg_scale": _at_least(0),
    "sample.cdk_k": _at_least(0),
    "sample.cdk_alpha": _share(),
    "sample.retrieve": _at_least(0),
    "sample.jacobi_window": _at_least(0),
    "eval.heldout_documents": _at_least(0),
    "eval.caption_images": _at_least(0),
    "eval.caption_max_tokens": _at_least(1),
    "eval.t2i_prompts": _at_least(0),
    "eval.t2i_temperature": _at_least(0),
    "eval.t2i_top_k": _at_least(0),
    "eval.t2i_cfg_scale": _at_least(0),
    "eval.t2i_jacobi_window": _at_least(0),
    "eval.classify_images": _at_least(0),
    "eval.infill_documents": _at_least(0),
    "eval.infill_temperature": _at_least(0),
    "eval.infill_cfg_scale": _at_least(0),
    "eval.batch_size": _at_least(1),
    "eval.images_per_class": _at_least(0),
    # retrieval
    "retrieval.neighbours": _at_least(1),
    "retrieval.candidates": _at_least(1),
    "retrieval.name_documents": _at_least(1),
    "retrieval.query_dropout": _share(upper_open=True),
    "retrieval.retrieved_loss_weight": _at_least(0),
    "retrieval.encoder_width": _at_least(1),
    "retrieval.encoder_layers": _at_least(1),
    "retrieval.embed_dim": _at_least(1),
    "retrieval.encoder_steps": _at_least(1),
    "retrieval.encoder_batch_size": _at_least(2),
    "retrieval.encoder_lr": _positive(),
    "retrieval.embed_batch_size": _at_least(1),
    # curation
    "curate.clip_keep_fraction": ((lambda v: 0 < v <= 1), "in (0, 1]"),
    "curate.clip_threshold": ((lambda v: -1 <= v <= 1), "in [-1, 1]"),
    "curate.clip_threshold_documents": ((lambda v: -1 <= v <= 1), "in [-1, 1]"),
    "curate.recaption_threshold": ((lambda v: -1 <= v <= 1), "in [-1, 1]"),
    "curate.near_duplicate_similarity": _share(),
    "curate.concept_cap": _at_least(1),
    "curate.clusters": _at_least(0),
    "curate.cluster_cap": _at_least(1),
    "curate.examples": _at_least(0),
    # fine-tuning
    "sft.condition_dropout": _share(),
    "sft.train_pairs": _at_least(0),
    "sft.epochs": _positive(),
    "sft.lr": _positive(),
    "sft.warmup_steps": _at_least(0),
    "sft.from_step": _at_least(-1),
    "sft.lora_rank": _at_least(0),
    "sft.lora_alpha": _positive(),
    # torchtitan sections
    "training.local_batch_size": _at_least(1),
    "training.seq_len": _at_least(2),
    "training.steps": _at_least(1),
    "training.z_loss_weight": _at_least(0),
    "training.max_norm": _positive(),
    "optimizer.lr": _positive(),
    "optimizer.weight_decay": _at_least(0),
    "optimizer.beta1": _share(upper_open=True),
    "optimizer.beta2": _share(upper_open=True),
    "optimizer.eps": _positive(),
    "lr_scheduler.warmup_steps": _at_least(0),
    "lr_scheduler.decay_ratio": _share(),
    "lr_scheduler.min_lr_factor": _share(),
    "checkpoint.interval": _at_least(1),
    "checkpoint.keep_latest_k": ((lambda v: v == 0 or v >= 2), "0 (keep all) or at least 2"),
    "metrics.log_freq": _at_least(1),
    "metrics.peak_flops": _at_least(0),
    "parallelism.data_parallel_shard_degree": ((lambda v: v == -1 or v >= 1), "-1 (all ranks) or at least 1"),
    "parallelism.data_parallel_replicate_degree": _at_least(1),
}


def _value(cfg: ExperimentConfig, key: str) -> Any:
    obj: Any = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def _relations(cfg: ExperimentConfig) -> list[str]:
    """Rules between fields; each message names the fields and their values."""
    m, vq, d = cfg.model, cfg.image_tokenizer, cfg.data
    problems = []
    if m.dim % m.n_heads:
        problems.append(f"model.n_heads ({m.n_heads}) must divide model.dim ({m.dim})")
    elif (m.dim // m.n_heads) % 2:
        problems.append(f"model.dim / model.n_heads ({m.dim // m.n_heads}) must be even (RoPE rotates pairs)")
    if m.n_kv_heads and m.n_heads % m.n_kv_heads:
        problems.append(f"model.n_kv_heads ({m.n_kv_heads}) must divide model.n_heads ({m.n_heads})")
    if cfg.training.seq_len > m.max_seq_len:
        problems.append(f"training.seq_len ({cfg.training.seq_len}) exceeds model.max_seq_len ({m.max_seq_len})")
    if vq.quantizer == "fsq" and math.prod(vq.fsq_levels) != vq.codebook_size:
        problems.append(f"the product of image_tokenizer.fsq_levels {tuple(vq.fsq_levels)} must equal "
                        f"image_tokenizer.codebook_size ({vq.codebook_size})")
    if any(w < 0 for w in d.train_weights) or (d.train_weights and not sum(d.train_weights) > 0):
        problems.append(f"data.train_weights must be non-negative with a positive sum, got {list(d.train_weights)}")
    w = cfg.world
    if w.noise_misaligned + w.noise_uninformative + w.noise_near_duplicates > 1:
        problems.append(f"world.noise_misaligned + world.noise_uninformative + world.noise_near_duplicates must be at most 1, "
                        f"got {w.noise_misaligned + w.noise_uninformative + w.noise_near_duplicates:g}")
    if d.max_text_chars and d.max_text_chars < d.min_text_chars:
        problems.append(f"data.max_text_chars ({d.max_text_chars}) is below data.min_text_chars ({d.min_text_chars})")
    return problems


def validate_config(cfg: ExperimentConfig) -> None:
    """Raise ConfigError naming the first field out of range, or the first broken rule between fields."""
    for key, (ok, wanted) in _RULES.items():
        value = _value(cfg, key)
        if isinstance(value, float) and math.isnan(value) or not ok(value):
            raise ConfigError(f"{key} must be {wanted}, got {value!r}")
    problems = _relations(cfg)
    if problems:
        raise ConfigError(problems[0])
