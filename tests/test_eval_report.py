"""The report end to end on a small synthetic run: every metric key, chance levels, both files."""

from __future__ import annotations

import json

import numpy as np
import torch

from mmgen.config import RunPaths, resolve_config
from mmgen.config.schema import ModelConfig
from mmgen.data.shapes_world import describe_scene, random_scene, render_scene
from mmgen.data.token_shards import TokenShardWriter
from mmgen.eval.report import write_report
from mmgen.model import Transformer
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import train_text_tokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab
from mmgen.tokenizers.vqvae import VQVAE

KEYS = ("text_bits_per_token", "image_bits_per_token", "caption_accuracy", "t2i_accuracy",
        "classify_accuracy_image_given_label", "classify_accuracy_label_given_image", "vq_psnr")


def test_report_writes_every_metric(tmp_path):
    cfg = resolve_config("debug")
    cfg.output_dir = str(tmp_path / "run")
    cfg.eval.heldout_documents, cfg.eval.caption_images, cfg.eval.t2i_prompts, cfg.eval.classify_images = 4, 3, 3, 4
    paths = RunPaths(cfg.run_dir)
    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, cfg.world) for _ in range(20)]
    texts = [f"Here is a drawing. Draw {describe_scene(s)}. It shows Look at this picture." for s in scenes]
    text_tok = train_text_tokenizer(texts, cfg.text_tokenizer, paths.text_tokenizer, log=lambda _: None)
    torch.manual_seed(0)
    image_tok = ImageTokenizer(model=VQVAE.from_config(cfg.image_tokenizer), config=cfg.image_tokenizer)
    image_tok.save(paths.image_tokenizer, metrics={"psnr": 12.5})
    vocab = Vocab.build(text_tok.vocab_size, image_tok.codebook_size, image_tok.grid)
    tokenizer = MultimodalTokenizer(vocab, text_tok, image_tok)
    writer = TokenShardWriter(paths.tokens("heldout"), vocab_size=vocab.size, tokens_per_shard=10_000)
    for s, t in zip(scenes[:4], texts):
        writer.add(tokenizer.encode_parts([t, render_scene(s)]), {})
    writer.close()
    model = Transformer(ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=256), vocab.size)
    model.init_weights()

    metrics = write_report(cfg, paths, model.eval(), tokenizer, step=0, log=lambda _: None)
    saved = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    for key in KEYS:
        assert np.isfinite(saved[key]), key
    for key in KEYS[2:6]:
        assert 0.0 <= saved[key] <= 1.0 and 0.0 <= saved[key + "_chance"] <= 1.0
    assert saved["vq_psnr"] == 12.5 and saved["analyser_accuracy_renders"] >= 0.99
    page = (tmp_path / "run" / "eval" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 + 3 * 2 + 4  # captions, t2i pairs, confusion matrices
    assert not list((tmp_path / "run" / "eval").glob("*.tmp"))
