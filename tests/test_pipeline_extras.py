"""End to end beyond pretraining, on the debug config: retrieval augmentation, SFT (full and LoRA), CM3 infilling."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def stage(name, out, *extra):
    proc = subprocess.run(
        [sys.executable, str(ROOT / name), "--config", "debug", "--output_dir", str(out), *extra],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("extras") / "run"
    for name in ("data/make_world.py", "tokenizers/train_text.py", "tokenizers/train_image.py", "tokenizers/encode.py"):
        stage(name, out)
    stage("train/pretrain.py", out, "--data.cm3_rate", "0.5", "--data.condition_dropout", "0.2")
    return out


@pytest.mark.slow
def test_retrieval_never_returns_the_document_or_its_duplicate(run):
    from mmgen.data.token_shards import TokenShards
    from mmgen.retrieval.selection import content_hash

    stage("retrieval/train_encoder.py", run, "--retrieval.encoder_steps", "30")
    # a 30-step encoder puts everything close together: only exact self/duplicate checks may filter here
    stage("retrieval/build_index.py", run, "--retrieval.max_similarity", "1.01")
    docs = TokenShards(str(run / "tokens" / "train"))
    table = np.load(run / "tokens" / "train" / "neighbours.npy")
    hashes = [content_hash(docs[i]) for i in range(len(docs))]
    assert table.shape == (len(docs), 2) and (table >= 0).any()
    for i, row in enumerate(table):
        for j in row[row >= 0]:
            assert j != i and hashes[j] != hashes[i]
    out = run.parent / "retrieval_run"
    out.mkdir()
    for name in ("tokenizers", "tokens"):
        (out / name).symlink_to(run / name)
    stage("train/pretrain.py", out, "--retrieval.enable", "true", "--training.steps", "2")
    assert (out / "pretrain" / "checkpoint" / "step-2").exists()


@pytest.mark.slow
def test_sft_full_and_lora(run):
    from safetensors.torch import load_file

    stage("tokenizers/encode_sft.py", run)
    stage("train/sft.py", run, "--sft.epochs", "0.5")
    log = [json.loads(line) for line in (run / "sft" / "loss_log.jsonl").read_text().splitlines()]
    assert log and log[0]["step"] == 1
    lora_run = run.parent / "lora_run"
    lora_run.mkdir()
    for name in ("tokenizers", "tokens", "pretrain"):
        (lora_run / name).symlink_to(run / name)
    stage("train/sft.py", lora_run, "--sft.epochs", "0.5", "--sft.lora_rank", "4")
    adapters = load_file(str(lora_run / "sft" / "adapters.safetensors"))
    assert adapters and all(k.endswith(("lora_a", "lora_b")) for k in adapters)


@pytest.mark.slow
def test_cm3_model_infills_a_whole_image(run):
    from mmgen.data.objectives import image_spans
    from mmgen.data.token_shards import TokenShards
    from mmgen.generation.infill import infill
    from mmgen.model.checkpoint import load_trained_model
    from mmgen.tokenizers.vocab import Vocab

    vocab = Vocab.load(str(run / "tokenizers" / "vocab.json"))
    model, _ = load_trained_model(str(run / "pretrain"))
    doc = TokenShards(str(run / "tokens" / "heldout"))[0]
    span = image_spans(doc, vocab.boi, vocab.eoi)[0]
    new = infill(model, vocab, doc, span, seed=0)
    h, w = vocab.grid
    assert new[0] == vocab.boi and new[-1] == vocab.eoi and len(new) == h * w + 2
    assert all(vocab.is_image(t) for t in new[1:-1])


@pytest.mark.slow
def test_no_demo_corpus_document_retrieves_itself_or_a_duplicate(tmp_path):
    """The demo's corpus (its world settings), with the debug config's small tokenizers to keep it quick."""
    import dataclasses

    from mmgen.config.presets import demo
    from mmgen.data.token_shards import TokenShards
    from mmgen.retrieval.selection import content_hash

    world = [a for f in dataclasses.fields(demo().world) for a in (f"--world.{f.name}", str(getattr(demo().world, f.name)))]
    out = tmp_path / "demo_corpus"
    for name in ("data/make_world.py", "tokenizers/train_text.py", "tokenizers/train_image.py", "tokenizers/encode.py"):
        stage(name, out, *world)
    stage("retrieval/train_encoder.py", out, *world, "--retrieval.encoder_steps", "40")
    stage("retrieval/build_index.py", out, *world, "--retrieval.max_similarity", "1.01")
    docs = TokenShards(str(out / "tokens" / "train"))
    assert len(docs) > 0.9 * demo().world.train_documents  # curation drops exact duplicates at read time
    hashes = np.array([content_hash(docs[i]) for i in range(len(docs))])
    table = np.load(out / "tokens" / "train" / "neighbours.npy")
    rows, cols = np.nonzero(table >= 0)
    picked = table[rows, cols]
    assert len(picked) > len(docs)  # most documents get neighbours
    assert not (picked == rows).any()
    assert not (hashes[picked] == hashes[rows]).any()
