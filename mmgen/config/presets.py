"""Built-in experiment configs, chosen with ``--config NAME``.

``demo`` is the README's CPU pipeline (under 30 minutes on 2 cores, install included); ``debug``
is the smallest config that still passes through every stage, for tests. How the demo spends its
budget, and what each choice was measured to buy, is in docs/BENCHMARKS.md ("The model learns").
"""

from __future__ import annotations

from mmgen.config.schema import ExperimentConfig
from mmgen.cpu_features import cpu_has_amx_bf16, cpu_has_bf16


def demo_steps() -> int:
    """Pretraining steps of the demo: as many as its 30 minutes (install included) leave once the other stages
    have theirs, on the CPU family at hand (BENCHMARKS, "Know the hardware"). What decides is native bf16 (on
    the AVX512-BF16 EPYC this decoder trains 1.6x faster in bf16 than in fp32). The AVX2-only AMD EPYC trains
    in fp32 at about 1.2 s a step: 570 steps, 28 min 14 s with the install in run AE, a fresh machine (1 min
    46 s to spare; 15 min 12 s on a faster host of the family, run AH). An Intel Xeon with AMX trains in bf16
    at 0.73 s a step: 1,000 steps took 29 min 19 s with the install in run X and 27 min 30 s in run Z, fresh
    clones on nearly quiet hosts. An AMD EPYC with AVX512-BF16 but no AMX trains in bf16 at about 0.5 s a
    step: 1,000 steps took 17 min 16 s with the install in run AJ, a fresh clone (at 570 steps, the rule
    before, 13 min 24 s in run AI), and 24 min 45 s in run AL with its wider decoder (demo_width). A wider
    decoder is no cheaper per token on any of them (width 256: 2.1x and 2.6x width 128's time on the AMX Xeon
    and the AVX2 EPYC)."""
    return 1000 if cpu_has_bf16() else 570


def demo_width() -> int:
    """Width of the demo's decoder on the CPU family at hand, in heads of 32. The AMX Xeon and the AVX2 EPYC
    fill their 30 minutes with width 128 (demo_steps). The AVX512-BF16 EPYC without AMX left 12.7 of them
    unused (run AJ), and width 192 at the same 1,000 steps, 1.5x the pretraining time there, scored better on
    validation: text infilling's gain over its baseline +0.037 -> +0.097 (above zero), pretrained captions 0.954
    -> 0.989, VQA 0.790 -> 0.827 (within); six narrower layers at equal FLOPs drew better but read shapes from
    images worse (BENCHMARKS, "Width, depth and sharper attention for VQA"). The demo with it,
    held out (run AL, 24 min 45 s with the install): text infilling's gain +0.093 [+0.033, +0.157], VQA 0.817."""
    return 192 if cpu_has_bf16() and not cpu_has_amx_bf16() else 128


def demo(steps: int = 0) -> ExperimentConfig:
    """The 30-minute demo: ``steps`` pretraining steps (0: ``demo_steps()``, what the CPU family fits) on a world
    sized for about one pass over it."""
    cfg = ExperimentConfig(name="demo")
    # Sized for each of the CPU families these machines come in (demo_steps: 2-core AMD EPYC with AVX2 only,
    # fp32, ~7,200 training tokens/s for this decoder on two ranks; Intel Xeon with AMX, bf16, ~12,400; AMD EPYC
    # with AVX512-BF16, bf16, ~15,000).
    # Fresh documents rather than repeated passes: four passes over 6,000 documents memorised the training
    # images (held-out image bits rose); the generator writes about what pretraining reads in one pass.
    steps = steps or demo_steps()
    cfg.world.train_documents = 40 * steps  # 22,800 at 570 steps
    # Half the pretraining tokens are caption pairs, as CM3leon and Chameleon mix them in: at 300 steps this
    # raised colour-given-label classification 0.39 -> 0.55 on validation scenes, the rest within intervals.
    # 30,400 pairs at 570 steps keep about 22,000 after duplicate removal (one-shape scenes repeat), about one pass.
    cfg.world.train_caption_pairs = steps * 160 // 3
    cfg.world.pretrain_caption_share = 0.5
    cfg.sft.train_pairs = 2000  # fine-tuning as before the pretraining mixture took more pairs
    # Training images shown before their caption are asked the SFT VQA task's questions, in its words
    # (mmgen/data/world_questions.py): 45,000 questions in pretraining against SFT's 2,000. At 900 steps on
    # validation prompts after SFT, VQA 0.625 -> 0.724, caption 0.921 -> 0.958, text-to-image 0.791 -> 0.816;
    # shape and colour given label rose too. The pretrained model then writes questions after an image, so its
    # own captions (report) fell 0.88 -> 0.73 (BENCHMARKS, "VQA levers at 900 steps").
    cfg.world.qa_share = 1.0
    # So the pretrained model is asked for a caption, and scored on a label given an image, the way the caption
    # pairs it learnt from show one: the image, then its caption. The document form ("Look at this picture."
    # image "It shows ...") never puts a caption right after a fresh image once questions follow every such
    # image, and some models then answer it with "another drawing.": on 300 validation scenes each, four
    # pretrained models (570-600 steps) captioned 0.07 / 0.68 / 0.73 / 0.75 asked that way and 0.78 / 0.75 /
    # 0.81 / 0.77 this way; shape given image 0.58 / 0.48 / 0.66 / 0.65 against 0.73 / 0.60 / 0.85 / 0.64,
    # colour given image within 0.03 (BENCHMARKS, "Asking the pretrained model as its caption pairs do").
    cfg.eval.caption_prompt = cfg.eval.caption_lead = cfg.eval.classify_lead = ""
    cfg.eval.classify_follow = "{caption}"
    cfg.world.heldout_caption_pairs = 400  # at least 300 held-out prompts per SFT task
    cfg.world.heldout_documents = 360  # at least 300 held-out documents to infill
    # The world repeats scenes by design (only 648 one-shape scenes exist): web-style image dedup dropped a
    # third of its images and a quarter of its documents, most single-shape scenes among them.
    cfg.data.dedup_images = False
    # A narrow VQ-VAE trained for a step budget: on the AVX2 CPU the 128-channel one managed 300 steps in the
    # time this one runs 700, and what counts downstream is the attributes a round trip preserves.
    cfg.image_tokenizer.channels = 32
    cfg.image_tokenizer.res_blocks = 1
    cfg.image_tokenizer.train_steps = 700
    # Codes from their own 4×4 patch alone: the VQGAN encoder wrote an empty image with 37 codes and a small
    # shape swap changed 12; this one writes 1 and 2.8. On 200 validation items after 300 steps, text-to-image
    # 0.37 -> 0.49 and colour-given-image 0.48 -> 0.78, image-given-colour 0.55 -> 0.37 (BENCHMARKS).
    cfg.image_tokenizer.encoder = "patch"
    # A small decoder sees 2.6x the tokens per CPU-minute of the 256-wide one, which at a few million
    # tokens is worth more than width, where the minutes are short (demo_width).
    cfg.model.dim = demo_width()
    cfg.model.n_heads = cfg.model.dim // 32
    # Each image code's row and column in its grid, learnt, beside RoPE's 1-D positions. Same world, tokens and
    # 1,000 steps on validation: own captions 0.653 -> 0.945, text-to-image 0.815 -> 0.855, shape given image
    # 0.947 -> 0.993, image bits/token 0.199 -> 0.171, text 1.307 -> 1.216; after SFT caption 0.977 -> 0.990,
    # text-to-image 0.842 -> 0.862, VQA 0.765 -> 0.783 (BENCHMARKS, "Where each code sits").
    cfg.model.image_grid_embedding = True
    # 570 steps instead of 300 raised validation shape-given-label 0.37 -> 0.86 and text-to-image 0.49 -> 0.70
    # (BENCHMARKS, "What each lever bought"; held-out figures in "The demo at 570 steps"); the curve still
    # climbs there (run L, 1,200 steps), so the demo trains as many steps as its CPU fits (demo_steps).
    cfg.training.steps = steps
    cfg.lr_scheduler.warmup_steps = 30
    # three evaluation checkpoints along the run: the report's learning curve scores each of them
    cfg.checkpoint.interval = -(-steps // 3)  # rounded up, so the last is the final step (1,000: 334, 668, 1,000)
    cfg.checkpoint.keep_latest_k = 0
    cfg.eval.curve_items = 64
    # CM3 infilling and the unconditional stream of CFG are learnt in pretraining, as in CM3leon
    cfg.data.cm3_rate = 0.25
    # the moved text span starts with the 4 tokens before its hole: at 570 steps, validation text infilling
    # 0.015 -> 0.265 (left-context baseline 0.34-0.37); BENCHMARKS, "A cue for the text hole"
    cfg.data.cm3_text_cue = 4
    cfg.data.condition_dropout = 0.1
    # temperature 0.7 and guidance 2 scored best of seven settings on 200 validation prompts at 300 steps; at 570
    # steps guidance 1.5 ties 2 on the report's prompts (0.701 / 0.702) and beats it on the validation SFT prompts
    # (fine-tuned 0.735 vs 0.620, unguided 0.748): BENCHMARKS, "Guidance at 570 steps"
    cfg.eval.t2i_cfg_scale = 1.5
    cfg.eval.sft_cfg_scales = [1.0, 1.5]
    # image infills greedy and guided: of nine settings on 300 validation documents at 1,000 steps, greedy with
    # guidance 1.5 scored best (0.714; the former temperature 0.7 unguided 0.674, guidance 3 collapsed to 0.397):
    # BENCHMARKS, "Image infilling: sampling chosen on validation"
    cfg.eval.infill_temperature = 0.0
    cfg.eval.infill_cfg_scale = 1.5
    # the sample stage draws with the same settings, from a prompt in the world's own form (unguided, the
    # former "a red circle" drew an empty background: most of an image's codes are background)
    cfg.sample.prompt = "Here is a drawing. Draw a large red circle in the center, on a white background."
    cfg.sample.temperature = 0.7
    cfg.sample.cfg_scale = 1.5
    cfg.sample.num_samples = 4
    return cfg


def demo_long() -> ExperimentConfig:
    """The demo with twice the pretraining steps of its CPU family (2,000 with native bf16, 1,140 on AVX2) on a
    world twice the size (fresh documents, about one pass): where the learning curve goes. On the 2-core AMX
    Xeon, 2,000 steps took image infilling to 0.85 and text infilling's gain over its baseline above zero, VQA
    only to 0.81 (BENCHMARKS, "Twice the pretraining"); about 45 minutes there, not a 30-minute demo."""
    cfg = demo(2 * demo_steps())
    cfg.name = "demo_long"
    return cfg


def debug() -> ExperimentConfig:
    cfg = ExperimentConfig(name="debug")
    cfg.world.train_documents = 120
    cfg.world.heldout_documents = 16
    cfg.world.train_caption_pairs = 40
    cfg.world.heldout_caption_pairs = 8
    cfg.world.documents_per_shard = 50
    cfg.data.dedup_images = False
    cfg.text_tokenizer.vocab_size = 384
    cfg.image_tokenizer.channels = 32
    cfg.image_tokenizer.res_blocks = 1
    cfg.image_tokenizer.codebook_size = 64
    cfg.image_tokenizer.codebook_dim = 8
    cfg.image_tokenizer.train_steps = 30
    cfg.image_tokenizer.batch_size = 16
    cfg.image_tokenizer.precision = "float32"  # bf16 convolutions this narrow run slower than fp32 on CPUs
    cfg.model.dim = 64
    cfg.model.n_layers = 2
    cfg.model.n_heads = 2
    cfg.model.max_seq_len = 512
    cfg.model.image_grid_embedding = True  # as the demo, so that the tests run it through every stage
    cfg.training.local_batch_size = 2
    cfg.training.seq_len = 256
    cfg.training.steps = 6
    cfg.lr_scheduler.warmup_steps = 2
    cfg.checkpoint.interval = 3
    cfg.metrics.log_freq = 1
    cfg.sample.max_new_tokens = 90
    cfg.eval.caption_images = cfg.eval.t2i_prompts = cfg.eval.classify_images = 24
    cfg.eval.curve_items = 8
    cfg.eval.infill_documents = 16
    cfg.eval.entity_items = 4
    cfg.eval.sft_prompts = 32
    return cfg


BUILTIN = {"demo": demo, "demo_long": demo_long, "debug": debug}
