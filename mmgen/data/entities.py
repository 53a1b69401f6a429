"""Named entities of the shapes world: knowledge that lives in other documents (``world.entities``).

An entity is a made-up, pronounceable name ("Zorbel") with a fixed look made of one or two of the world's
shapes ("a large green triangle above a small red circle"), drawn with the world's own renderer. The world
uses entities three ways:

- the memory-bank corpus (``corpus/bank/``) holds one defining document per entity: its name, its look in
  words and its image. The bank defines every entity; no training document does.
- training and held-out documents and caption pairs use an entity by name only ("Here is a Zorbel." and
  its image; "Then the Zorbel moves to the bottom left." and the image with it there), except that with
  ``world.entity_spell_out`` a share of the documents follow each sentence naming the entity with what its
  image shows (the world's caption of the scene): the step from name to look that a model can copy from a
  retrieved definition, or must know by heart without one. A share
  ``world.entity_share`` of them does, and the entity of rank r is chosen with probability ∝ r^-zipf, so
  most entities are used a few times in training or never.
- ``corpus/entities.json`` keeps each entity's look, its uses in training, its group (head: the most used
  entities that together make up half of the training uses; tail: the rest, unseen ones included) and the
  evaluation items of the held-out and validation splits (every placement of an entity whose scene belongs
  to that split: a caption naming the entity at a place, and its scene), for text-to-image prompts and
  captioning with exact ground truth.

Every image that shows an entity carries it in its scene metadata (``entities``: name and anchor cell),
besides the shapes the scene analyser reads. With ``world.entities`` 0 (the default) nothing here runs and
the world's random streams are untouched, so existing worlds are written byte for byte as before.
"""

from __future__ import annotations

import functools
import json
import posixpath
from typing import Any, Iterable, Sequence

import fsspec
import numpy as np
import pyarrow.parquet as pq

from mmgen.config.errors import ConfigError
from mmgen.config.paths import RunPaths
from mmgen.config.schema import WorldConfig
from mmgen.data.obelics import CorpusError
from mmgen.data.shapes_world import (
    BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, at_phrase, describe_scene, document_row,
    place_shape, scene_split, to_phrase, write_parquet_shard,
)  # fmt: skip
from mmgen.files import read_jsonl, write_atomic

# The second shape's offset in grid cells (rows, columns) from the first, by the word that joins them.
LAYOUTS: dict[str, tuple[int, int]] = {"above": (1, 0), "to the left of": (0, 1)}
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gl", "kr", "pl", "sk", "st", "tr", "zw")  # fmt: skip
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "n", "l", "r", "x", "m", "sh")
_SINGLE_SHAPE_SHARE = 0.15
"""Share of entities made of one shape (only 36 single-shape looks exist; two-shape looks number thousands)."""
HEAD_SHARE = 0.5
"""Head entities: the most used ones that together make up this share of the training uses."""
_ENTITY_STREAM = 3  # a seed stream of its own, beside shapes_world's documents (0) and captions (1)


def _world_words() -> frozenset[str]:
    """Words the world's own text uses: no entity may be named like one."""
    words = {*SHAPES, *COLORS, *SIZES, *BACKGROUNDS, *(w for p in POSITIONS for w in p.split())}
    return frozenset(words | {"here", "this", "there", "then", "draw", "look", "scene", "picture", "drawing"})


def entity_names(rng: np.random.Generator, count: int) -> list[str]:
    """``count`` distinct pronounceable names (two or three consonant-vowel syllables and an ending)."""
    names: list[str] = []
    taken = set(_world_words())
    while len(names) < count:
        syllables = int(rng.integers(2, 4))
        word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                       for _ in range(syllables)) + _CODAS[rng.integers(len(_CODAS))]  # fmt: skip
        if word not in taken:
            taken.add(word)
            names.append(word.capitalize())
    return names


def _random_part(rng: np.random.Generator) -> dict[str, str]:
    return {"shape": SHAPES[rng.integers(len(SHAPES))], "color": list(COLORS)[rng.integers(len(COLORS))],
            "size": SIZES[rng.integers(len(SIZES))]}  # fmt: skip


def look_key(entity: dict) -> tuple:
    """What makes two looks the same: the parts and how they are laid out."""
    return tuple((p["shape"], p["color"], p["size"]) for p in entity["parts"]) + (entity.get("layout"),)


def describe_look(entity: dict) -> str:
    """'a large green triangle above a small red circle'."""
    words = [f"a {p['size']} {p['color']} {p['shape']}" for p in entity["parts"]]
    return words[0] if len(words) == 1 else f"{words[0]} {entity['layout']} {words[1]}"


def definition_text(entity: dict) -> str:
    name = entity["name"]
    return f"This is a {name}. A {name} is {describe_look(entity)}."


@functools.lru_cache(maxsize=8)
def _entities(seed: int, count: int) -> tuple[str, ...]:
    rng = np.random.default_rng(np.random.SeedSequence([seed, _ENTITY_STREAM]))
    names = entity_names(rng, count)
    entities, looks = [], set()
    while len(entities) < count:
        single = rng.random() < _SINGLE_SHAPE_SHARE
        entity = {"parts": [_random_part(rng)] if single else [_random_part(rng), _random_part(rng)],
                  "layout": None if single else list(LAYOUTS)[rng.integers(len(LAYOUTS))]}  # fmt: skip
        if look_key(entity) not in looks:  # every look names one entity, so an image identifies it
            looks.add(look_key(entity))
            entities.append(json.dumps({"name": names[len(entities)], "rank": len(entities) + 1, **entity}))
    return tuple(entities)


def _entity_records(cfg: WorldConfig) -> tuple[str, ...]:
    if cfg.entities > 36 * 35 * 2:  # distinct two-shape looks are far more; this only bounds the search
        raise ConfigError(f"world.entities must be at most {36 * 35 * 2}, got {cfg.entities}")
    return _entities(cfg.seed, cfg.entities)


def world_entities(cfg: WorldConfig) -> list[dict]:
    """The world's entities in rank order (rank 1 is the most used), a function of the seed and count."""
    return [json.loads(e) for e in _entity_records(cfg)]


def check_entity(entity: dict) -> None:
    """A ``ValueError`` naming what is wrong with an entity record (user input of memory edits)."""
    parts, layout = entity.get("parts"), entity.get("layout")
    if not isinstance(entity.get("name"), str) or not entity["name"].isalpha():
        raise ValueError(f"an entity needs a one-word name of letters, got {entity.get('name')!r}")
    if not isinstance(parts, list) or not 1 <= len(parts) <= 2:
        raise ValueError(f"entity {entity['name']}: 'parts' must list one or two shapes")
    for part in parts:
        for key, allowed in (("shape", SHAPES), ("color", tuple(COLORS)), ("size", SIZES)):
            if not isinstance(part, dict) or part.get(key) not in allowed:
                raise ValueError(f"entity {entity['name']}: a part's {key} must be one of {', '.join(allowed)}")
    if (len(parts) == 2) != (layout in LAYOUTS):
        raise ValueError(f"entity {entity['name']}: 'layout' must be one of {', '.join(map(repr, LAYOUTS))} "
                         "for two parts and absent for one")  # fmt: skip


# ----- placing an entity in a scene -----


def anchors(entity: dict) -> list[str]:
    """Grid cells the entity's first shape may take so that every shape lies inside the grid."""
    dr, dc = LAYOUTS[entity["layout"]] if len(entity["parts"]) == 2 else (0, 0)
    return [p for k, p in enumerate(POSITIONS) if k // 3 + dr < 3 and k % 3 + dc < 3]


def entity_cells(entity: dict, anchor: str) -> list[str]:
    """The grid cell of each of the entity's shapes when its first shape is at ``anchor``."""
    k = POSITIONS.index(anchor)
    dr, dc = LAYOUTS[entity["layout"]] if len(entity["parts"]) == 2 else (0, 0)
    return [anchor] + ([POSITIONS[k + 3 * dr + dc]] if len(entity["parts"]) == 2 else [])


def place_entity(entity: dict, anchor: str, background: str, image_size: int) -> dict[str, Any]:
    """A scene holding the entity alone, its first shape at ``anchor``; ``entities`` names it."""
    if anchor not in anchors(entity):
        raise ValueError(f"{entity['name']} does not fit with its first shape at the {anchor}")
    shapes = [place_shape(p["shape"], p["color"], p["size"], cell, image_size)
              for p, cell in zip(entity["parts"], entity_cells(entity, anchor))]  # fmt: skip
    shapes.sort(key=lambda s: POSITIONS.index(s["position"]))
    return {"background": background, "shapes": shapes, "entities": [{"name": entity["name"], "position": anchor}]}


def entity_caption(entity: dict, anchor: str, background: str) -> str:
    """'a Zorbel at the top left, on a white background': the entity's caption, by name only."""
    return f"a {entity['name']} {at_phrase(anchor)}, on a {background} background"


def _placement(rng: np.random.Generator, entity: dict, split: str, image_size: int, *, avoid: str | None = None,
               background: str | None = None) -> tuple[str, str] | None:  # fmt: skip
    """(anchor, background) drawn among the entity's placements whose scene belongs to ``split`` (not at
    ``avoid``, on ``background`` when given). Without ``avoid`` an entity with none there takes any, so it
    stays usable (with 12 to 18 placements, practically never in the train split); a move to another cell
    with none there is None: the document ends instead."""
    options = [(a, b) for a in anchors(entity) if a != avoid for b in BACKGROUNDS if background in (None, b)]
    inside = [o for o in options if scene_split(place_entity(entity, *o, image_size)) == split]
    pool = inside or ([] if avoid else options)
    return pool[int(rng.integers(len(pool)))] if pool else None


# ----- the world's documents -----


def uses_entity(rng: np.random.Generator, cfg: WorldConfig) -> bool:
    """Whether the next document or caption pair uses an entity (no random draw without entities)."""
    return cfg.entities > 0 and rng.random() < cfg.entity_share


def zipf_weights(count: int, exponent: float) -> np.ndarray:
    weights = np.arange(1, count + 1, dtype=np.float64) ** -exponent
    return weights / weights.sum()


def _draw_entity(rng: np.random.Generator, cfg: WorldConfig) -> dict:
    # only the drawn entity is parsed: parsing all of them for every document cost ~10 ms a draw at 2,500
    rank = int(rng.choice(cfg.entities, p=zipf_weights(cfg.entities, cfg.entity_zipf)))
    return json.loads(_entity_records(cfg)[rank])


def entity_document(rng: np.random.Generator, cfg: WorldConfig, split: str) -> list[str | dict]:
    """A document that names one entity and shows it, 1..max_images_per_document times, moving between images."""
    entity = _draw_entity(rng, cfg)
    name = entity["name"]
    anchor, background = _placement(rng, entity, split, cfg.image_size)
    scene = place_entity(entity, anchor, background, cfg.image_size)
    style = int(rng.integers(3))
    spelled = cfg.entity_spell_out > 0 and rng.random() < cfg.entity_spell_out  # no draw when off

    def look(shown: dict) -> str:
        return f" It is {describe_scene(shown)}." if spelled else ""

    if style == 0:
        items: list[str | dict] = [f"Here is a {name}.{look(scene)}", scene]
    elif style == 1 and spelled:  # the request as text-to-image prompts put it (eval.t2i_template)
        items = [f"Here is a drawing. Draw {entity_caption(entity, anchor, background)}.{look(scene)}", scene]
    elif style == 1:
        items = [f"Here is a drawing. Draw a {name} {at_phrase(anchor)}.", scene]
    else:
        items = ["Look at this picture.", scene, f"It shows a {name} {at_phrase(anchor)}.{look(scene)}"]
    for _ in range(int(rng.integers(1, cfg.max_images_per_document + 1)) - 1):
        moved = _placement(rng, entity, split, cfg.image_size, avoid=anchor, background=background)
        if moved is None:
            break
        anchor = moved[0]
        there = place_entity(entity, anchor, background, cfg.image_size)
        move = f"Then the {name} moves {to_phrase(anchor)}.{look(there)}"
        if isinstance(items[-1], str):
            items[-1] = f"{items[-1]} {move}"
        else:
            items.append(move)
        items.append(there)
    return items


def entity_caption_pair(rng: np.random.Generator, cfg: WorldConfig, split: str) -> tuple[dict, str]:
    """(scene, caption) of a caption pair that names an entity."""
    entity = _draw_entity(rng, cfg)
    anchor, background = _placement(rng, entity, split, cfg.image_size)
    return place_entity(entity, anchor, background, cfg.image_size), entity_caption(entity, anchor, background)


def defining_document(entity: dict, image_size: int) -> list[str | dict]:
    """The bank's document about an entity: its name, its look in words and its image (centre, white)."""
    return [definition_text(entity), place_entity(entity, "center", "white", image_size)]


# ----- the files: the bank corpus and entities.json -----


def scene_entities(scene: dict | None) -> list[str]:
    """Names of the entities an image's metadata says it shows."""
    return [e["name"] for e in (scene or {}).get("entities", [])]


def count_training_uses(paths: RunPaths) -> dict[str, int]:
    """Training documents and caption pairs that show each entity, read back from the written corpus."""
    uses: dict[str, int] = {}

    def count(images: Iterable[dict | None]) -> None:
        for name in {n for scene in images for n in scene_entities(scene)}:
            uses[name] = uses.get(name, 0) + 1

    fs, root = fsspec.core.url_to_fs(paths.corpus_split("train"))
    for shard in sorted(fs.glob(posixpath.join(root, "shard-*.parquet"))):
        with fs.open(shard, "rb") as f:
            for metadata in pq.read_table(f, columns=["metadata"]).column("metadata").to_pylist():
                count(json.loads(metadata or "[]"))
    if fs.exists(fsspec.core.url_to_fs(paths.caption_pairs("train"))[1]):
        for record in read_jsonl(paths.caption_pairs("train")):
            count([record.get("metadata")])
    return uses


def head_and_tail(entities: Sequence[dict], uses: dict[str, int]) -> dict[str, str]:
    """Group of each entity: 'head' for the most used ones that make up HEAD_SHARE of all uses, else 'tail'."""
    order = sorted(entities, key=lambda e: (-uses.get(e["name"], 0), e["rank"]))
    total, covered, groups = sum(uses.values()), 0, {}
    for entity in order:
        head = total > 0 and covered < HEAD_SHARE * total and uses.get(entity["name"], 0) > 0
        groups[entity["name"]] = "head" if head else "tail"
        covered += uses.get(entity["name"], 0) if head else 0
    return groups


def evaluation_items(entities: Sequence[dict], split: str, *, image_size: int) -> list[dict]:
    """Every placement of every entity whose scene belongs to ``split``: its caption by name and its scene.

    Training shows an entity only in placements of the train split, so these items are disjoint from it (an
    entity with no placement in ``split`` has no item there)."""
    items = []
    for entity in entities:
        for anchor in anchors(entity):
            for background in BACKGROUNDS:
                scene = place_entity(entity, anchor, background, image_size)
                if scene_split(scene) == split:
                    items.append({"entity": entity["name"], "group": entity.get("group", "tail"),
                                  "caption": entity_caption(entity, anchor, background), "scene": scene})  # fmt: skip
    return items


def definition_rows(entities: Sequence[dict], image_size: int) -> list[dict[str, Any]]:
    """The OBELICS rows of the entities' defining documents (``general_metadata.entity`` names each)."""
    return [document_row(defining_document(e, image_size), image_size,
                         {"url": f"shapes-world://bank/{e['name']}", "split": "bank", "entity": e["name"]})
            for e in entities]  # fmt: skip


def write_entity_files(cfg: WorldConfig, paths: RunPaths) -> dict[str, int]:
    """The bank corpus (a definition of every entity) and ``corpus/entities.json``, after the splits are written;
    a world without entities removes those of an earlier world in the same run folder."""
    fs, root = fsspec.core.url_to_fs(paths.corpus_split("bank"))
    for stale in (root, fsspec.core.url_to_fs(paths.entities)[1]):  # from an earlier world of this run folder
        if fs.exists(stale):
            fs.rm(stale, recursive=True)
    if not cfg.entities:
        return {}
    entities = world_entities(cfg)
    rows = definition_rows(entities, cfg.image_size)
    write_parquet_shard(rows, posixpath.join(paths.corpus_split("bank"), "shard-00000.parquet"))
    uses = count_training_uses(paths)
    groups = head_and_tail(entities, uses)
    for entity in entities:
        entity.update(look=describe_look(entity), train_uses=uses.get(entity["name"], 0), group=groups[entity["name"]])
    record = {
        "head_share": HEAD_SHARE,
        "entities": entities,
        "items": {split: evaluation_items(entities, split, image_size=cfg.image_size)
                  for split in ("heldout", "validation")},
    }  # fmt: skip
    write_atomic(paths.entities, json.dumps(record, indent=1))
    counted = [e["train_uses"] for e in entities]
    return {"bank_documents": len(rows), "entities": len(entities), "entities_head": sum(g == "head" for g in groups.values()),
            "entities_unseen_in_training": sum(c == 0 for c in counted)}  # fmt: skip


def has_entities(paths: RunPaths) -> bool:
    """Whether the run's world has named entities (its ``corpus/entities.json`` exists)."""
    fs, local = fsspec.core.url_to_fs(paths.entities)
    return fs.exists(local)


def read_entities(path: str) -> dict:
    """``entities.json`` of a run; a ``CorpusError`` naming it when it is not one."""
    fs, local = fsspec.core.url_to_fs(path)
    if not fs.exists(local):
        raise FileNotFoundError(f"missing input {path} (run data/make_world.py with --world.entities N first)")
    with fs.open(local, "r") as f:
        try:
            record = json.load(f)
        except json.JSONDecodeError as err:
            raise CorpusError(f"{path} is not JSON: {err}") from None
    if not isinstance(record, dict) or not isinstance(record.get("entities"), list):
        raise CorpusError(f"{path} holds no 'entities' list")
    return record

