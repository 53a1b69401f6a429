"""Built-in experiment configs, chosen with ``--config NAME``.

``demo`` is the README's CPU pipeline (about 15 minutes on 2 cores); ``debug``
is the smallest config that still passes through every stage, for tests.
"""

from __future__ import annotations

from mmgen.config.schema import ExperimentConfig


def demo() -> ExperimentConfig:
    cfg = ExperimentConfig(name="demo")
    # one residual block per level: the VQGAN layout's mid block and extra decoder block cost what a second did
    cfg.image_tokenizer.res_blocks = 1
    cfg.world.train_documents = 6000
    # CM3 infilling and the unconditional stream of CFG are learnt in pretraining, as in CM3leon
    cfg.data.cm3_rate = 0.25
    cfg.data.condition_dropout = 0.1
    return cfg


def debug() -> ExperimentConfig:
    cfg = ExperimentConfig(name="debug")
    cfg.world.train_documents = 120
    cfg.world.heldout_documents = 16
    cfg.world.train_caption_pairs = 40
    cfg.world.heldout_caption_pairs = 8
    cfg.world.documents_per_shard = 50
    cfg.text_tokenizer.vocab_size = 384
    cfg.image_tokenizer.channels = 32
    cfg.image_tokenizer.res_blocks = 1
    cfg.image_tokenizer.codebook_size = 64
    cfg.image_tokenizer.codebook_dim = 8
    cfg.image_tokenizer.train_steps = 30
    cfg.image_tokenizer.batch_size = 16
    cfg.image_tokenizer.max_train_seconds = 60
    cfg.image_tokenizer.precision = "float32"  # bf16 convolutions this narrow run slower than fp32 on CPUs
    cfg.model.dim = 64
    cfg.model.n_layers = 2
    cfg.model.n_heads = 2
    cfg.model.max_seq_len = 512
    cfg.training.local_batch_size = 2
    cfg.training.seq_len = 256
    cfg.training.steps = 6
    cfg.lr_scheduler.warmup_steps = 2
    cfg.checkpoint.interval = 3
    cfg.metrics.log_freq = 1
    cfg.sample.max_new_tokens = 90
    return cfg


BUILTIN = {"demo": demo, "debug": debug}
