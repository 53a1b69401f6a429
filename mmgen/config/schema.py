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

from dataclasses import dataclass, field, fields
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
    """Caption pairs in the held-out split; the validation split gets as many (SFT prompts for choosing settings)."""
    pretrain_caption_share: float = 0.0
    """Share of pretraining tokens drawn from the training caption pairs (as CM3leon and Chameleon mix image-caption pairs into pretraining) when data.train_corpus is empty; 0: the interleaved documents only."""
    documents_per_shard: int = 1000
    """Documents per OBELICS parquet shard."""
    max_images_per_document: int = 2
    """Upper bound on images in one interleaved document."""
    max_shapes_per_image: int = 3
    """Upper bound on shapes drawn in one image (at least one is drawn)."""
    noise_misaligned: float = 0.0
    """Web-like noise (mmgen/data/world_noise.py), training split only: share of caption pairs, and of images in documents, whose text describes another scene (alt text that does not match its image)."""
    noise_uninformative: float = 0.0
    """Training split only: share of caption pairs, and of images in documents, whose describing text is uninformative ('IMG_0042.jpg', 'click here')."""
    noise_near_duplicates: float = 0.0
    """Training split only: share of caption pairs that repeat an earlier pair's scene with a few pixels changed."""
    concept_tail: float = 0.0
    """Training split only: Zipf exponent of the 18 shape/colour combinations (the k-th most common drawn in proportion to 1/k^concept_tail); 0: uniform."""
    entities: int = 0
    """Named entities of the world (made-up names, each a fixed look of 1-2 shapes; mmgen/data/entities.py); 0: none. With entities the world also writes a memory-bank corpus defining every one (corpus/bank/) and corpus/entities.json."""
    entity_share: float = 0.3
    """Share of documents and caption pairs (train and held-out) that use an entity by name, when there are entities."""
    entity_zipf: float = 1.1
    """Long-tail exponent: the entity of rank r is used with probability proportional to r^-entity_zipf."""
    entity_spell_out: float = 0.0
    """Share of entity documents that spell out, after each sentence naming the entity, what its image shows in the world's own words ("Here is a drawing. Draw a Zorbel at the top, on a white background. It is a large green triangle at the top and a small red circle in the center, on a white background."): the step from name to look that a model can copy from a retrieved definition before it draws (eval.entity_describe_first); 0: none, every use by name only."""
    caption_shuffle: float = 0.0
    """Training split only: share of the captions of scenes with several shapes that list the shapes in a random order instead of reading order (mmgen/data/caption_order.py), so a caption's later words must find the object its earlier words named; 0: every caption in reading order."""
    qa_share: float = 0.0
    """Training split only: share of document images shown before any text describes them that get questions and answers about them, in the SFT VQA task's words (mmgen/data/world_questions.py); 0: none."""
    qa_per_image: int = 2
    """Questions asked about each such image (fewer when its scene allows fewer)."""
    qa_question_first: float = 1.0
    """Of those images, the share whose first question comes before the image, in the SFT prompt's order (question, image, answer); the other questions follow the image."""


LOADER_FIELD = {"read_by": "loader"}
"""Metadata of the DataConfig fields that act when the loader reads token shards, not when encode writes them."""


@dataclass
class DataConfig:
    """How corpora are read (the reading policy, fixed at encode) and how token shards are loaded.

    Every field is part of the reading policy unless its metadata is ``LOADER_FIELD``: encode fingerprints the
    whole policy, so a new reading field can never silently reuse shards written under another value.
    """

    train_corpus: str = ""
    """Training corpus (see corpus_kind): a file, folder or glob, any fsspec URL; several, comma-separated, are mixed by train_weights. Empty: the run's shapes world."""
    heldout_corpus: str = ""
    """Corpus held out for evaluation, like train_corpus. Empty: the run's shapes world held-out split."""
    tokens_per_shard: int = 2_000_000
    """Upper bound on tokens in one pretokenized token shard."""
    encode_batch_size: int = 64
    """Images encoded by the VQ-VAE per batch during pretokenization."""
    shuffle_seed: int = field(default=0, metadata=LOADER_FIELD)
    """Seed of the document order in the packing data loader."""
    cm3_rate: float = field(default=0.0, metadata=LOADER_FIELD)
    """Share of pretraining documents in CM3's causal-masked form (a span moved to the end behind a sentinel)."""
    cm3_image_share: float = field(default=0.5, metadata=LOADER_FIELD)
    """Of CM3-masked documents, the share whose masked span is a whole image (the rest mask a text span)."""
    cm3_text_cue: int = field(default=0, metadata=LOADER_FIELD)
    """Text CM3 spans: repeat up to this many text tokens from just before the hole after the closing sentinel, so the moved span continues its own left context (mmgen/data/objectives.py); 0: CM3's form. Infilling prompts use the same cue."""
    condition_dropout: float = field(default=0.0, metadata=LOADER_FIELD)
    """Share of pretraining documents whose text before one image is removed (trains the unconditional stream of CFG)."""
    corpus_kind: Literal["auto", "obelics", "mmc4", "captions", "imagefolder"] = "auto"
    """Format of the corpora: OBELICS parquet, MMC4 jsonl(.zip), caption-pair jsonl, or an ImageFolder; 'auto' tells them apart from file names and the first record."""
    train_weights: list[float] = field(default_factory=list, metadata=LOADER_FIELD)
    """With several comma-separated train_corpus URLs: each one's share of training tokens (normalised). Empty: in proportion to their sizes."""
    allow_network: bool = False
    """Fetch images given as http(s) URLs (OBELICS images, MMC4 raw_url); off means such images count as missing."""
    network_timeout: float = 10.0
    """Seconds before one image download attempt is abandoned."""
    network_retries: int = 2
    """Further attempts after a failed image download (exponential back-off from 0.5 s)."""
    image_root: str = ""
    """Folder (any fsspec URL) that relative image paths resolve against; empty: the folder of the shard that names them."""
    missing_image: Literal["skip_document", "drop_image"] = "skip_document"
    """A missing or undecodable image skips its whole document, or only drops that image (counted either way)."""
    max_image_pixels: int = 40_000_000
    """Decompression-bomb limit: images with more pixels (read from the header) are not decoded."""
    image_resize: Literal["stretch", "center_crop", "pad"] = "stretch"
    """How a non-square image becomes the tokenizer's square: stretch it, keep the central square, or pad onto white."""
    caption_template: str = "a photo of a {label}"
    """Caption of an ImageFolder image; {label} is its class folder name (underscores read as spaces)."""
    caption_order: Literal["both", "text_first", "image_first"] = "both"
    """Order of caption and image in caption-pair and ImageFolder documents; 'both': alternating by row, so a model learns label given image as well as image given label."""
    min_text_chars: int = 0
    """Documents with fewer text characters are skipped ('text_too_short')."""
    max_text_chars: int = 0
    """Documents with more text characters are skipped ('text_too_long'); 0 means no limit."""
    min_image_side: int = 0
    """Images whose shorter side is below this many pixels are dropped from their document ('image_too_small')."""
    max_aspect_ratio: float = 0.0
    """Images whose long/short side ratio exceeds this are dropped ('bad_aspect_ratio'); 0 means no limit."""
    max_images_per_document: int = 0
    """Documents with more images are skipped ('too_many_images'); 0 means no limit."""
    dedup_documents: bool = True
    """Skip exact duplicate documents (same texts and image bytes) within a shard, and across shards when encoding."""
    dedup_images: bool = True
    """Drop an image whose bytes already appeared in the same shard ('duplicate_image')."""


def reading_policy(data: DataConfig) -> dict:
    """The fields of ``data`` that change what encode writes (all but the loader's)."""
    return {f.name: getattr(data, f.name) for f in fields(data) if f.metadata != LOADER_FIELD}


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
    """Residual blocks per resolution stage (with encoder 'patch': the encoder's per-position MLP blocks)."""
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
    """Optimisation steps of VQ-VAE training (the budget: results do not depend on how busy the machine is)."""
    max_train_seconds: float = 0.0
    """Optional wall-clock cap of VQ-VAE training; 0 means none. A cap makes the tokenizer depend on machine load."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN or inf loss or gradient: stop with one error line, or skip the step (its codebook update undone)."""
    batch_size: int = 64
    """Images per VQ-VAE training batch."""
    lr: float = 2e-3
    """Peak learning rate of VQ-VAE training."""
    seed: int = 0
    """Seed of VQ-VAE initialisation and batch order."""
    channel_multipliers: tuple[int, ...] = ()
    """Stage widths relative to the widest (channels), finest first; len = log2(downsample) + 1 (Chameleon: 1,1,2,2,4).
    Empty: each finer stage halves, down to 16 channels."""
    latent_channels: int = 0
    """Channels of the encoder output and decoder input around quant_conv / post_quant_conv; 0 means channels."""
    attention_at_lowest: bool = False
    """Self-attention in the middle block at the code-grid resolution (VQGAN and Chameleon have it)."""
    norm_groups: int = 0
    """GroupNorm groups; 0: VQGAN's 32, fewer on narrow stages so each group keeps at least 4 channels."""
    attention_resolutions: tuple[int, ...] = ()
    """Feature-map sides at which each residual block is followed by self-attention (VQGAN's attn_resolutions)."""
    encoder: Literal["vqgan", "patch"] = "vqgan"
    """'vqgan': convolutions over the whole image (Chameleon's layout; a code sees far pixels and image-wide
    GroupNorm statistics); 'patch': each code is a function of its own downsample × downsample patch alone
    (a patch embedding, then res_blocks per-position MLP blocks), so equal patches always get equal codes."""
    quantizer: Literal["vq", "fsq"] = "vq"
    """'vq': a learned codebook (VectorQuantize); 'fsq': finite scalar quantization, nothing to collapse."""
    fsq_levels: tuple[int, ...] = (8, 8, 8)
    """Levels per latent dimension of FSQ; their product must equal codebook_size."""
    cosine_lookup: bool = False
    """Pick the nearest code by cosine similarity of l2-normalised vectors instead of Euclidean distance."""
    kmeans_init: bool = True
    """Initialise the codebook by k-means on the first batch (against dead codes from the start)."""
    l1_weight: float = 1.0
    """Weight of the L1 reconstruction loss (keeps flat regions and hard edges crisp)."""
    l2_weight: float = 1.0
    """Weight of the L2 (MSE) reconstruction loss (what PSNR measures)."""
    perceptual_weight: float = 0.0
    """Weight of the LPIPS-style perceptual loss; needs perceptual_weights (never downloaded)."""
    perceptual_weights: str = ""
    """Local safetensors file with VGG16 features (torchvision key names), optionally LPIPS's lin<k>.weight."""
    adversarial_weight: float = 0.0
    """Weight of the PatchGAN hinge loss on the decoder; 0 leaves the discriminator out."""
    gan_start_step: int = 0
    """Step from which the discriminator trains and its loss counts (reconstruction warms up first)."""
    resize: Literal["stretch", "center_crop"] = "stretch"
    """How an image of another size is fitted: stretched to the square, or (Chameleon's preprocessing) its shorter
    side scaled to image_size (Lanczos) and the centre cropped, transparent pixels on white."""
    precision: Literal["auto", "float32", "bfloat16"] = "auto"
    """Compute dtype of encoder and decoder; 'auto' is bf16 where the hardware computes it natively. The quantizer is always float32."""
    checkpoint_every: int = 500
    """Training steps between resumable checkpoints (safetensors) in the output folder; 0 saves none."""


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
    """Epsilon of RMSNorm."""
    rope_theta: float = 10000.0
    """RoPE base."""
    qk_norm: bool = True
    """LayerNorm over head_dim on q and k before RoPE (Chameleon)."""
    qk_norm_eps: float = 1e-5
    """Epsilon of the QK LayerNorm (Hugging Face Chameleon fixes it at 1e-5 whatever rms_norm_eps is)."""
    norm_placement: Literal["pre", "swin"] = "pre"
    """'pre': x + attn(norm(x)); 'swin': x + norm(attn(x)) (Chameleon-34B)."""
    dropout: float = 0.0
    """Dropout on attention and residual branches during training."""
    attention_dropout: float | None = None
    """Dropout on attention probabilities (SDPA backend only); None means ``dropout``. Hugging Face Chameleon has only this one."""
    tie_embeddings: bool = False
    """Share the token embedding with the output head (Chameleon unties them)."""
    init_std: float = 0.02
    """Std of normal init of embeddings and projections; output projections are scaled by 1/sqrt(2·n_layers)."""
    attention_backend: Literal["sdpa", "flex"] = "sdpa"
    """Attention kernel: SDPA (any device) or FlexAttention (GPU)."""
    max_seq_len: int = 1024
    """Longest sequence the model attends over (training packs and generation caches)."""
    image_grid_embedding: bool = False
    """Add a learnt row and a learnt column embedding to each image code (its place in the code grid), on top of
    RoPE's 1-D positions; off in Chameleon."""
    image_layout: tuple[int, int, int] = (-1, 0, 0)
    """(BOI id, grid rows, grid columns) of the vocabulary the model trains on; set by the trainer when
    ``image_grid_embedding`` is on, and kept in the model's description."""

    def __post_init__(self) -> None:
        # a model.json read back gives a list; configs compare equal to the ones they were saved from
        self.image_layout = tuple(int(v) for v in self.image_layout)


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
    repetition_penalty: float = 1.0
    """CTRL repetition penalty on text tokens already in the prompt or sample; 1 turns it off."""
    cfg_scale: float = 0.0
    """Classifier-free guidance scale of image codes (conditional vs unconditional stream); 0 turns it off."""
    image_cfg_scale: float = 0.0
    """Scale of Chameleon's image-only stream (the prompt's images without its text); 0 leaves the stream out."""
    cdk_k: int = 0
    """CM3leon contrastive-decoding top-k for image codes (expert: guided stream, amateur: unconditional); 0 off."""
    cdk_alpha: float = 0.1
    """CD-K plausibility: keep codes with p >= alpha · (k-th largest p)."""
    compile: bool = False
    """torch.compile the whole decode step (model, modality mask, guidance, draw) as one graph, on a CPU with the weights frozen into it (laid out once for the matrix kernels); with Jacobi decoding the model's forward alone. The first call compiles (minutes on a CPU)."""
    jacobi_window: int = 0
    """Speculative Jacobi decoding: image codes guessed this far ahead and checked in the same forward pass, which keeps the sampling distribution exact (greedy: the same tokens) in fewer passes; 0 off."""
    dtype: Literal["float32", "bfloat16", "auto"] = "float32"
    """Dtype the decoder samples in; 'auto' is bf16 where the hardware computes it natively (on such a CPU the compiled step decodes the demo's decoder about 2x faster at batch 8 than in float32 (6,693 against 3,401 tokens per CPU-second on a 2-core EPYC): docs/BENCHMARKS.md), at bf16's rounding."""
    prompt_sep: bool = False
    """End the prompt with the separator token, as Chameleon's processor does in chat mode (instruction-tuned checkpoints)."""
    prompt_images: str = ""
    """Comma-separated image files (any fsspec URL) placed after the prompt text, in order."""
    context: str = ""
    """Retrieved context put before the prompt as ``BOS r1 SEP r2 SEP prompt`` (CM3leon): passages separated by '|'."""
    retrieve: int = 0
    """Documents retrieved from the run's memory bank for the prompt and put before it (after training's rules); 0: none."""


@dataclass
class EvalConfig:
    heldout_documents: int = 100
    """Held-out token-shard documents scored for text/image bits per token (0: all); with split 'validation', as many of the world's validation documents."""
    split: Literal["heldout", "validation"] = "heldout"
    """Scenes the shapes-world measurements use: 'validation' while choosing settings, 'heldout' for reported figures."""
    caption_images: int = 300
    """Held-out scenes (rendered like the corpus) captioned for caption_accuracy."""
    caption_prompt: str = "Look at this picture."
    """Text before the image in a captioning prompt."""
    caption_lead: str = "It shows"
    """Text after the image that the caption continues (the parser reads lead + caption)."""
    caption_max_tokens: int = 48
    """Tokens sampled per caption."""
    t2i_prompts: int = 300
    """Held-out scenes drawn for t2i_accuracy."""
    t2i_template: str = "Here is a drawing. Draw {caption}."
    """Text-to-image prompt; {caption} is the held-out scene's canonical caption."""
    t2i_temperature: float = 0.7
    """Temperature of image sampling in the report."""
    t2i_top_k: int = 0
    """Top-k of image sampling in the report; 0 keeps all."""
    t2i_cfg_scale: float = 2.0
    """Classifier-free guidance scale of image sampling in the report; 0 turns it off (the demo preset sets the scale chosen on validation)."""
    t2i_jacobi_window: int = 0
    """Speculative Jacobi decoding of the report's and the SFT comparison's images (see sample.jacobi_window); 0 off."""
    classify_images: int = 300
    """Held-out single-shape images classified by shape and by colour."""
    classify_prompt: str = "Here is a drawing of {caption}."
    """Prompt of log p(image | label); {caption} is the image's caption with the label in place."""
    classify_lead: str = "Look at this picture."
    """Text before the image in log p(label | image)."""
    classify_follow: str = "It shows {caption}."
    """Text after the image in log p(label | image); the tokens after the labels' common prefix are scored."""
    infill_documents: int = 300
    """Held-out documents per infilling test (one image and one text span each); run when data.cm3_rate > 0, 0 skips."""
    infill_temperature: float = 0.7
    """Temperature of the image infills (text spans are infilled greedily); 0 means greedy."""
    infill_cfg_scale: float = 0.0
    """Classifier-free guidance scale of the image infills (the document around the hole against no text); 0 turns it off."""
    entity_describe_first: bool = False
    """Entity text-to-image prompts end after the request: the model writes greedily what it will draw, then its image is sampled after those words (a world with world.entity_spell_out teaches this); an item without an image within caption_max_tokens words is wrong. False: the prompt opens the image."""
    entity_items: int = 100
    """In a world with entities: items per group (head, tail) of the knowledge measurements (text-to-image, captioning) and the retriever's recall; 0: all."""
    curve_items: int = 100
    """Scenes (and held-out documents) each kept pretraining checkpoint is scored on for the learning curve; 0: no curve."""
    sft_prompts: int = 300
    """eval/compare_sft.py: held-out SFT prompts scored per task (captioning, VQA, text-to-image)."""
    sft_cfg_scales: list[float] = field(default_factory=lambda: [1.0, 1.5, 3.0])
    """eval/compare_sft.py: guidance scales of text-to-image (1 means unguided)."""
    calibrate: bool = False
    """Subtract the unconditional likelihood (label prior in label|image, image prior in image|label)."""
    batch_size: int = 32
    """Sequences per forward pass when scoring."""
    seed: int = 0
    """Seed of the report's sampling and chance baselines."""
    image_folder: str = ""
    """eval/classify.py: ImageFolder root (one subfolder per class); empty: held-out shapes by shape and colour."""
    template: str = "Here is a drawing of a {label}."
    """eval/classify.py: prompt with {label} for ImageFolder classification."""
    images_per_class: int = 0
    """eval/classify.py: ImageFolder images read per class; 0 reads all."""



@dataclass
class RetrievalConfig:
    enable: bool = False
    """Prefix each training document with retrieved neighbours (CM3leon); needs retrieval/build_index.py."""
    neighbours: int = 2
    """Retrieved documents per training document."""
    retriever: Literal["hybrid", "dense"] = "hybrid"
    """'hybrid': first the bank-corpus documents a query names (whole words rare in the bank, a BM25 stage; mmgen/retrieval/name_lookup.py), then the dual encoder's nearest; 'dense': the dual encoder alone. Without a bank corpus both are the same."""
    name_documents: int = 2
    """hybrid: a name (a word a bank-corpus document capitalises inside a sentence) keys the bank-corpus documents that hold it when at most this many of them do."""
    candidates: int = 32
    """Nearest candidates examined per query before filtering."""
    max_similarity: float = 0.95
    """Skip candidates more similar than this to the query or to an already chosen neighbour."""
    centred_similarity: bool = True
    """Measure max_similarity's cosine around the bank's mean embedding (robust to a weak encoder's narrow cone)."""
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
    embed_batch_size: int = 256
    """Documents embedded per batch by retrieval/build_index.py; under torchrun each rank takes whole batches."""
    bank_define: str = ""
    """retrieval/edit_bank.py: jsonl of entity definitions ({"name", "parts": [{"shape", "color", "size"}], "layout"}); a name the bank defines has its definition replaced, a new one is added."""
    bank_add: str = ""
    """retrieval/edit_bank.py: a corpus (OBELICS, MMC4, caption pairs, ImageFolder; any fsspec URL) whose documents are added to the memory bank."""


@dataclass
class CurateConfig:
    input: str = ""
    """data/curate.py: corpus to curate (file, folder or glob; its kind from data.corpus_kind, read under the data.* filters and dedup); empty: the run's shapes-world training caption pairs."""
    output: str = ""
    """Folder the curated corpus is written to, in the input's format; empty: <run>/curated."""
    encoder: str = ""
    """Dual-encoder folder that scores image-text alignment (retrieval/train_encoder.py); empty: the run's retrieval/encoder."""
    clip_filter: Literal["off", "threshold", "top_fraction"] = "threshold"
    """CLIP-score filter: keep images whose cosine with their text is at least clip_threshold, or the best clip_keep_fraction (DataComp)."""
    clip_threshold: float = 0.7
    """Cosine an image needs with its best-matching sentence under clip_filter 'threshold' (0.7 kept 96 % of clean and removed 94 % of misaligned pairs of a noisy shapes world, docs/BENCHMARKS.md)."""
    clip_threshold_documents: float = 0.64
    """clip_threshold for the images of interleaved documents (OBELICS, MMC4), scored against their document's best-matching sentence: narration matches an image less well than a caption does, so 0.7 removed 35 % of a noisy shapes world's clean document images; 0.64 keeps 82 % of them and removes 86 % of the misaligned and uninformative ones (the best sum of the two on that world's training split, docs/BENCHMARKS.md)."""
    clip_keep_fraction: float = 0.7
    """Share of scored images kept under clip_filter 'top_fraction'."""
    near_duplicate_similarity: float = 0.0
    """Drop an image whose embedding has at least this cosine with an earlier kept image (near duplicates); 0: off."""
    assign_images: bool = True
    """Place images that arrive without a sentence (MMC4 image_info without matched_text_index) by embedding similarity."""
    recaption: bool = False
    """CapFilt: caption the images of pairs the CLIP filter removed with the run's decoder (curate.captioner), and keep a new caption that scores at least recaption_threshold."""
    captioner: str = ""
    """Decoder that recaptions: empty for the run's pretrained one (asked with eval.caption_prompt), or a fine-tuning folder of the run (e.g. 'sft'), asked as its SFT caption task; BLIP's CapFilt captions with a model fine-tuned on clean captions."""
    recaption_threshold: float = 0.82
    """Cosine a generated caption needs with its image to be kept: stricter than clip_threshold, since a model's near-miss caption scores far higher than unrelated alt text (at 0.7 a weak decoder's accepted captions were 9 % right; 0.82, the best F1 of right captions on a noisy shapes world's training split, kept 80 % of the right ones and 4.6 % of the wrong ones; docs/BENCHMARKS.md)."""
    concepts: str = ""
    """Concept balancing (MetaCLIP): a file of one concept per line, or 'world' (the shapes world's colour-shape combinations); empty: off."""
    concept_cap: int = 100
    """Documents a concept keeps about at most (each of a more frequent concept's documents kept with probability cap/count)."""
    concept_balance: Literal["drop", "sample"] = "drop"
    """'drop': the documents concept balancing does not keep are removed, once; 'sample': every document stays, with its chance to be kept as a sampling probability that the loader draws each pass by (MetaCLIP's online balancing: the head's variety stays reachable)."""
    keep_unmatched: bool = True
    """Keep documents whose text names no concept (MetaCLIP drops them)."""
    clusters: int = 0
    """Image balancing: k-means clusters over image embeddings (FAISS); 0: off."""
    cluster_cap: int = 100
    """Documents kept at most per image cluster."""
    seed: int = 0
    """Seed of the balancing draws."""
    examples: int = 6
    """Removed documents shown per reason in the curation report."""


@dataclass
class SFTConfig:
    tasks: str = "caption=1,t2i=1,vqa=1"
    """Task mixture as task=weight (examples per caption pair; fractions sample a share): caption, t2i, vqa."""
    condition_dropout: float = 0.1
    """Probability that a text-to-image example loses its caption, so the model also learns p(image) for CFG."""
    train_pairs: int = 0
    """Training caption pairs the SFT examples are built from (the first N, so fine-tuning time does not grow with a pretraining mixture's pairs); 0: all."""
    epochs: float = 2.0
    """Passes over the SFT examples; sets the number of fine-tuning steps."""
    lr: float = 1e-3
    """Peak learning rate of fine-tuning."""
    warmup_steps: int = 10
    """Linear warm-up steps of fine-tuning."""
    from_step: int = -1
    """Pretraining checkpoint step to start from; -1 means the latest."""
    lora_rank: int = 0
    """Rank of LoRA adapters on the attention and MLP projections; 0 fine-tunes every parameter."""
    lora_alpha: float = 16.0
    """LoRA scale numerator: adapters add (alpha / rank)·BA."""
    folder: str = "sft"
    """Folder of the fine-tuning run inside the run folder (e.g. sft_lora for a LoRA run beside a full one)."""
    seed: int = 0
    """Seed of the task mixture and condition dropout."""

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
    z_loss_weight: float = 1e-5
    """Weight of the z-loss logsumexp(logits)² that keeps logits from drifting (a loss setting: model.json does not hold it)."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN or inf loss or gradient: 'stop' the run before the optimizer steps, or 'skip' the step (10 in a row stop)."""


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
    peak_flops: float = 0.0
    """Peak FLOP/s of one rank, the denominator of MFU; 0: measured at start-up on a CPU (best matrix product in the training dtype), torchtitan's table on a GPU."""


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
    curate: CurateConfig = field(default_factory=CurateConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
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
