"""Web-like noise in the shapes world: something for curation to find (an option of the generator, off by default).

The clean world pairs every image with its exact description; web corpora do not. With the ``world.noise_*``
and ``world.concept_tail`` fields the generator corrupts its *training* split the way alt-text corpora are
corrupted, and records the truth of every corruption, so a curation step can be scored against it:

- ``misaligned``: the text describing an image describes another scene of the same split (alt text of
  another picture). Caption pairs: the caption; documents: each sentence that describes that image.
- ``uninformative``: that text becomes a filename or a link label ("IMG_0042.jpg", "click here").
- ``near_duplicate`` (caption pairs): the pair repeats an earlier clean pair's scene and caption, its image
  with a few pixels recoloured, so exact dedup misses it.
- ``concept_tail``: shape/colour combinations are drawn from a Zipf law over a seeded ranking instead of
  uniformly, so a few are many times more common than the rest (size, position and background stay uniform).

Ground truth: with any noise share above 0, the metadata of every training caption pair (the scene) and of
every image of a training document carries ``noise``: ``"clean"`` or the kind applied, and a near-duplicate
its ``duplicate_of`` row. Held-out (and validation) scenes are never corrupted or skewed, so figures measured
on them stay clean. The corruptions draw from their own random stream: without ``concept_tail`` a noisy world
shows, row for row, the scenes of the clean world with the same seed (near-duplicate rows excepted).
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Iterable, Mapping

import numpy as np
from PIL import Image

from mmgen.config.schema import WorldConfig
from mmgen.data.shapes_world import COLORS, SHAPES, Scene, describe_scene, random_scene, render_scene, scene_split, split_rng

KINDS = ("clean", "misaligned", "uninformative", "near_duplicate")
UNINFORMATIVE = ("IMG_{n:04d}.jpg", "DSC{n:05d}.JPG", "click here", "image", "untitled", "view larger image",
                 "thumbnail", "screenshot_{n}.png", "photo", "read more")  # fmt: skip
CONCEPTS = tuple(f"{color} {shape}" for shape in SHAPES for color in COLORS)
"""The 18 shape/colour combinations the tail skews, as a caption names them ('red circle')."""
NEAR_DUPLICATE_PIXELS = 4
"""Pixels recoloured in a near-duplicate image: invisible to the caption, enough to change its bytes."""
_TAIL_SEED = 3  # seeds the ranking of the concepts beside world.seed
_SENTENCE_END = re.compile(r"(?<=[.:])\s+")


def noise_enabled(cfg: WorldConfig) -> bool:
    return cfg.noise_misaligned + cfg.noise_uninformative + cfg.noise_near_duplicates > 0


def concept_probabilities(cfg: WorldConfig) -> np.ndarray:
    """Probability of each of ``CONCEPTS`` in training scenes: 1/rank^concept_tail over a ranking seeded by
    ``world.seed`` (uniform when the tail is 0)."""
    rank = np.empty(len(CONCEPTS), dtype=np.int64)
    rank[np.random.default_rng(np.random.SeedSequence([cfg.seed, _TAIL_SEED])).permutation(len(CONCEPTS))] = np.arange(len(CONCEPTS))
    weights = 1.0 / (rank + 1.0) ** cfg.concept_tail
    return weights / weights.sum()


def concept_counts(scenes: Iterable[dict]) -> Counter:
    """How many shapes of ``scenes`` (shapes-world ground truth, e.g. caption pairs' metadata) show each concept;
    metadata that is not a scene counts nothing."""
    shapes = (s for scene in scenes if isinstance(scene.get("shapes"), list) for s in scene["shapes"])
    return Counter(f"{s.get('color')} {s.get('shape')}" for s in shapes if f"{s.get('color')} {s.get('shape')}" in CONCEPTS)


def concept_groups(counts: Mapping[str, int], size: int = 6) -> dict[str, list[str]]:
    """The ``size`` most common concepts of ``counts`` ('head') and the ``size`` rarest ('tail'), most common
    first; ties in ``CONCEPTS`` order."""
    order = sorted(CONCEPTS, key=lambda c: -counts.get(c, 0))
    return {"head": order[:size], "tail": order[-size:]}


class WorldNoise:
    """The corruptions of one split's stream (documents or caption pairs); inactive outside the training split."""

    def __init__(self, cfg: WorldConfig, split: str, stream: str):
        self.cfg = cfg
        self.split = split
        self.active = split == "train" and noise_enabled(cfg)
        self.skews = split == "train" and cfg.concept_tail > 0
        self.rng = split_rng(cfg.seed, split, stream).spawn(1)[0]  # a child stream: the scenes' stream is untouched
        self.concept_p = concept_probabilities(cfg)
        self.counts: Counter = Counter()
        self._clean_rows: list[tuple[int, Scene]] = []

    # ----- concept tail (draws from the generator's own stream: it changes which scenes are drawn) -----

    def skew_concepts(self, scene: Scene, rng: np.random.Generator) -> Scene:
        """``scene`` with each shape's shape and colour redrawn from the tail (unchanged when not skewing)."""
        if not self.skews:
            return scene
        shapes = []
        for item in scene["shapes"]:
            color, shape = CONCEPTS[int(rng.choice(len(CONCEPTS), p=self.concept_p))].split()
            shapes.append({**item, "shape": shape, "color": color})
        return {**scene, "shapes": shapes}

    # ----- corruptions (their own stream) -----

    def _kind(self, *, near_duplicates: bool) -> str:
        c = self.cfg
        u = self.rng.random()
        for kind, share in (("misaligned", c.noise_misaligned), ("uninformative", c.noise_uninformative),
                            ("near_duplicate", c.noise_near_duplicates if near_duplicates else 0.0)):  # fmt: skip
            if u < share:
                return kind
            u -= share
        return "clean"

    def _filler(self) -> str:
        return UNINFORMATIVE[int(self.rng.integers(len(UNINFORMATIVE)))].format(n=int(self.rng.integers(1, 10000)))

    def _other_caption(self, caption: str) -> str:
        """The caption of another scene of this split (the alt text of some other picture)."""
        while True:
            other = random_scene(self.rng, self.cfg)
            if scene_split(other) == self.split and describe_scene(other) != caption:
                return describe_scene(other)

    def caption_pair(self, row: int, scene: Scene) -> tuple[Image.Image, str, dict[str, Any]]:
        """(image, caption, metadata) of caption pair ``row`` of ``scene``, corrupted as drawn."""
        if not self.active:
            return render_scene(scene, self.cfg.image_size), describe_scene(scene), scene
        kind = self._kind(near_duplicates=bool(self._clean_rows))
        self.counts[kind] += 1
        if kind == "near_duplicate":
            original, scene = self._clean_rows[int(self.rng.integers(len(self._clean_rows)))]
            image = self._recolour_pixels(render_scene(scene, self.cfg.image_size))
            return image, describe_scene(scene), {**scene, "noise": kind, "duplicate_of": original}
        caption = describe_scene(scene)
        if kind == "clean":
            self._clean_rows.append((row, scene))
        elif kind == "misaligned":
            caption = self._other_caption(caption)
        else:
            caption = self._filler()
        return render_scene(scene, self.cfg.image_size), caption, {**scene, "noise": kind}

    def _recolour_pixels(self, image: Image.Image) -> Image.Image:
        pixels = np.array(image)
        ys = self.rng.integers(pixels.shape[0], size=NEAR_DUPLICATE_PIXELS)
        xs = self.rng.integers(pixels.shape[1], size=NEAR_DUPLICATE_PIXELS)
        pixels[ys, xs] = self.rng.integers(0, 256, size=(NEAR_DUPLICATE_PIXELS, 3), dtype=np.uint8)
        return Image.fromarray(pixels, mode="RGB")

    def document(self, items: list[str | Scene]) -> list[str | Scene]:
        """A document's items with each image's describing sentences corrupted as drawn; each scene records
        ``noise`` (an image no sentence describes, e.g. an unnarrated edit, stays clean)."""
        if not self.active:
            return items
        items = list(items)
        for k, item in enumerate(items):
            if isinstance(item, str):
                continue
            kind = self._kind(near_duplicates=False)
            caption = describe_scene(item)
            if kind != "clean":
                replacement = self._other_caption(caption) if kind == "misaligned" else None
                touched = False
                for j, text in enumerate(items):
                    if isinstance(text, str) and caption in text:
                        sentences = [(s.replace(caption, replacement) if replacement else self._filler())
                                     if caption in s else s for s in _SENTENCE_END.split(text)]  # fmt: skip
                        items[j] = " ".join(sentences)
                        touched = True
                kind = kind if touched else "clean"
            self.counts[kind] += 1
            items[k] = {**item, "noise": kind}
        return items

    def summary(self, what: str) -> dict[str, int]:
        """Counts by kind, keyed like the generator's counts (e.g. 'train_caption_pairs_misaligned')."""
        return {f"{self.split}_{what}_{kind}": self.counts[kind] for kind in KINDS if self.active and kind in self.counts}

