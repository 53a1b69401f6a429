"""Web-like noise in the shapes world: deterministic, exact ground truth, training split only."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmgen.config import ConfigError, RunPaths, load_config
from mmgen.data.obelics import read_obelics
from mmgen.data.shapes_world import describe_scene, generate_world, parse_caption, render_scene
from mmgen.data.world_noise import CONCEPTS, UNINFORMATIVE, concept_probabilities
from world_helpers import files_of, world_cfg

NOISY = dict(noise_misaligned=0.25, noise_uninformative=0.15, noise_near_duplicates=0.1)


def pairs_of(root: Path, split: str = "train") -> list[dict]:
    return [json.loads(line) for line in (root / "corpus" / f"captions-{split}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("noisy")
    return root, generate_world(world_cfg(**NOISY), RunPaths(str(root)))


def test_noise_is_deterministic_and_leaves_heldout_clean(noisy, tmp_path):
    root, counts = noisy
    again = tmp_path / "again"
    assert generate_world(world_cfg(**NOISY), RunPaths(str(again))) == counts
    assert files_of(again) == files_of(root)
    clean = tmp_path / "clean"
    generate_world(world_cfg(), RunPaths(str(clean)))
    noisy_files, clean_files = files_of(root), files_of(clean)
    heldout = [name for name in clean_files if "heldout" in name]
    assert heldout and all(noisy_files[name] == clean_files[name] for name in heldout)
    assert all("noise" not in pair["metadata"] for pair in pairs_of(clean))  # off by default: no trace


def test_caption_pairs_record_exactly_what_was_corrupted(noisy):
    root, counts = noisy
    pairs = pairs_of(root)
    kinds = Counter(pair["metadata"]["noise"] for pair in pairs)
    assert {k: counts[f"train_caption_pairs_{k}"] for k in kinds} == dict(kinds)
    assert all(kinds[k] > 0 for k in ("clean", "misaligned", "uninformative", "near_duplicate"))
    assert 0.1 < kinds["misaligned"] / len(pairs) < 0.4
    fillers = {f.split("{")[0] for f in UNINFORMATIVE}
    for row, pair in enumerate(pairs):
        meta = pair["metadata"]
        scene = {"background": meta["background"], "shapes": meta["shapes"]}
        truth = describe_scene(scene)
        pixels = np.asarray(Image.open(root / "corpus" / pair["image"]).convert("RGB"))
        differing = int((pixels != np.asarray(render_scene(scene, 32))).any(axis=-1).sum())
        if meta["noise"] == "clean":
            assert pair["caption"] == truth and differing == 0
        elif meta["noise"] == "misaligned":  # another scene of the training split, canonically described
            assert pair["caption"] != truth and parse_caption(pair["caption"]) and differing == 0
        elif meta["noise"] == "uninformative":
            assert not parse_caption(pair["caption"]) and any(pair["caption"].startswith(f) for f in fillers)
        else:
            original = pairs[meta["duplicate_of"]]
            assert meta["duplicate_of"] < row and original["metadata"]["noise"] == "clean"
            assert pair["caption"] == original["caption"] == truth and 0 < differing <= 4


def test_documents_record_which_images_lost_their_description(noisy):
    root, counts = noisy
    kinds = Counter()
    for doc in read_obelics(str(root / "corpus" / "train")):
        text = " ".join(doc.texts)
        for meta in doc.image_metadata:
            kinds[meta["noise"]] += 1
            truth = describe_scene({"background": meta["background"], "shapes": meta["shapes"]})
            if meta["noise"] != "clean":
                assert truth not in text
    assert kinds["misaligned"] > 0 and kinds["uninformative"] > 0 and "near_duplicate" not in kinds
    assert {k: counts[f"train_document_images_{k}"] for k in kinds} == dict(kinds)


def test_concept_tail_skews_training_scenes_only(tmp_path):
    cfg = world_cfg(concept_tail=2.0, train_documents=1, train_caption_pairs=300)
    p = concept_probabilities(cfg)
    assert p.max() / p.min() > 100 and np.isclose(p.sum(), 1.0)
    assert np.allclose(concept_probabilities(world_cfg()), 1 / len(CONCEPTS))
    generate_world(cfg, RunPaths(str(tmp_path)))
    drawn = Counter(f"{s['color']} {s['shape']}" for pair in pairs_of(tmp_path) for s in pair["metadata"]["shapes"])
    head = CONCEPTS[int(np.argmax(p))]
    assert drawn[head] > 10 * max(1, min(drawn.get(c, 0) for c in CONCEPTS))
    assert drawn.most_common(1)[0][0] == head


def test_noise_shares_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="at most 1"):
        load_config(["--config", "debug", "--world.noise_misaligned", "0.7", "--world.noise_uninformative", "0.5"])
    with pytest.raises(ConfigError, match="world.concept_tail"):
        load_config(["--config", "debug", "--world.concept_tail", "-1"])
