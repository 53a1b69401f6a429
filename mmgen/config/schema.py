"""The experiment config: one dataclass tree shared by every stage and CLI.

Each component owns one section, and the string under each field is its
documentation (``--help`` prints it). The trainer sections (``training``,
``optimizer``, ``lr_scheduler``, ``checkpoint``, ``metrics``, ``parallelism``,
``activation_checkpoint``, ``compile``) use torchtitan's own section and field
names; ``mmgen.train`` copies them onto torchtitan's ``Trainer.Config`` so a
torchtitan override such as ``--training.steps 7`` means the same thing here.
They live in this torch-only module so every other stage can load the config
without torchtitan installed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class WorldConfig:
    seed: int = 0
    """Seed of the shapes-world generator; the same seed writes the same corpus."""
    image_size: int = 32
    """Side of each square shapes-world image, in pixels."""
    train_documents: int = 3000
    """Interleaved documents in the training split."""
    heldout_documents: int = 200
    """Interleaved documents in the held-out split."""
    train_caption_pairs: int = 2000
    """Caption pairs (image, caption) in the training split."""
    heldout_caption_pairs: int = 200
    """Caption pairs in the held-out split."""
    documents_per_shard: int = 1000
    """Documents per OBELICS parquet shard."""
    max_images_per_document: int = 2
    """Upper bound on images in one interleaved document."""
    max_shapes_per_image: int = 3
    """Upper bound on shapes drawn in one image (at least one is drawn)."""


@dataclass
class DataConfig:
    train_corpus: str = ""
    """OBELICS parquet shards for training: a file, folder or glob, any fsspec URL. Empty: the run's shapes world."""
    heldout_corpus: str = ""
    """OBELICS parquet shards held out for evaluation. Empty: the run's shapes world held-out split."""
    tokens_per_shard: int = 2_000_000
    """Upper bound on tokens in one pretokenized token shard."""
    encode_batch_size: int = 64
    """Images encoded by the VQ-VAE per batch during pretokenization."""
    shuffle_seed: int = 0
    """Seed of the document order in the packing data loader."""


@dataclass
class TextTokenizerConfig:
    vocab_size: int = 512
    """SentencePiece vocabulary size (text pieces only; special tokens and image codes come on top)."""
    model_type: Literal["bpe", "unigram"] = "bpe"
    """SentencePiece model type."""
    character_coverage: float = 1.0
    """Share of characters covered by pieces; the rest falls back to bytes."""
    byte_fallback: bool = True
    """Encode characters outside the vocabulary as byte pieces, so no text is ever unknown."""
    max_sentences: int = 200_000
    """Upper bound on text passages read to train the tokenizer."""


@dataclass
class ImageTokenizerConfig:
    image_size: int = 32
    """Images are resized to this square side before tokenization."""
    downsample: int = 4
    """Pixels per code along each side; the code grid is (image_size / downsample)²."""
    channels: int = 128
    """Channels of the widest encoder/decoder stage."""
    res_blocks: int = 2
    """Residual blocks per resolution stage."""
    codebook_size: int = 512
    """Entries of the VQ codebook (image codes in the vocabulary)."""
    codebook_dim: int = 32
    """Dimension of the codebook lookup space (low-dimensional lookup fights collapse)."""
    commitment_weight: float = 0.25
    """Weight of the commitment loss."""
    ema_decay: float = 0.9
    """EMA decay of codebook updates."""
    dead_code_threshold: float = 2.0
    """Codes used fewer times than this per batch (EMA) are restarted from the batch."""
    train_steps: int = 3000
    """Optimisation steps of VQ-VAE training (stops earlier at max_train_seconds)."""
    max_train_seconds: float = 240.0
    """Wall-clock budget of VQ-VAE training; 0 means no limit."""
    batch_size: int = 64
    """Images per VQ-VAE training batch."""
    lr: float = 2e-3
    """Peak learning rate of VQ-VAE training."""
    seed: int = 0
    """Seed of VQ-VAE initialisation and batch order."""


@dataclass
class ModelConfig:
    dim: int = 256
    """Width of the residual stream."""
    n_layers: int = 4
    """Transformer blocks."""
    n_heads: int = 4
    """Attention heads."""
    n_kv_heads: int = 0
    """Key/value heads for grouped-query attention; 0 means n_heads."""
    ffn_hidden_dim: int = 0
    """SwiGLU hidden width; 0 means 8/3·dim rounded up to a multiple of 64."""
    norm_eps: float = 1e-5
    """Epsilon of RMSNorm and QK LayerNorm."""
    rope_theta: float = 10000.0
    """RoPE base."""
    qk_norm: bool = True
    """LayerNorm over head_dim on q and k before RoPE (Chameleon)."""
    norm_placement: Literal["pre", "swin"] = "pre"
    """'pre': x + attn(norm(x)); 'swin': x + norm(attn(x)) (Chameleon-34B)."""
    dropout: float = 0.0
    """Dropout on attention and residual branches during training."""
    z_loss_weight: float = 1e-5
    """Weight of the z-loss logsumexp(logits)² that keeps logits from drifting."""
    tie_embeddings: bool = False
    """Share the token embedding with the output head (Chameleon unties them)."""
    init_std: float = 0.02
    """Std of normal init of embeddings and projections; output projections are scaled by 1/sqrt(2·n_layers)."""
    attention_backend: Literal["sdpa", "flex"] = "sdpa"
    """Attention kernel: SDPA (any device) or FlexAttention (GPU)."""
    max_seq_len: int = 1024
    """Longest sequence the model attends over (training packs and generation caches)."""


@dataclass
class SampleConfig:
    prompt: str = "a red circle"
    """Text the sample starts from."""
    max_new_tokens: int = 200
    """Tokens sampled after the prompt (an image counts as h·w+2)."""
    temperature: float = 0.9
    """Softmax temperature; 0 means greedy."""
    top_k: int = 0
    """Keep only the k most likely tokens; 0 keeps all."""
    top_p: float = 1.0
    """Nucleus sampling mass; 1 keeps all."""
    max_images: int = 2
    """Images at most in one sampled document."""
    force_image: bool = True
    """Open an image right after the prompt, so every sample shows one."""
    seed: int = 0
    """Seed of sampling."""
    num_samples: int = 1
    """Documents sampled from the prompt."""
    checkpoint_step: int = -1
    """Pretraining checkpoint step to load; -1 means the latest."""


@dataclass
class RetrievalConfig:
    enable: bool = False
    """Prefix each training document with retrieved neighbours (CM3leon); needs retrieval/build_index.py."""
    neighbours: int = 2
    """Retrieved documents per training document."""
    candidates: int = 32
    """Nearest candidates examined per query before filtering."""
    max_similarity: float = 0.95
    """Skip candidates more similar than this to the query or to an already chosen neighbour."""
    query_dropout: float = 0.2
    """Share of the query's tokens hidden when embedding it for retrieval."""
    retrieved_loss_weight: float = 0.5
    """Loss weight of the retrieved part of a training sequence (the main document has weight 1)."""
    index_kind: Literal["flat", "ivfpq", "hnsw"] = "flat"
    """FAISS index: exact for small banks, IVF-PQ or HNSW for large ones."""
    encoder_width: int = 128
    """Width of each tower of the dual encoder."""
    encoder_layers: int = 2
    """Transformer layers of each tower."""
    embed_dim: int = 64
    """Dimension of the joint embedding space."""
    encoder_steps: int = 600
    """Contrastive training steps of the dual encoder."""
    encoder_batch_size: int = 128
    """Image-text pairs per training batch (the sigmoid loss suits small batches)."""
    encoder_lr: float = 1e-3
    """Peak learning rate of the dual encoder."""
    seed: int = 0
    """Seed of encoder training and query dropout."""

# ----- torchtitan trainer sections (names as in torchtitan's Trainer.Config) -----


@dataclass
class TrainingConfig:
    local_batch_size: int = 8
    """Packed sequences per data-parallel rank per step."""
    seq_len: int = 512
    """Tokens per packed sequence."""
    steps: int = 300
    """Optimisation steps."""
    max_norm: float = 1.0
    """Gradient-norm clipping."""
    mixed_precision_param: Literal["bfloat16", "float32", "auto"] = "auto"
    """FSDP2 compute dtype; 'auto' picks bfloat16 where the CPU or GPU supports it."""
    mixed_precision_reduce: Literal["float32"] = "float32"
    """FSDP2 gradient-reduction dtype."""


@dataclass
class OptimizerConfig:
    name: Literal["AdamW", "Adam"] = "AdamW"
    """Optimizer."""
    lr: float = 3e-3
    """Peak learning rate."""
    weight_decay: float = 0.1
    """Decoupled weight decay."""
    beta1: float = 0.9
    """Adam beta1."""
    beta2: float = 0.95
    """Adam beta2."""
    eps: float = 1e-8
    """Adam epsilon."""


@dataclass
class LRSchedulerConfig:
    warmup_steps: int = 30
    """Linear warm-up steps."""
    decay_ratio: float = 0.8
    """Share of steps spent decaying at the end; the rest after warm-up is flat."""
    decay_type: Literal["linear", "sqrt", "cosine"] = "cosine"
    """Shape of the decay."""
    min_lr_factor: float = 0.1
    """Learning rate at the end, as a share of the peak."""


@dataclass
class CheckpointConfig:
    enable: bool = True
    """Save DCP checkpoints (model, optimizer, scheduler, data loader) during pretraining."""
    folder: str = "checkpoint"
    """Checkpoint folder inside the pretraining output folder."""
    interval: int = 100
    """Steps between checkpoints; the last step is always saved."""
    keep_latest_k: int = 3
    """Checkpoints kept on disk (0 keeps all)."""


@dataclass
class MetricsConfig:
    log_freq: int = 10
    """Steps between logged metrics (console, TensorBoard, loss log)."""
    enable_tensorboard: bool = True
    """Write TensorBoard event files."""
    save_tb_folder: str = "tb"
    """TensorBoard folder inside the pretraining output folder."""


@dataclass
class ParallelismConfig:
    data_parallel_shard_degree: int = -1
    """FSDP2 shard degree; -1 means all ranks."""
    data_parallel_replicate_degree: int = 1
    """HSDP replicate degree."""
    fsdp_reshard_after_forward: Literal["default", "always", "never"] = "default"
    """Free gathered parameters after forward."""


@dataclass
class ActivationCheckpointConfig:
    mode: Literal["none", "full"] = "none"
    """Activation checkpointing per transformer block."""


@dataclass
class CompileConfig:
    enable: bool = False
    """torch.compile each transformer block and the loss."""


@dataclass
class ExperimentConfig:
    name: str = "demo"
    """Name of the experiment; the default output folder is outputs/<name>."""
    output_dir: str = ""
    """Folder every stage reads from and writes to; empty means outputs/<name>."""
    seed: int = 0
    """Global seed of model initialisation and training."""
    processes: int = 2
    """Training processes `python train/pretrain.py` starts on this machine when not launched by torchrun."""
    world: WorldConfig = field(default_factory=WorldConfig)
    data: DataConfig = field(default_factory=DataConfig)
    text_tokenizer: TextTokenizerConfig = field(default_factory=TextTokenizerConfig)
    image_tokenizer: ImageTokenizerConfig = field(default_factory=ImageTokenizerConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_scheduler: LRSchedulerConfig = field(default_factory=LRSchedulerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    activation_checkpoint: ActivationCheckpointConfig = field(default_factory=ActivationCheckpointConfig)
    compile: CompileConfig = field(default_factory=CompileConfig)

    @property
    def run_dir(self) -> str:
        return self.output_dir or f"outputs/{self.name}"
