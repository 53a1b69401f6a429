"""Named entities of the shapes world: the generator, the bank corpus, entities.json and its items."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mmgen.config import RunPaths
from mmgen.config.schema import DataConfig, WorldConfig
from mmgen.data.corpus import open_corpus
from mmgen.data.entities import (anchors, check_entity, definition_text, describe_look, entity_caption, entity_cells,
                                 place_entity, read_entities, scene_entities, world_entities, zipf_weights)
from mmgen.data.shapes_world import describe_scene, generate_world, parse_caption, render_scene, scene_split
from mmgen.eval.scene_analyser import analyse_scene


def entity_world(**overrides) -> WorldConfig:
    cfg = WorldConfig(train_documents=400, heldout_documents=40, train_caption_pairs=200, heldout_caption_pairs=20,
                      documents_per_shard=200, entities=120, entity_share=0.5)  # fmt: skip
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[RunPaths, dict, dict]:
    paths = RunPaths(str(tmp_path_factory.mktemp("entities")))
    counts = generate_world(entity_world(), paths)
    return paths, counts, read_entities(paths.entities)


def files_of(root: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def test_generator_is_deterministic_and_the_seed_matters(world, tmp_path):
    paths, _, _ = world
    again = RunPaths(str(tmp_path / "again"))
    generate_world(entity_world(), again)
    assert files_of(paths.corpus_dir) == files_of(again.corpus_dir)
    other = world_entities(entity_world(seed=1))
    assert [e["name"] for e in other] != [e["name"] for e in world_entities(entity_world())]


def test_names_are_distinct_words_and_looks_distinct():
    entities = world_entities(entity_world(entities=500))
    names = [e["name"] for e in entities]
    assert len(set(n.lower() for n in names)) == 500 and all(n.isalpha() and n[0].isupper() for n in names)
    looks = {describe_look(e) for e in entities}
    assert len(looks) == 500
    assert all(len(e["parts"]) in (1, 2) for e in entities) and any(len(e["parts"]) == 1 for e in entities)


def test_a_world_without_entities_writes_no_bank_and_removes_an_old_one(world, tmp_path):
    paths = RunPaths(str(tmp_path / "run"))
    generate_world(entity_world(entities=5), paths)
    assert Path(paths.entities).exists() and Path(paths.corpus_split("bank")).exists()
    generate_world(entity_world(entities=0), paths)
    assert not Path(paths.entities).exists() and not Path(paths.corpus_split("bank")).exists()
    rows = list(open_corpus(paths.corpus_split("train")))
    assert not any(scene_entities(m) for d in rows for m in d.image_metadata)


def test_training_frequencies_follow_the_long_tail(world):
    _, counts, record = world
    uses = np.array([e["train_uses"] for e in record["entities"]])  # in rank order
    total = uses.sum()
    assert total > 200
    # the top tenth of the ranks takes far more than a tenth of the uses, and most entities are rare or unseen
    assert uses[:12].sum() > 0.4 * total
    assert (uses <= 2).mean() > 0.6 and counts["entities_unseen_in_training"] == int((uses == 0).sum()) > 30
    # the expected share of the rank-1 entity under the Zipf law, within sampling noise
    p1 = zipf_weights(120, 1.1)[0]
    assert abs(uses[0] / total - p1) < 4 * np.sqrt(p1 * (1 - p1) / total)
    head = [e for e in record["entities"] if e["group"] == "head"]
    assert 0 < len(head) < 20 and min(e["train_uses"] for e in head) >= max(
        e["train_uses"] for e in record["entities"] if e["group"] == "tail")
    assert sum(e["train_uses"] for e in head) >= 0.5 * total


def test_every_entity_is_defined_in_the_bank_with_its_image(world):
    paths, counts, record = world
    bank = list(open_corpus(paths.corpus_split("bank")))
    assert counts["bank_documents"] == len(bank) == len(record["entities"])
    by_name = {e["name"]: e for e in record["entities"]}
    for doc in bank:
        (name,) = scene_entities(doc.image_metadata[0])
        entity = by_name.pop(name)
        assert doc.texts[0] == definition_text(entity)
        assert np.array_equal(np.asarray(doc.images[0]),
                              np.asarray(render_scene(place_entity(entity, "center", "white", 32))))
    assert not by_name


def test_training_uses_entities_by_name_only_and_in_the_train_split(world):
    paths, _, record = world
    shown = 0
    for doc in open_corpus(paths.corpus_split("train")):
        text = " ".join(doc.texts)
        for scene in doc.image_metadata:
            for name in scene_entities(scene):
                shown += 1
                assert name in text and scene_split(scene) == "train"
                assert not parse_caption(text) and f"A {name} is" not in text  # never its look in words
    pairs = [json.loads(line) for line in Path(paths.caption_pairs("train")).read_text().splitlines()]
    named = [p for p in pairs if scene_entities(p["metadata"])]
    assert shown > 100 and len(named) > 50
    assert all(scene_entities(p["metadata"])[0] in p["caption"] for p in named)


def test_evaluation_items_are_disjoint_from_training_and_between_splits(world):
    paths, _, record = world
    train_scenes = set()
    for doc in open_corpus(paths.corpus_split("train")):
        train_scenes |= {json.dumps(m, sort_keys=True) for m in doc.image_metadata}
    items = record["items"]
    assert items["heldout"] and items["validation"]
    keys = {split: {json.dumps(i["scene"], sort_keys=True) for i in items[split]} for split in items}
    assert not keys["heldout"] & keys["validation"] and not keys["heldout"] & train_scenes
    assert all(scene_split(i["scene"]) == "heldout" for i in items["heldout"])
    groups = {e["name"]: e["group"] for e in record["entities"]}
    assert {i["group"] for i in items["heldout"]} == {"head", "tail"}
    assert all(i["group"] == groups[i["entity"]] for i in items["heldout"])


def test_placed_entities_render_their_parts_where_the_layout_says():
    for entity in world_entities(entity_world(entities=60)):
        for anchor in anchors(entity):
            scene = place_entity(entity, anchor, "black", 32)
            read = analyse_scene(render_scene(scene, 32))
            cells = entity_cells(entity, anchor)
            expected = sorted(({**p, "position": c} for p, c in zip(entity["parts"], cells)), key=lambda s: s["position"])
            assert sorted(read["shapes"], key=lambda s: s["position"]) == expected


@pytest.mark.parametrize("record, message", [
    ({"name": "Zorbel", "parts": []}, "one or two shapes"),
    ({"name": "Zor bel", "parts": [{"shape": "circle", "color": "red", "size": "small"}]}, "one-word name"),
    ({"name": "Zorbel", "parts": [{"shape": "hexagon", "color": "red", "size": "small"}]}, "shape must be one of"),
    ({"name": "Zorbel", "parts": [{"shape": "circle", "color": "red", "size": "small"}] * 2}, "'layout' must be"),
])  # fmt: skip
def test_bad_entity_records_are_named(record, message):
    with pytest.raises(ValueError, match=message):
        check_entity(record)


def test_spelled_out_documents_state_each_look_they_show_and_are_off_by_default(world, tmp_path):
    paths = RunPaths(str(tmp_path / "spelled"))
    cfg = entity_world(entity_spell_out=1.0)
    generate_world(cfg, paths)
    looks = {e["name"]: e for e in world_entities(cfg)}
    requests = 0
    for doc in open_corpus(paths.corpus_split("train"), options=DataConfig(dedup_images=False)):  # scenes repeat
        text = " ".join(doc.texts)
        scenes = [m for m in doc.image_metadata if scene_entities(m)]
        for scene in scenes:  # every image of the entity, the first and each move, in the world's own words
            assert f" It is {describe_scene(scene)}." in text
        if scenes and text.startswith("Here is a drawing. Draw a "):  # a request as text-to-image prompts put it
            requests += 1
            (placed,) = scenes[0]["entities"]
            caption = entity_caption(looks[placed["name"]], placed["position"], scenes[0]["background"])
            assert text.startswith(f"Here is a drawing. Draw {caption}. It is ")
    assert requests > 10
    plain = [" ".join(d.texts) for d in open_corpus(world[0].corpus_split("train"))]
    assert not any(" It is " in t for t in plain)  # the default (0) spells nothing out
