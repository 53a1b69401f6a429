"""Captions that name a scene's shapes in a random order (``world.caption_shuffle``, training split only).

The world's canonical caption lists shapes in reading order (top left first). A decoder trained only on
such captions can write every word of one by walking the image in that order: the next object is the next
one in the grid, and each of its words is read where the walk stands. Asking about an object by what it
looks like ("Where is the orange square?") needs the opposite lookup, from a description to the object, and
that is what the demo's fine-tuned model fails at (wrong answers are mostly another object's attribute). A
caption in a random order asks for that lookup in every word after the first shape's: after "a small
orange", only the object that is small and orange tells what comes next, and after "square", only that
object's cell. Each caption keeps its words and meaning; only the order of its shapes changes, so captions
are still scored by the same attribute matching, and held-out and validation items keep reading order.

The order is drawn from a stream of its own, so a world written with the option has the same scenes,
documents and caption pairs as one without it, only some captions reordered.
"""

from __future__ import annotations

from collections import Counter

from mmgen.config.schema import WorldConfig
from mmgen.data.shapes_world import Scene, describe_scene, split_rng


class CaptionOrder:
    """Reorders the captions of one split; inactive outside the training split or with ``caption_shuffle`` 0."""

    def __init__(self, cfg: WorldConfig, split: str):
        self.share = cfg.caption_shuffle if split == "train" else 0.0
        self.split = split
        self.rng = split_rng(cfg.seed, split, "caption_order")
        self.counts: Counter[str] = Counter()

    def _reordered(self, scene: Scene, what: str) -> str | None:
        """A caption of ``scene`` in a random order other than reading order, or None when this one keeps it."""
        n = len(scene.get("shapes") or [])
        if self.share <= 0 or n < 2 or self.rng.random() >= self.share:
            return None
        order = list(range(n))
        while order == sorted(order):  # a draw of reading order would be no change
            order = [int(i) for i in self.rng.permutation(n)]
        self.counts[what] += 1
        return describe_scene(scene, order)

    def caption(self, scene: Scene, caption: str) -> str:
        """A caption pair's caption: reordered as drawn when it is the scene's canonical one (a corrupted or
        replaced caption stays as it is)."""
        if caption != describe_scene(scene):
            return caption
        return self._reordered(scene, "caption_pairs") or caption

    def document(self, items: list[str | Scene]) -> list[str | Scene]:
        """A document's items with every sentence that states an image's canonical caption stating it in that
        image's drawn order instead (the same order for every mention of that image)."""
        if self.share <= 0:
            return items
        items = list(items)
        # longest caption first: a two-shape scene's caption can sit inside a three-shape one's, and is then
        # left alone there (reordering it inside would still state the larger scene, in another order)
        for canonical, scene in sorted(((describe_scene(item), item) for item in items if not isinstance(item, str)),
                                       key=lambda pair: -len(pair[0])):
            if not any(isinstance(text, str) and canonical in text for text in items):
                continue
            reordered = self._reordered(scene, "document_captions")
            if reordered is not None:
                items = [text.replace(canonical, reordered) if isinstance(text, str) else text for text in items]
        return items

    def summary(self, what: str) -> dict[str, int]:
        """Captions reordered, keyed like the generator's counts (e.g. 'train_caption_pairs_reordered')."""
        return {f"{self.split}_{what}_reordered": self.counts[what]} if self.share > 0 else {}
