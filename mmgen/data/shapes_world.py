"""The shapes world: a seeded generator of interleaved image/text documents with exact ground truth.

Notable choices:
- Images are painted from integer pixel masks, never anti-aliased: every shape is a flat colour on a flat
  background at one of nine fixed grid cells, with a gap of at least one pixel between neighbouring cells.
  A scene analyser can therefore read an image back exactly, and the VQ-VAE sees few distinct patches.
- Shapes in a scene are kept in grid reading order, so ``describe_scene`` is a function of the image alone.
- Held-out scenes are disjoint from training scenes by construction: a stable hash of the canonical caption
  assigns every possible scene to exactly one split (train, validation or heldout), and each split rejects the
  others' scenes. Validation scenes are for choosing settings (learning rate, sampling temperature, guidance);
  held-out scenes only for the figures a run reports. Each split (and documents vs caption pairs) also draws
  from its own seed stream.
- Half of the images are described before they appear (text → image) and half after (image → text); later
  images in a document are often edits of the previous one, narrated ("Then the small red circle ... moves
  to the center."), so the text depends on more than one image.
- Optionally (``world.qa_share``, mmgen/data/world_questions.py), training images shown before their caption
  also get questions and short answers about them, in the SFT VQA task's words; and training captions
  (``world.caption_shuffle``, mmgen/data/caption_order.py) may name a scene's shapes in a random order.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
from typing import TYPE_CHECKING, Any, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mmgen.config.errors import ConfigError
from mmgen.config.paths import RunPaths
from mmgen.config.schema import WorldConfig
from mmgen.files import write_atomic
from mmgen.progress import progress_bar

if TYPE_CHECKING:
    from mmgen.data.caption_order import CaptionOrder
    from mmgen.data.world_noise import WorldNoise
    from mmgen.data.world_questions import WorldQuestions

SHAPES = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (40, 70, 220),
    "yellow": (245, 210, 20),
    "purple": (140, 40, 180),
    "orange": (245, 125, 10),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "black": (0, 0, 0)}
SIZES = ("small", "large")
# Grid cells in reading order (row-major); index = 3 * row + column.
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)  # fmt: skip
_AT = {"left": "on the left", "right": "on the right", "center": "in the center"}
_TO = {"center": "to the center"}
HELDOUT_BUCKETS = 10
"""One scene in this many (by caption hash) belongs to the held-out split, and another one to validation."""
SPLITS = ("train", "validation", "heldout")

OBELICS_SCHEMA = pa.schema(
    [
        ("texts", pa.list_(pa.string())),
        ("images", pa.list_(pa.binary())),
        ("metadata", pa.string()),
        ("general_metadata", pa.string()),
    ]
)

Scene = dict[str, Any]


# ----- geometry and rendering -----


def grid_geometry(image_size: int) -> tuple[list[int], dict[str, int]]:
    """Pixel centres of the three grid rows/columns and the half side of each size."""
    if image_size < 12:
        raise ConfigError(f"world.image_size must be at least 12, got {image_size}")
    centers = [round(image_size * (2 * i + 1) / 6) for i in range(3)]
    # Large shapes leave >= 1 px between neighbouring cells; small ones have about a third of the area.
    half = {"large": int(image_size * 0.14), "small": max(1, round(image_size * 0.07))}
    return centers, half


def shape_mask(shape: str, half: int) -> np.ndarray:
    """Boolean (2·half+1)² mask of a shape centred in its box."""
    d = np.arange(-half, half + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    if shape == "square":
        return np.ones(dy.shape, dtype=bool)
    if shape == "circle":
        return dx**2 + dy**2 <= (half + 0.5) ** 2
    if shape == "triangle":  # apex up, base on the bottom row
        return np.abs(dx) <= (dy + half) / 2 + 0.5
    raise ValueError(f"unknown shape '{shape}'")


def place_shape(shape: str, color: str, size: str, position: str, image_size: int) -> dict[str, Any]:
    """A shape record with its pixel centre (cx, cy) and half side r."""
    centers, half = grid_geometry(image_size)
    cell = POSITIONS.index(position)
    return {
        "shape": shape,
        "color": color,
        "size": size,
        "position": position,
        "cx": centers[cell % 3],
        "cy": centers[cell // 3],
        "r": half[size],
    }


def render_scene(scene: Scene, image_size: int = 32) -> Image.Image:
    """Paint a scene; the pixels depend only on the scene's attributes and the image size."""
    canvas = np.empty((image_size, image_size, 3), dtype=np.uint8)
    canvas[:] = BACKGROUNDS[scene["background"]]
    for item in scene["shapes"]:
        placed = place_shape(item["shape"], item["color"], item["size"], item["position"], image_size)
        cx, cy, r = placed["cx"], placed["cy"], placed["r"]
        box = canvas[cy - r : cy + r + 1, cx - r : cx + r + 1]
        box[shape_mask(item["shape"], r)] = COLORS[item["color"]]
    return Image.fromarray(canvas, mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ----- scenes and captions -----


def check_world_config(cfg: WorldConfig) -> None:
    grid_geometry(cfg.image_size)
    if not 1 <= cfg.max_shapes_per_image <= len(POSITIONS):
        raise ConfigError(f"world.max_shapes_per_image must be in 1..9, got {cfg.max_shapes_per_image}")
    if cfg.max_images_per_document < 1:
        raise ConfigError(f"world.max_images_per_document must be at least 1, got {cfg.max_images_per_document}")


def random_scene(rng: np.random.Generator, cfg: WorldConfig) -> Scene:
    """1..max_shapes_per_image shapes in distinct grid cells, listed in reading order."""
    check_world_config(cfg)
    count = int(rng.integers(1, cfg.max_shapes_per_image + 1))
    cells = sorted(int(c) for c in rng.choice(len(POSITIONS), size=count, replace=False))
    shapes = [
        place_shape(
            SHAPES[rng.integers(len(SHAPES))],
            list(COLORS)[rng.integers(len(COLORS))],
            SIZES[rng.integers(len(SIZES))],
            POSITIONS[cell],
            cfg.image_size,
        )
        for cell in cells
    ]
    return {"background": list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))], "shapes": shapes}


def at_phrase(position: str) -> str:
    return _AT.get(position, f"at the {position}")


def to_phrase(position: str) -> str:
    return _TO.get(position, f"to the {position}")


def describe_shape(item: dict[str, Any], article: str = "a") -> str:
    return f"{article} {item['size']} {item['color']} {item['shape']} {at_phrase(item['position'])}"


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe_scene(scene: Scene, order: Sequence[int] | None = None) -> str:
    """The canonical caption, e.g. 'a large red circle at the top left and a small blue square in the
    center, on a white background'; 'no shapes, on a white background' for a scene without shapes (the scene
    analyser reads such a scene from a blank image). ``order``: the shapes' indices in the order to name them
    (default: reading order, the canonical caption)."""
    listed = scene["shapes"] if order is None else [scene["shapes"][i] for i in order]
    shapes = _join([describe_shape(s) for s in listed]) if listed else "no shapes"
    return f"{shapes}, on a {scene['background']} background"


_SHAPE_RE = re.compile(
    r"\b(?:a|an|the)\s+(small|large)\s+(" + "|".join(COLORS) + r")\s+(" + "|".join(SHAPES) + r")"
    r"(?:\s+(?:at|in|on|to)\s+the\s+(" + "|".join(sorted(POSITIONS, key=len, reverse=True)) + r")\b)?"
)
_BACKGROUND_RE = re.compile(r"\b(" + "|".join(BACKGROUNDS) + r")\s+background\b")


def parse_caption(text: str) -> list[dict[str, Any]]:
    """Best-effort inverse of ``describe_scene``: the shapes named in ``text`` (position None when absent)."""
    return [
        {"shape": m[3], "color": m[2], "size": m[1], "position": m[4]}
        for m in _SHAPE_RE.finditer(text.lower())
    ]


def parse_background(text: str) -> str | None:
    match = _BACKGROUND_RE.search(text.lower())
    return match[1] if match else None


def scene_split(scene: Scene) -> str:
    """'train', 'validation' or 'heldout': a stable partition of all possible scenes."""
    digest = hashlib.blake2b(describe_scene(scene).encode(), digest_size=8).digest()
    bucket = int.from_bytes(digest, "big") % HELDOUT_BUCKETS
    return "heldout" if bucket == 0 else "validation" if bucket == 1 else "train"


def _scene_in(split: str, rng: np.random.Generator, cfg: WorldConfig, noise: WorldNoise | None = None) -> Scene:
    while True:
        scene = random_scene(rng, cfg)
        if noise is not None:
            scene = noise.skew_concepts(scene, rng)
        if scene_split(scene) == split:
            return scene


# ----- documents -----

_INTROS = ("Here is a drawing.", "Look at this picture.", "Here is a scene.", "This is a small image.")
_NEXT = ("Next, another drawing.", "Here is one more picture.", "Another scene follows.", "Now a new drawing.")
_AFTER = ("It shows {c}.", "In it we see {c}.", "The picture contains {c}.", "There is {c}.")
_BEFORE = ("Here is a drawing of {c}.", "This picture shows {c}.", "Draw {c}.", "An image of {c}:")
_RECAP = ("Now it shows {c}.", "The scene is now {c}.")


def _edit(rng: np.random.Generator, scene: Scene, cfg: WorldConfig) -> tuple[str, Scene]:
    """One narrated change to a scene: recolour, move, add or remove a shape."""
    shapes = [dict(s) for s in scene["shapes"]]
    free = [p for p in POSITIONS if p not in {s["position"] for s in shapes}]
    kinds = ["recolor"] + ["move"] * bool(free)
    kinds += ["add"] * (bool(free) and len(shapes) < cfg.max_shapes_per_image) + ["remove"] * (len(shapes) > 1)
    kind = kinds[rng.integers(len(kinds))]
    i = int(rng.integers(len(shapes)))
    the = describe_shape(shapes[i], article="the")
    if kind == "recolor":
        color = [c for c in COLORS if c != shapes[i]["color"]][rng.integers(len(COLORS) - 1)]
        shapes[i]["color"] = color
        text = f"Then {the} turns {color}."
    elif kind == "move":
        target = free[rng.integers(len(free))]
        shapes[i] = place_shape(shapes[i]["shape"], shapes[i]["color"], shapes[i]["size"], target, cfg.image_size)
        text = f"Then {the} moves {to_phrase(target)}."
    elif kind == "add":
        added = place_shape(
            SHAPES[rng.integers(len(SHAPES))],
            list(COLORS)[rng.integers(len(COLORS))],
            SIZES[rng.integers(len(SIZES))],
            free[rng.integers(len(free))],
            cfg.image_size,
        )
        shapes.append(added)
        text = f"Then {describe_shape(added)} appears."
    else:
        shapes.pop(i)
        text = f"Then {the} disappears."
    shapes.sort(key=lambda s: POSITIONS.index(s["position"]))
    return text, {"background": scene["background"], "shapes": shapes}


def random_document(rng: np.random.Generator, cfg: WorldConfig, split: str = "train",
                    noise: WorldNoise | None = None, questions: WorldQuestions | None = None) -> list[str | Scene]:  # fmt: skip
    """Narration and scenes in reading order; adjacent text is merged, scenes belong to ``split``; ``noise``
    skews the concepts of fresh scenes (mmgen/data/world_noise.py); ``questions`` asks about fresh scenes
    shown before their caption (mmgen/data/world_questions.py)."""
    from mmgen.data import entities  # entities build on this module's geometry, so it is imported here

    if entities.uses_entity(rng, cfg):
        return entities.entity_document(rng, cfg, split)

    def pick(options: tuple[str, ...]) -> str:
        return options[rng.integers(len(options))]

    items: list[str | Scene] = []
    previous: Scene | None = None
    for k in range(int(rng.integers(1, cfg.max_images_per_document + 1))):
        edited = None
        if previous is not None and rng.random() < 0.5:
            for _ in range(8):  # an edit may land in the other split; retry, then start afresh
                narration, candidate = _edit(rng, previous, cfg)
                if scene_split(candidate) == split:
                    edited = candidate
                    break
        if edited is not None:
            items += [narration, edited]
            if rng.random() < 0.5:
                items.append(pick(_RECAP).format(c=describe_scene(edited)))
            previous = edited
            continue
        scene = _scene_in(split, rng, cfg, noise)
        opener = pick(_INTROS if k == 0 else _NEXT)
        if rng.random() < 0.5:
            items += [f"{opener} {pick(_BEFORE).format(c=describe_scene(scene))}", scene]
        else:
            before, shown, after = questions.ask(scene) if questions is not None else ([], scene, [])
            items += [opener, *before, shown, *after, pick(_AFTER).format(c=describe_scene(scene))]
        previous = scene
    merged: list[str | Scene] = []
    for item in items:
        if isinstance(item, str) and merged and isinstance(merged[-1], str):
            merged[-1] = f"{merged[-1]} {item}"
        else:
            merged.append(item)
    return merged


def document_row(items: list[str | Scene], image_size: int, general_metadata: dict[str, Any]) -> dict[str, Any]:
    """One OBELICS row: aligned texts/images lists (one non-null per position) and JSON metadata."""
    texts = [item if isinstance(item, str) else None for item in items]
    images = [None if isinstance(item, str) else png_bytes(render_scene(item, image_size)) for item in items]
    metadata = [None if isinstance(item, str) else item for item in items]
    return {
        "texts": texts,
        "images": images,
        "metadata": json.dumps(metadata),
        "general_metadata": json.dumps(general_metadata),
    }


# ----- writing a world -----

_SPLIT_IDS = {"train": 0, "heldout": 1, "validation": 2}
_STREAM_IDS = {"documents": 0, "captions": 1, "questions": 2, "caption_order": 3}


def write_parquet_shard(rows: list[dict[str, Any]], path: str) -> None:
    """OBELICS rows as one parquet file, written under a temporary name and renamed."""
    shard = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=OBELICS_SCHEMA), shard)
    fs, local = fsspec.core.url_to_fs(path)
    fs.makedirs(posixpath.dirname(local), exist_ok=True)
    write_atomic(local, shard.getvalue(), fs)


def split_rng(seed: int, split: str, stream: str) -> np.random.Generator:
    """Independent generator per (seed, split, stream): splits never share a random stream."""
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_IDS[split], _STREAM_IDS[stream]]))


def _write_documents(cfg: WorldConfig, split: str, count: int, out_dir: str, noise: WorldNoise,
                     questions: WorldQuestions, order: CaptionOrder) -> dict[str, int]:  # fmt: skip
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    for stale in fs.glob(posixpath.join(root, "shard-*.parquet")):
        fs.rm(stale)
    rng = split_rng(cfg.seed, split, "documents")
    per_shard = max(1, cfg.documents_per_shard)
    images = shards = 0
    with progress_bar(desc=f"{split} documents", total=count, unit="document") as bar:
        for start in range(0, count, per_shard):
            rows = []
            for doc_id in range(start, min(count, start + per_shard)):
                items = order.document(noise.document(random_document(rng, cfg, split, noise, questions)))
                images += sum(not isinstance(item, str) for item in items)
                general = {"url": f"shapes-world://{split}/{doc_id}", "split": split, "doc_id": doc_id}
                rows.append(document_row(items, cfg.image_size, general))
                bar.update()
            write_parquet_shard(rows, posixpath.join(out_dir, f"shard-{shards:05d}.parquet"))
            shards += 1
    return {f"{split}_documents": count, f"{split}_document_images": images, f"{split}_shards": shards,
            **noise.summary("document_images"), **questions.summary(), **order.summary("document_captions")}


def _write_caption_pairs(cfg: WorldConfig, split: str, count: int, jsonl_path: str, noise: WorldNoise,
                         order: CaptionOrder) -> dict[str, int]:  # fmt: skip
    fs, jsonl = fsspec.core.url_to_fs(jsonl_path)
    image_dir_name = posixpath.basename(jsonl).removesuffix(".jsonl")
    image_dir = posixpath.join(posixpath.dirname(jsonl), image_dir_name)
    if fs.exists(image_dir):
        fs.rm(image_dir, recursive=True)
    fs.makedirs(image_dir, exist_ok=True)
    from mmgen.data import entities  # entities build on this module's geometry, so it is imported here

    rng = split_rng(cfg.seed, split, "captions")
    lines = []
    for i in progress_bar(range(count), desc=f"{split} caption pairs", unit="pair"):
        if entities.uses_entity(rng, cfg):  # entity pairs stay clean: noise corrupts the world's plain scenes
            scene, caption = entities.entity_caption_pair(rng, cfg, split)
            image, metadata = render_scene(scene, cfg.image_size), scene
        else:
            image, caption, metadata = noise.caption_pair(i, _scene_in(split, rng, cfg, noise))
            caption = order.caption(metadata, caption)
        relative = f"{image_dir_name}/{i:06d}.png"
        write_atomic(posixpath.join(posixpath.dirname(jsonl), relative), png_bytes(image), fs)
        lines.append(json.dumps({"image": relative, "caption": caption, "metadata": metadata}))
    write_atomic(jsonl, "".join(line + "\n" for line in lines), fs)
    return {f"{split}_caption_pairs": count, **noise.summary("caption_pairs"), **order.summary("caption_pairs")}


def generate_world(cfg: WorldConfig, paths: RunPaths) -> dict[str, int]:
    """Write the train and held-out splits (OBELICS shards and caption pairs) and the validation caption pairs;
    return what was written."""
    from mmgen.data.caption_order import CaptionOrder  # builds on this module's captions, so it is imported here
    from mmgen.data.world_noise import WorldNoise  # builds on this module's scenes, so it is imported here
    from mmgen.data.world_questions import WorldQuestions  # likewise

    check_world_config(cfg)  # before writing anything
    counts: dict[str, int] = {}
    for split, documents, pairs in (
        ("train", cfg.train_documents, cfg.train_caption_pairs),
        ("heldout", cfg.heldout_documents, cfg.heldout_caption_pairs),
    ):
        # one caption-order stream per split: documents are written first, then the caption pairs
        order = CaptionOrder(cfg, split)
        counts |= _write_documents(cfg, split, documents, paths.corpus_split(split), WorldNoise(cfg, split, "documents"),
                                   WorldQuestions(cfg, split), order)
        counts |= _write_caption_pairs(cfg, split, pairs, paths.caption_pairs(split), WorldNoise(cfg, split, "captions"),
                                       order)
    # The SFT prompts for choosing settings (eval/compare_sft.py --eval.split validation), as many as the held-out
    # ones so a choice is measured as precisely as the figures it leads to. Written last from their own stream:
    # the splits above are the same bytes as before they existed, and these do not depend on the train counts.
    counts |= _write_caption_pairs(cfg, "validation", cfg.heldout_caption_pairs, paths.caption_pairs("validation"),
                                   WorldNoise(cfg, "validation", "captions"), CaptionOrder(cfg, "validation"))
    # the bank defines every entity, entities.json records their uses in what was just written (none: both removed)
    from mmgen.data.entities import write_entity_files

    counts |= write_entity_files(cfg, paths)
    return counts
