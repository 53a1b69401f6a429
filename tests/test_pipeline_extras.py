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


@pytest.fixture(scope="module")
def encoder_run(run):
    stage("retrieval/train_encoder.py", run, "--retrieval.encoder_steps", "30")
    return run


@pytest.mark.slow
def test_retrieval_never_returns_the_document_or_its_duplicate(encoder_run):
    from mmgen.data.token_shards import TokenShards
    from mmgen.retrieval.selection import content_hash

    run = encoder_run
    # a 30-step encoder puts everything close together: only exact self/duplicate checks may filter here
    stage("retrieval/build_index.py", run, "--retrieval.max_similarity", "1.01")
    docs = TokenShards(str(run / "tokens" / "train"))
    table = np.load(run / "retrieval" / "neighbours" / "train.npy")
    hashes = [content_hash(docs[i]) for i in range(len(docs))]
    assert table.shape == (len(docs), 2) and (table >= 0).any()
    for i, row in enumerate(table):
        for j in row[row >= 0]:
            assert j != i and hashes[j] != hashes[i]
    out = run.parent / "retrieval_run"
    out.mkdir()
    for name in ("tokenizers", "tokens", "retrieval"):  # retrieval: the neighbour tables
        (out / name).symlink_to(run / name)
    stage("train/pretrain.py", out, "--retrieval.enable", "true", "--training.steps", "2")
    assert (out / "pretrain" / "checkpoint" / "step-2").exists()


@pytest.mark.slow
def test_build_index_on_two_ranks_matches_one_rank(encoder_run):
    import faiss

    run = encoder_run
    # 120 training documents in batches of 32: rank 0 embeds 64, rank 1 56
    args = ("--retrieval.max_similarity", "1.01", "--retrieval.embed_batch_size", "32")
    outputs = ["retrieval/neighbours/train.npy", "retrieval/neighbours/heldout.npy", "retrieval/bank/doc_ids.npy"]

    def build(*launcher):
        proc = subprocess.run([*launcher, str(ROOT / "retrieval/build_index.py"), "--config", "debug", "--output_dir", str(run), *args],
                              cwd=ROOT, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert proc.returncode == 0, f"{launcher}: {proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        index = faiss.read_index(str(run / "retrieval/bank/index.faiss"))
        return [(run / name).read_bytes() for name in outputs], index.reconstruct_n(0, index.ntotal), proc.stdout

    files_one, vectors_one, _ = build(sys.executable)
    files_two, vectors_two, log = build(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    assert "embedded on 2 ranks" in log
    assert len(vectors_one) == 120 and np.array_equal(vectors_one, vectors_two)
    for name, one, two in zip(outputs, files_one, files_two):
        assert one == two, name
    assert (np.load(run / "retrieval/neighbours/train.npy") >= 0).mean() > 0.9


@pytest.mark.slow
def test_sample_conditions_on_documents_it_retrieves(encoder_run):
    from mmgen.data.token_shards import TokenShards
    from mmgen.retrieval.documents import has_both_modalities
    from mmgen.tokenizers.vocab import Vocab

    run = encoder_run
    bare = run.parent / "no_bank_run"
    bare.mkdir()
    for name in ("tokenizers", "tokens", "pretrain"):
        (bare / name).symlink_to(run / name)
    cmd = [sys.executable, str(ROOT / "eval/sample.py"), "--config", "debug", "--sample.retrieve", "2"]
    proc = subprocess.run([*cmd, "--output_dir", str(bare)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "run retrieval/train_encoder.py and retrieval/build_index.py first" in proc.stderr

    stage("retrieval/build_index.py", run, "--retrieval.max_similarity", "1.01")
    out = stage("eval/sample.py", run, "--sample.retrieve", "2", "--retrieval.max_similarity", "1.01",
                "--sample.max_new_tokens", "8", "--prompt", "a large red circle").stdout
    record = json.loads((run / "samples" / "sample-0.json").read_text())
    vocab = Vocab.load(str(run / "tokenizers" / "vocab.json"))
    docs = TokenShards(str(run / "tokens" / "train"))
    retrieved = record["retrieved"]
    assert len(retrieved) == 2 and all(f"bank document {r['bank_id']}" in out for r in retrieved)
    assert has_both_modalities([docs[r["bank_id"]] for r in retrieved], vocab).all()
    # the prompt is laid out as in training: BOS r1 SEP r2 SEP prompt, each ri a head of the bank document
    expected = [vocab.bos]
    for r in retrieved:
        assert r["ids"] == docs[r["bank_id"]][1 : 1 + len(r["ids"])].tolist() and r["text"]
        expected += [*r["ids"], vocab.sep]
    assert record["prompt_ids"][: record["context_tokens"]] == expected
    assert "a large red circle" in record["text"] and "retrieved 1" in (run / "samples" / "index.html").read_text()


@pytest.mark.slow
def test_sft_full_and_lora(run):
    from safetensors.torch import load_file

    stage("tokenizers/encode_sft.py", run, "--sft.train_pairs", "30")  # of the debug world's 40
    examples = json.loads((run / "timings" / "encode_sft.json").read_text())["train"]["examples"]
    assert examples["caption"] == examples["t2i"] == 30
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

    # the comparison scores the pretrained checkpoint and every sft* run side by side
    stage("train/sft.py", run, "--sft.epochs", "0.5", "--sft.folder", "sft_lora", "--sft.lora_rank", "4")
    stage("eval/compare_sft.py", run)
    results = json.loads((run / "eval" / "sft_metrics.json").read_text())
    assert set(results) == {"pretrained", "sft", "sft_lora"}
    for name, r in results.items():
        for key in ("caption_accuracy", "vqa_accuracy", "t2i_accuracy", "t2i_accuracy_cfg1.5", "t2i_accuracy_cfg3"):
            assert 0.0 <= r[key] <= 1.0, (name, key)
    # rank 4 on the debug model's width 64 is ~6 % of its weights (the demo's rank 8 at width 256: 4 %)
    assert 0 < results["sft_lora"]["trainable_share"] < 0.1 and "trainable_share" not in results["sft"]


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
def test_report_infills_held_out_images_and_text_spans(run):
    """The report's CM3 section, from the CM3-trained debug model (debug is too small to score well: shapes only);
    its prompts with a text cue (the debug model was trained without: only the prompts' path is checked)."""
    stage("eval/report.py", run, "--data.cm3_rate", "0.5", "--data.cm3_text_cue", "2", "--eval.infill_documents", "3")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    for key in ("infill_image_accuracy", "infill_image_chance", "infill_text_exact", "infill_text_exact_left_context",
                "infill_text_exact_own_end", "infill_text_similarity", "infill_text_similarity_left_context"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["infill_text_span_bits"] > 0 and metrics["infill_text_span_bits_left_context"] > 0
    assert metrics["infill_image_incomplete"] == 0  # every infilled image is a whole h·w grid
    page = (run / "eval" / "report.html").read_text()
    assert "Infilling (CM3)" in page and page.count("[___]") >= 3


@pytest.mark.slow
def test_no_demo_corpus_document_retrieves_itself_or_a_duplicate(tmp_path):
    """The demo's corpus (its world settings, 6,000 documents of it), with the debug config's small tokenizers
    to keep it quick: duplicates come from the world's scene distribution, not from its size."""
    import dataclasses

    from mmgen.config.presets import demo
    from mmgen.data.token_shards import TokenShards
    from mmgen.retrieval.selection import content_hash

    settings = dataclasses.replace(demo().world, train_documents=6000)
    world = [a for f in dataclasses.fields(settings) for a in (f"--world.{f.name}", str(getattr(settings, f.name)))]
    out = tmp_path / "demo_corpus"
    for name in ("data/make_world.py", "tokenizers/train_text.py", "tokenizers/train_image.py", "tokenizers/encode.py"):
        stage(name, out, *world)
    stage("retrieval/train_encoder.py", out, *world, "--retrieval.encoder_steps", "40")
    stage("retrieval/build_index.py", out, *world, "--retrieval.max_similarity", "1.01")
    docs = TokenShards(str(out / "tokens" / "train"))
    assert len(docs) > 0.9 * settings.train_documents  # curation drops exact duplicates at read time
    hashes = np.array([content_hash(docs[i]) for i in range(len(docs))])
    table = np.load(out / "retrieval" / "neighbours" / "train.npy")
    rows, cols = np.nonzero(table >= 0)
    picked = table[rows, cols]
    assert len(picked) > len(docs)  # most documents get neighbours
    assert not (picked == rows).any()
    assert not (hashes[picked] == hashes[rows]).any()
