"""The report end to end on a small synthetic run: every metric key, chance levels, both files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
import torch.distributed.checkpoint as dcp

from corpus_helpers import joint_tokenizer

from mmgen.config import RunPaths, resolve_config
from mmgen.config.schema import ModelConfig
from mmgen.data.shapes_world import describe_scene, random_scene, render_scene
from mmgen.data.token_shards import TokenShardWriter
from mmgen.eval.curve import ACCURACY_KEYS, curve_png, learning_curve, write_tensorboard
from mmgen.eval.report import write_report
from mmgen.model.checkpoint import save_model_description
from mmgen.model import Transformer
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import train_text_tokenizer
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
    tokenizer = joint_tokenizer(text_tok, image_tok)
    vocab = tokenizer.vocab
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
    for key in KEYS[2:4]:  # each accuracy comes with its 95 % interval and number of items
        lo, hi = saved[key + "_ci95"]
        assert lo <= saved[key] <= hi and saved[key + "_items"] == 3
    assert "curve" not in saved  # no pretraining checkpoints, no learning curve

    # a validation report, for choosing settings, is written beside the held-out one and leaves it alone
    held_out_bytes = (tmp_path / "run" / "eval" / "metrics.json").read_bytes()
    cfg.eval.split = "validation"
    shutil.rmtree(paths.tokens("heldout"))  # it reads no held-out document either, not even for bits per token
    validation = write_report(cfg, paths, model.eval(), tokenizer, step=0, log=lambda _: None)
    assert validation["documents"] == 4 and np.isfinite(validation["text_bits_per_token"])
    assert (tmp_path / "run" / "eval" / "metrics.json").read_bytes() == held_out_bytes
    assert json.loads((tmp_path / "run" / "eval" / "metrics_validation.json").read_text())["split"] == "validation"
    assert (tmp_path / "run" / "eval" / "report_validation.html").exists()
    assert validation["caption_accuracy_items"] == 3


def test_learning_curve_scores_every_kept_checkpoint(tmp_path):
    cfg = resolve_config("debug")
    cfg.output_dir = str(tmp_path / "run")
    cfg.eval.curve_items = 3
    paths = RunPaths(cfg.run_dir)
    texts = ["Here is a drawing of a large red circle at the top left, on a white background."] * 4
    text_tok = train_text_tokenizer(texts, cfg.text_tokenizer, paths.text_tokenizer, log=lambda _: None)
    torch.manual_seed(0)
    image_tok = ImageTokenizer(model=VQVAE.from_config(cfg.image_tokenizer), config=cfg.image_tokenizer)
    tokenizer = joint_tokenizer(text_tok, image_tok)
    vocab = tokenizer.vocab
    writer = TokenShardWriter(paths.tokens("heldout"), vocab_size=vocab.size, tokens_per_shard=10_000)
    writer.add(tokenizer.encode_parts([texts[0], render_scene(random_scene(np.random.default_rng(0), cfg.world))]), {})
    writer.close()
    model_cfg = ModelConfig(dim=32, n_layers=1, n_heads=2, max_seq_len=256)
    save_model_description(paths.pretrain_dir, model_cfg, vocab.size)
    for step in (3, 6):
        model = Transformer(model_cfg, vocab.size)
        model.init_weights()
        dcp.save(model.state_dict(), checkpoint_id=f"{paths.pretrain_dir}/checkpoint/step-{step}", no_dist=True)

    points = learning_curve(cfg, paths, tokenizer, "cpu", log=lambda _: None)
    assert [p["step"] for p in points] == [3, 6]
    per_step = cfg.training.local_batch_size * cfg.training.seq_len * cfg.processes
    assert [p["tokens"] for p in points] == [3 * per_step, 6 * per_step]
    for p in points:
        assert set(ACCURACY_KEYS) <= set(p) and all(0 <= p[k] <= 1 for k in ACCURACY_KEYS)
        assert np.isfinite(p["image_bits_per_token"])
    assert curve_png(points, "test")[:8] == b"\x89PNG\r\n\x1a\n"
    cfg.eval.split = "validation"
    shutil.rmtree(paths.tokens("heldout"))  # a validation curve reads no held-out document
    validation = learning_curve(cfg, paths, tokenizer, "cpu", log=lambda _: None)
    assert [p["step"] for p in validation] == [3, 6] and all(p["documents"] == 3 for p in validation)
    write_tensorboard(points, str(tmp_path / "tb"))
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
