"""Captions in a random order (``world.caption_shuffle``): the same scenes and images, the same shapes stated,
training split only, deterministic; off writes the plain world byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from mmgen.config import ConfigError, RunPaths, load_config
from mmgen.data.shapes_world import describe_scene, generate_world, parse_background, parse_caption
from world_helpers import files_of, world_cfg

SHUFFLED = dict(caption_shuffle=1.0, qa_share=0.5)


def rows_of(root: Path, split: str = "train") -> list[dict]:
    return [row for shard in sorted((root / "corpus" / split).glob("shard-*.parquet"))
            for row in pq.read_table(shard).to_pylist()]


def pairs_of(root: Path, split: str = "train") -> list[dict]:
    return [json.loads(line) for line in (root / "corpus" / f"captions-{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def worlds(tmp_path_factory) -> tuple[Path, dict, Path]:
    on, off = tmp_path_factory.mktemp("shuffled"), tmp_path_factory.mktemp("reading")
    counts = generate_world(world_cfg(**SHUFFLED), RunPaths(str(on)))
    generate_world(world_cfg(qa_share=0.5), RunPaths(str(off)))
    return on, counts, off


def stated(caption: str) -> list[tuple]:
    return [(s["size"], s["color"], s["shape"], s["position"]) for s in parse_caption(caption)]


def truth(scene: dict) -> list[tuple]:
    return [(s["size"], s["color"], s["shape"], s["position"]) for s in scene["shapes"]]


def test_caption_pairs_state_the_same_shapes_in_another_order(worlds):
    on, counts, off = worlds
    reordered = 0
    for shuffled, plain in zip(pairs_of(on), pairs_of(off), strict=True):
        assert shuffled["image"] == plain["image"] and shuffled["metadata"] == plain["metadata"]
        scene = shuffled["metadata"]
        assert sorted(stated(shuffled["caption"])) == sorted(truth(scene))
        assert parse_background(shuffled["caption"]) == scene["background"]
        if len(scene["shapes"]) > 1:  # every caption of several shapes is reordered at share 1
            assert stated(shuffled["caption"]) != truth(scene) and plain["caption"] == describe_scene(scene)
            reordered += 1
    assert reordered == counts["train_caption_pairs_reordered"] > 20
    assert (on / "corpus" / "captions-train").is_dir()
    assert files_of(on / "corpus" / "captions-train") == files_of(off / "corpus" / "captions-train")  # same images


def test_documents_keep_their_images_and_state_each_in_its_own_order(worlds):
    on, counts, off = worlds
    reordered = 0
    for shuffled, plain in zip(rows_of(on), rows_of(off), strict=True):
        assert shuffled["images"] == plain["images"] and shuffled["metadata"] == plain["metadata"]
        scenes = [m for m in json.loads(shuffled["metadata"]) if m]
        text, plain_text = " ".join(t for t in shuffled["texts"] if t), " ".join(t for t in plain["texts"] if t)
        assert len(text) == len(plain_text)  # the same words, some shapes named in another order
        for scene in scenes:
            if len(scene["shapes"]) > 1 and describe_scene(scene) in plain_text:
                assert describe_scene(scene) not in text
                reordered += 1
    assert reordered >= counts["train_document_captions_reordered"] > 10


def test_training_split_only_same_seed_same_bytes(worlds, tmp_path):
    on, counts, off = worlds
    shuffled, plain = files_of(on), files_of(off)
    others = [name for name in plain if "heldout" in name or "validation" in name]
    assert others and all(shuffled[name] == plain[name] for name in others)
    assert generate_world(world_cfg(**SHUFFLED), RunPaths(str(tmp_path / "again"))) == counts
    assert files_of(tmp_path / "again") == shuffled


def test_option_off_writes_the_plain_world(tmp_path):
    plain = generate_world(world_cfg(), RunPaths(str(tmp_path / "plain")))
    counts = generate_world(world_cfg(caption_shuffle=0.0), RunPaths(str(tmp_path / "off")))
    assert counts == plain and not any(key.endswith("_reordered") for key in counts)
    assert files_of(tmp_path / "off") == files_of(tmp_path / "plain")


def test_the_share_is_checked():
    with pytest.raises(ConfigError, match="world.caption_shuffle"):
        load_config(["--config", "debug", "--world.caption_shuffle", "1.5"])
