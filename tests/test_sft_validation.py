"""Validation SFT prompts: the world's validation caption pairs, their SFT shards, and the comparison on them.

Settings (guidance scale, SFT mixture, pretraining options) are chosen on these, never on held-out items.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from bad_inputs import ROOT, SMALL, assert_one_error_line, build_encoded_run, run_stage
from PIL import Image

from mmgen.config import RunPaths
from mmgen.data.sft_tasks import ANSWER_CHOICES
from mmgen.data.shapes_world import describe_scene, generate_world, scene_split
from world_helpers import files_of, world_cfg

# a world using every random stream the generator has: entities, noise, a concept tail, questions
RICH = dict(entities=6, noise_misaligned=0.2, noise_near_duplicates=0.1, concept_tail=1.0, qa_share=0.5)
# content_digest of the train and held-out files, written by the generator of commit a8817f5 (before it wrote
# validation caption pairs): adding them changed none of those files. The rich world's was written again when
# its pretraining answers took the space they have inside a sentence (" red." for "red."), its only change.
DIGESTS_BEFORE_VALIDATION = {
    "plain": "674310cf08ea0f55982dd8e31911cbabbea713f5ff96508e925e45d2745fd63c",
    "rich": "b8bbbf9cf30a748a588b17d843be6ef471a27e4e5dfd08303f7071b31851dce4",
}


def _pixels(png: bytes) -> bytes:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).tobytes()


def content_digest(corpus: Path) -> str:
    """SHA-256 of everything in ``corpus`` but the validation caption pairs: names, texts, metadata and decoded
    pixels (not PNG or parquet bytes, which a library upgrade may change while the world stays the same)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in corpus.rglob("*") if p.is_file()):
        name = str(path.relative_to(corpus))
        if name.startswith("captions-validation"):
            continue
        digest.update(name.encode())
        if path.suffix == ".png":
            digest.update(_pixels(path.read_bytes()))
        elif path.suffix == ".parquet":
            for row in pq.read_table(path).to_pylist():
                digest.update(json.dumps([row["texts"], row["metadata"], row["general_metadata"]]).encode())
                digest.update(b"".join(_pixels(image) for image in row["images"] if image is not None))
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def validation_files(corpus: Path) -> dict[str, bytes]:
    return {name: data for name, data in files_of(corpus).items() if name.startswith("captions-validation")}


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    out = {}
    for name, overrides in (("plain", {}), ("rich", RICH)):
        root = tmp_path_factory.mktemp(name)
        out[name] = root / "corpus", generate_world(world_cfg(**overrides), RunPaths(str(root)))
    return out


@pytest.mark.parametrize("name", ["plain", "rich"])
def test_train_and_heldout_files_are_what_they_were_before_validation_pairs(worlds, name):
    corpus, _ = worlds[name]
    assert content_digest(corpus) == DIGESTS_BEFORE_VALIDATION[name]


@pytest.mark.parametrize("name", ["plain", "rich"])
def test_validation_pairs_hold_validation_scenes_only(worlds, name):
    corpus, counts = worlds[name]
    scenes = {}
    for split in ("train", "heldout", "validation"):
        records = [json.loads(line) for line in (corpus / f"captions-{split}.jsonl").read_text().splitlines()]
        scenes[split] = {describe_scene(r["metadata"]) for r in records}
        if split == "validation":
            assert len(records) == counts["validation_caption_pairs"] == world_cfg().heldout_caption_pairs
            assert all(scene_split(r["metadata"]) == "validation" for r in records)
            assert all((corpus / r["image"]).is_file() for r in records)
            # validation scenes are never corrupted: each caption describes its own image
            assert all(r["caption"] == describe_scene(r["metadata"]) for r in records if "entities" not in r["metadata"])
    assert scenes["validation"] and not scenes["validation"] & (scenes["train"] | scenes["heldout"])
    # nor does any training document show one
    for shard in (corpus / "train").glob("*.parquet"):
        for row in pq.read_table(shard).to_pylist():
            shown = {describe_scene(m) for m in json.loads(row["metadata"]) if m is not None}
            assert not shown & scenes["validation"]


def test_validation_pairs_are_seeded_and_independent_of_the_other_counts(worlds, tmp_path):
    corpus, _ = worlds["rich"]
    # the way to add them to a run made before they existed: a small world into a scratch folder
    scratch = RunPaths(str(tmp_path / "scratch"))
    generate_world(world_cfg(**RICH, train_documents=1, train_caption_pairs=0, heldout_documents=0), scratch)
    assert validation_files(Path(scratch.corpus_dir)) == validation_files(corpus)
    other_seed = RunPaths(str(tmp_path / "other"))
    generate_world(world_cfg(**RICH, seed=1), other_seed)
    assert validation_files(Path(other_seed.corpus_dir)) != validation_files(corpus)


# ----- SFT shards and the comparison on them, in a tiny run folder -----


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory) -> Path:
    """A run through encode (the bad-input suite's), an untrained one-step checkpoint as both the pretrained and
    the fine-tuned model, and its SFT shards."""
    import torch.distributed.checkpoint as dcp

    from mmgen.config import load_config
    from mmgen.model.checkpoint import save_model_description
    from mmgen.model.transformer import Transformer, with_image_layout
    from mmgen.tokenizers.vocab import Vocab

    run = tmp_path_factory.mktemp("sft_validation") / "run"
    build_encoded_run(run)
    cfg = load_config(["--config", "debug", "--output_dir", str(run), *SMALL])
    paths = RunPaths(str(run))
    vocab = Vocab.load(paths.vocab)
    vocab_size, model_cfg = vocab.size, with_image_layout(cfg.model, vocab)
    for folder in (paths.pretrain_dir, paths.sft_dir()):
        save_model_description(folder, model_cfg, vocab_size)
        dcp.save(Transformer(model_cfg, vocab_size).state_dict(), checkpoint_id=f"{folder}/checkpoint/step-1",
                 no_dist=True)  # fmt: skip
    status, err = run_stage("tokenizers/encode_sft.py", run)
    assert status == 0, err
    return run


def test_encode_sft_writes_validation_prompts_without_condition_dropout(sft_run):
    from mmgen.data.token_shards import TokenShards

    shards = TokenShards(str(sft_run / "tokens" / "sft-validation"))
    metadata = [shards.metadata(i) for i in range(len(shards))]
    assert {m["task"] for m in metadata} == {"caption", "t2i", "vqa"}
    assert all(scene_split(m["scene"]) == "validation" for m in metadata)
    assert not any(m.get("condition_dropped") for m in metadata)
    timing = json.loads((sft_run / "timings" / "encode_sft.json").read_text())
    assert set(timing) >= {"train", "heldout", "validation"}


def test_compare_sft_on_validation_leaves_the_heldout_figures_alone(sft_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sft_run, run, symlinks=True)
    small = ("--eval.sft_prompts", "2", "--eval.sft_cfg_scales", "1,2")
    status, err = run_stage("eval/compare_sft.py", run, *small)
    assert status == 0, err
    heldout, timing = (run / "eval" / "sft_metrics.json").read_bytes(), (run / "timings" / "compare_sft.json").read_bytes()
    assert not (run / "eval" / "sft_metrics_validation.json").exists()
    status, err = run_stage("eval/compare_sft.py", run, "--eval.split", "validation", *small)
    assert status == 0, err
    assert (run / "eval" / "sft_metrics.json").read_bytes() == heldout
    assert (run / "timings" / "compare_sft.json").read_bytes() == timing
    assert (run / "timings" / "compare_sft_validation.json").exists()
    results = json.loads((run / "eval" / "sft_metrics_validation.json").read_text())
    assert set(results) == {"pretrained", "sft"}
    for r in results.values():
        assert r["items_per_task"] == {"caption": 2, "t2i": 2, "vqa": 2}
        for key in ("caption_accuracy", "vqa_accuracy", "t2i_accuracy", "t2i_accuracy_cfg2"):
            assert 0.0 <= r[key] <= 1.0 and r[f"{key}_items"] == 2
        # VQA by question kind: the questions asked split among the kinds, and their answers add up
        kinds = [f"vqa_accuracy_{kind}_items" for kind in ANSWER_CHOICES if f"vqa_accuracy_{kind}_items" in r]
        assert kinds and sum(r[k] for k in kinds) == 2
        right = sum(r[k.removesuffix("_items")] * r[k] for k in kinds)
        assert right == pytest.approx(r["vqa_accuracy"] * 2)
    # the fine-tuned checkpoint's gain over the pretrained one, item by item on the same prompts
    tuned, base = results["sft"], results["pretrained"]
    assert not any(k.endswith("_gain") for k in base)
    for key in ("caption_accuracy", "vqa_accuracy", "t2i_accuracy", "t2i_accuracy_cfg2"):
        assert tuned[f"{key}_gain"] == pytest.approx(tuned[key] - base[key]) and tuned[f"{key}_gain_items"] == 2
        low, high = tuned[f"{key}_gain_ci95"]
        assert low <= tuned[f"{key}_gain"] + 1e-9 and tuned[f"{key}_gain"] - 1e-9 <= high
        assert len(tuned["item_scores"][key]) == 2


def test_a_run_made_before_validation_pairs_encodes_the_rest_and_says_why(sft_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sft_run, run, symlinks=True)
    shutil.rmtree(run / "corpus" / "captions-validation")
    (run / "corpus" / "captions-validation.jsonl").unlink()
    for split in ("train", "heldout", "validation"):
        shutil.rmtree(run / "tokens" / f"sft-{split}")
    proc = subprocess.run([sys.executable, str(ROOT / "tokenizers" / "encode_sft.py"), "--config", "debug",
                           "--output_dir", str(run), *SMALL], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("sft-validation")]
    assert len(skipped) == 1 and "skipped" in skipped[0] and "captions-validation.jsonl" in skipped[0]
    assert (run / "tokens" / "sft-train" / "manifest.json").exists()
    assert (run / "tokens" / "sft-heldout" / "manifest.json").exists()
    assert not (run / "tokens" / "sft-validation").exists()

    status, err = run_stage("eval/compare_sft.py", run, "--eval.split", "validation")
    line = assert_one_error_line(status, err, "sft-validation", "captions-validation.jsonl", "data/make_world.py",
                                 "tokenizers/encode_sft.py")  # fmt: skip
    assert line
    assert not (run / "eval" / "sft_metrics_validation.json").exists()


def test_missing_validation_shards_name_the_stage_that_writes_them(sft_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(sft_run, run, symlinks=True)
    shutil.rmtree(run / "tokens" / "sft-validation")
    status, err = run_stage("eval/compare_sft.py", run, "--eval.split", "validation")
    line = assert_one_error_line(status, err, "sft-validation", "tokenizers/encode_sft.py")
    assert "data/make_world.py" not in line  # the caption pairs are there: encoding them is all it takes


def test_the_report_shows_the_sft_comparison_of_its_own_split(tmp_path):
    from mmgen.eval.report import _sft_table
    from mmgen.files import write_json

    paths = RunPaths(str(tmp_path))
    for split, value in (("heldout", 0.25), ("validation", 0.75)):
        write_json(paths.for_split(paths.sft_metrics, split), {"pretrained": {"step": 3, "vqa_accuracy": value}})
    heldout, validation = _sft_table(paths, "heldout"), _sft_table(paths, "validation")
    assert "held-out SFT prompts" in heldout and "0.250" in heldout and "0.750" not in heldout
    assert "validation SFT prompts" in validation and "0.750" in validation and "0.250" not in validation
    assert paths.for_split(paths.sft_metrics, "heldout") == paths.sft_metrics != paths.for_split(paths.sft_metrics, "validation")


def test_the_reports_sft_table_shows_a_fine_tuned_runs_gain_over_the_pretrained_one(tmp_path):
    from mmgen.eval.report import _sft_table
    from mmgen.files import write_json

    paths = RunPaths(str(tmp_path))
    write_json(paths.sft_metrics, {"pretrained": {"step": 3, "t2i_accuracy": 0.884},
                                   "sft": {"step": 1, "t2i_accuracy": 0.902, "t2i_accuracy_gain": 0.018,
                                           "t2i_accuracy_gain_ci95": [0.008, 0.028], "t2i_accuracy_gain_items": 300}})
    table = _sft_table(paths, "heldout")
    gain_row = table[table.index("<td>t2i_accuracy_gain</td>"):].split("</tr>")[0]
    assert "<td>—</td>" in gain_row and "0.018 [0.008, 0.028], n = 300" in gain_row
