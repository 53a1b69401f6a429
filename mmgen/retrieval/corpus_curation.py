"""The curation pipeline of ``data/curate.py``: documents in, curated documents and a record of every step out.

Steps, in order, each optional and each recorded (documents in and out, removals by reason, its settings):

1. ``read``: the corpus readers' heuristic filters and exact dedup (``data.*``), counted by reason;
2. ``assign``: MMC4 images that arrive without a sentence are placed before their best-matching one;
3. ``near_duplicates``: an image almost equal (embedding cosine) to an earlier kept one is removed;
4. ``clip_score``: each image is scored against its document's best-matching sentence (for a caption pair,
   its caption) and removed below the threshold (``clip_threshold`` for pairs, ``clip_threshold_documents``
   for interleaved documents, whose narration matches an image less well), or outside the best fraction
   (DataComp);
5. ``recaption`` (BLIP's CapFilt): the images of caption pairs step 4 removed are captioned by the trained
   decoder, and a new caption that scores at least ``recaption_threshold`` makes the pair again;
6. ``concepts``: MetaCLIP's balancing of the texts against a concept list (``mmgen.data.concepts``), dropping
   documents once or (``concept_balance sample``) keeping them all with a sampling probability per pass;
7. ``clusters``: at most ``cluster_cap`` documents per FAISS k-means cluster of image embeddings.

A removed image removes a caption pair or ImageFolder document; an interleaved document (OBELICS, MMC4) only
loses the image and keeps its text. When images carry the shapes world's ``noise`` ground truth
(``world.noise_*``), the record also says what each step did to each kind of corruption.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from mmgen.config.schema import CurateConfig
from mmgen.data.concepts import balance_by_concept, concept_counts, match_concepts, sampling_probabilities
from mmgen.data.curation import merge_texts
from mmgen.data.document import Document
from mmgen.data.reading import SAMPLING_KEY
from mmgen.eval.attributes import caption_states_scene
from mmgen.generation.captioning import caption_images, sft_caption_images
from mmgen.retrieval.curation import (alignment_scores, assign_images_to_sentences, balance_by_cluster, repeats_earlier,
                                      score_threshold)
from mmgen.retrieval.embedder import Embedder

PAIR_KINDS = ("captions", "imagefolder")
"""Corpus kinds whose documents are one image and its text: losing the image loses the document."""
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
EMBED_BATCH = 256

Captioner = Callable[[Sequence[Image.Image]], list[str]]
"""Images → one caption each (the trained decoder, ``decoder_captioner``)."""


def sentences_of(doc: Document) -> list[str]:
    return [s.strip() for text in doc.texts for s in _SENTENCE_END.split(text) if s.strip()]


@dataclass
class StepRecord:
    name: str
    settings: dict[str, Any]
    documents_in: int
    documents_out: int = 0
    removed: Counter = field(default_factory=Counter)
    """Documents removed, by reason."""
    images_removed: Counter = field(default_factory=Counter)
    """Images removed from documents that stayed (interleaved documents), by reason."""
    added: int = 0
    """Documents the step made (recaptioned pairs)."""
    changed: int = 0
    """Documents the step rewrote in place (images placed at sentences)."""

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.name, "settings": self.settings, "documents_in": self.documents_in,
                "documents_out": self.documents_out, "removed": dict(self.removed),
                "images_removed": dict(self.images_removed), "added": self.added, "changed": self.changed}  # fmt: skip


@dataclass
class CurationRecord:
    kind: str
    steps: list[StepRecord] = field(default_factory=list)
    read: dict[str, Any] = field(default_factory=dict)
    clip_scores: list[float] = field(default_factory=list)
    clip_threshold: float | None = None
    clip_kinds: list[str] = field(default_factory=list)
    """The noise ground truth of each scored image ('' where there is none), for the report's plot."""
    recaption_scores: list[float] = field(default_factory=list)
    concepts: dict[str, Any] = field(default_factory=dict)
    """Concept names with their document counts before and after balancing."""
    clusters: dict[str, Any] = field(default_factory=dict)
    """Documents per cluster before and after balancing."""
    ground_truth: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per noise kind: images that reached the CLIP filter, that it kept, and that are in the output."""
    examples: dict[str, list[Document]] = field(default_factory=dict)
    """Removed documents (or one-image documents of removed images) by reason, for the report."""
    max_examples: int = 6

    def example(self, reason: str, doc: Document) -> None:
        shown = self.examples.setdefault(reason, [])
        if len(shown) < self.max_examples:
            shown.append(doc)

    def to_dict(self) -> dict[str, Any]:
        def rounded(xs: list[float]) -> list[float]:
            return [round(float(x), 4) for x in xs]

        return {"kind": self.kind, "read": self.read, "steps": [s.to_dict() for s in self.steps],
                "clip_threshold": self.clip_threshold, "clip_scores": rounded(self.clip_scores), "clip_kinds": self.clip_kinds,
                "recaption_scores": rounded(self.recaption_scores), "concepts": self.concepts,
                "clusters": self.clusters, "ground_truth": self.ground_truth,
                "examples": {r: [" ".join(d.texts)[:300] for d in docs] for r, docs in self.examples.items()}}  # fmt: skip


class ImageEmbeddings:
    """Embeddings of the corpus's images, computed once (in batches) and looked up by image object."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self._rows: dict[int, np.ndarray] = {}

    def of(self, images: Sequence[Image.Image]) -> np.ndarray:
        missing = list({id(im): im for im in images if id(im) not in self._rows}.values())
        for start in range(0, len(missing), EMBED_BATCH):
            batch = missing[start : start + EMBED_BATCH]
            for image, row in zip(batch, self.embedder.embed_images(batch)):
                self._rows[id(image)] = row
        if not images:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        return np.stack([self._rows[id(im)] for im in images])


def embed_texts(embedder: Embedder, texts: Sequence[str]) -> np.ndarray:
    if not texts:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    return np.concatenate([embedder.embed_texts(texts[i : i + EMBED_BATCH]) for i in range(0, len(texts), EMBED_BATCH)])


def _without_images(doc: Document, drop: set[int]) -> Document:
    """``doc`` less the images whose ``id`` is in ``drop``; adjacent texts merged."""
    parts, meta, images = [], [], iter(doc.image_metadata)
    for part in doc.parts:
        if isinstance(part, str):
            parts.append(part)
            continue
        m = next(images, {})
        if id(part) not in drop:
            parts.append(part)
            meta.append(m)
    return Document(parts=merge_texts(parts), image_metadata=meta, metadata=doc.metadata)


class Pipeline:
    """Runs the configured steps over documents of one corpus kind, filling a ``CurationRecord``."""

    def __init__(self, cfg: CurateConfig, kind: str, *, embedder: Callable[[], Embedder],
                 captioner: Callable[[], Captioner] | None = None, concepts: list[str] | None = None):  # fmt: skip
        self.cfg = cfg
        self.kind = kind
        self._embedder_factory = embedder
        self._captioner_factory = captioner
        self._embeddings: ImageEmbeddings | None = None
        self.concepts = concepts
        self.record = CurationRecord(kind=kind, max_examples=cfg.examples)
        self._noise: dict[int, str] = {}

    @property
    def embeddings(self) -> ImageEmbeddings:
        """Loaded on first use: a run without embedding steps needs no encoder."""
        if self._embeddings is None:
            self._embeddings = ImageEmbeddings(self._embedder_factory())
        return self._embeddings

    def run(self, docs: list[Document]) -> list[Document]:
        for doc in docs:
            for image, meta in zip(doc.images, doc.image_metadata):
                if isinstance(meta.get("noise"), str):
                    self._noise[id(image)] = meta["noise"]
        c = self.cfg
        if self.kind == "mmc4" and c.assign_images:
            docs = self.assign(docs)
        if c.near_duplicate_similarity > 0:
            docs = self.near_duplicates(docs)
        removed_pairs: list[Document] = []
        if c.clip_filter != "off":
            docs, removed_pairs = self.clip_score(docs)
        if c.recaption and c.clip_filter != "off":
            docs = docs + self.recaption(removed_pairs)
        if c.concepts:
            docs = self.balance_concepts(docs)
        if c.clusters:
            docs = self.balance_clusters(docs)
        self._tally_output(docs)
        return docs

    # ----- steps -----

    def _step(self, name: str, settings: dict[str, Any], docs: list[Document]) -> StepRecord:
        step = StepRecord(name, settings, documents_in=len(docs))
        self.record.steps.append(step)
        return step

    def _drop_images(self, docs: list[Document], drop: set[int], reason: str, step: StepRecord) -> tuple[list[Document], list[Document]]:
        """(documents kept, pair documents removed): pairs lose the document, interleaved ones the image."""
        kept, removed = [], []
        for doc in docs:
            lost = [im for im in doc.images if id(im) in drop]
            if not lost:
                kept.append(doc)
            elif self.kind in PAIR_KINDS:
                step.removed[reason] += 1
                self.record.example(reason, doc)
                removed.append(doc)
            else:
                step.images_removed[reason] += len(lost)
                for image in lost:
                    self.record.example(reason, Document(parts=sentences_of(doc)[:2] + [image]))
                kept.append(_without_images(doc, drop))
        step.documents_out = len(kept)
        return kept, removed

    def assign(self, docs: list[Document]) -> list[Document]:
        step = self._step("assign", {}, docs)
        out = []
        for doc in docs:
            metas = doc.image_metadata
            sentences = sentences_of(doc)
            if not metas or not sentences or any(m.get("matched_text_index") is not None for m in metas):
                out.append(doc)
                continue
            where = assign_images_to_sentences(self.embeddings.embedder, sentences, doc.images)
            parts: list = []
            for j, sentence in enumerate(sentences):
                for i in np.flatnonzero(where == j):
                    parts.append(doc.images[i])
                parts.append(sentence)
            order = [i for j in range(len(sentences)) for i in np.flatnonzero(where == j)]
            meta = [{**metas[i], "matched_text_index": int(where[i])} for i in order]
            out.append(Document(parts=merge_texts(parts), image_metadata=meta, metadata=doc.metadata))
            step.changed += 1
        step.documents_out = len(out)
        return out

    def near_duplicates(self, docs: list[Document]) -> list[Document]:
        step = self._step("near_duplicates", {"similarity": self.cfg.near_duplicate_similarity}, docs)
        images = [im for doc in docs for im in doc.images]
        repeat = repeats_earlier(self.embeddings.of(images), self.cfg.near_duplicate_similarity)
        kept, _ = self._drop_images(docs, {id(im) for im, r in zip(images, repeat) if r}, "near_duplicate", step)
        return kept

    def _image_scores(self, docs: list[Document]) -> tuple[list[Image.Image], np.ndarray]:
        """Every image with its cosine to its document's best-matching sentence."""
        images, scores = [], []
        self.embeddings.of([im for doc in docs for im in doc.images])  # in batches, before the per-document lookups
        for start in range(0, len(docs), EMBED_BATCH):
            batch = docs[start : start + EMBED_BATCH]
            sentences = [sentences_of(d) or [""] for d in batch]
            text = embed_texts(self.embeddings.embedder, [s for ss in sentences for s in ss])
            offset = 0
            for doc, ss in zip(batch, sentences):
                t = text[offset : offset + len(ss)]
                offset += len(ss)
                if doc.images:
                    images += doc.images
                    scores.append((self.embeddings.of(doc.images) @ t.T).max(axis=1))
        return images, np.concatenate(scores) if scores else np.zeros(0)

    def clip_score(self, docs: list[Document]) -> tuple[list[Document], list[Document]]:
        c = self.cfg
        threshold = c.clip_threshold if self.kind in PAIR_KINDS else c.clip_threshold_documents
        settings = {"threshold": threshold} if c.clip_filter == "threshold" else {"keep_fraction": c.clip_keep_fraction}
        step = self._step("clip_score", settings, docs)
        images, scores = self._image_scores(docs)
        threshold = score_threshold(scores, **settings)
        self.record.clip_scores = scores.tolist()
        self.record.clip_threshold = threshold
        self.record.clip_kinds = [self._noise.get(id(im), "") for im in images]
        drop = {id(im) for im, s in zip(images, scores) if s < threshold}
        for image, s in zip(images, scores):
            kind = self._noise.get(id(image))
            if kind is not None:
                truth = self.record.ground_truth.setdefault(kind, Counter())
                truth["scored"] += 1
                truth["kept_by_clip"] += int(s >= threshold)
        return self._drop_images(docs, drop, "clip_score", step)

    def recaption(self, removed: list[Document]) -> list[Document]:
        threshold = self.cfg.recaption_threshold
        settings = {"threshold": threshold, "captioner": self.cfg.captioner or "pretrained"}
        step = self._step("recaption", settings, removed)
        if not removed:
            return []
        images = [doc.images[0] for doc in removed]
        captions = self._captioner_factory()(images)
        scores = alignment_scores(self.embeddings.of(images), embed_texts(self.embeddings.embedder, captions))
        self.record.recaption_scores = scores.tolist()
        out = []
        for doc, caption, score in zip(removed, captions, scores):
            accepted = bool(caption) and float(score) >= threshold
            kind = self._noise.get(id(doc.images[0]))
            if kind is not None:  # the world's ground truth: is the new caption right, and did the filter take it?
                truth = self.record.ground_truth[kind]
                right = caption_states_scene(caption, doc.image_metadata[0])
                truth["recaption_correct"] += int(right)
                truth["recaptioned"] += int(accepted)
                truth["recaptioned_correct"] += int(accepted and right)
            if not accepted:
                step.removed["not_aligned"] += 1
                continue
            parts = [caption if isinstance(p, str) else p for p in doc.parts]
            meta = {**doc.image_metadata[0], "recaptioned_from": " ".join(doc.texts)} if doc.image_metadata else {}
            out.append(Document(parts=merge_texts(parts), image_metadata=[meta], metadata=doc.metadata))
        step.added = step.documents_out = len(out)
        return out

    def balance_concepts(self, docs: list[Document]) -> list[Document]:
        """MetaCLIP's balancing: the documents it does not keep removed ('drop'), or every document kept with its
        chance to be kept as its sampling probability ('sample'; ``after`` then counts documents per pass)."""
        c = self.cfg
        step = self._step("concepts", {"concepts": c.concepts, "cap": c.concept_cap, "keep_unmatched": c.keep_unmatched,
                                       "balance": c.concept_balance}, docs)  # fmt: skip
        n = len(self.concepts)
        matches = match_concepts([" ".join(d.texts) for d in docs], self.concepts)
        before = concept_counts(matches, n).tolist()
        if c.concept_balance == "sample":
            keep = np.array([bool(m) or c.keep_unmatched for m in matches])
            probabilities = sampling_probabilities(matches, n, cap=c.concept_cap)
            for doc, p in zip(docs, probabilities):
                if p < 1.0:
                    doc.metadata[SAMPLING_KEY] = float(p)
            per_pass = np.zeros(n)
            for m, p, k in zip(matches, probabilities, keep):
                per_pass[list(m)] += p * k
            self.record.concepts = {"names": list(self.concepts), "before": before, "after": per_pass.round(1).tolist(),
                                    "per_pass": True}
        else:
            keep = balance_by_concept(matches, n, cap=c.concept_cap, keep_unmatched=c.keep_unmatched, seed=c.seed)
            self.record.concepts = {"names": list(self.concepts), "before": before,
                                    "after": concept_counts([m for m, k in zip(matches, keep) if k], n).tolist()}
        return self._keep(docs, keep, step, lambda m: "concept_unmatched" if not m else "concept_cap", matches)

    def balance_clusters(self, docs: list[Document]) -> list[Document]:
        c = self.cfg
        step = self._step("clusters", {"clusters": c.clusters, "cap": c.cluster_cap}, docs)
        with_images = [i for i, d in enumerate(docs) if d.images]
        if not with_images:
            step.documents_out = len(docs)
            return docs
        embeddings = np.stack([self.embeddings.of(docs[i].images).mean(axis=0) for i in with_images])
        embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True) + 1e-9
        keep_images, cluster = balance_by_cluster(embeddings, clusters=c.clusters, cap=c.cluster_cap, seed=c.seed)
        keep = np.ones(len(docs), dtype=bool)
        keep[with_images] = keep_images
        sizes = np.bincount(cluster, minlength=c.clusters)
        self.record.clusters = {"before": sorted(sizes.tolist(), reverse=True),
                                "after": sorted(np.bincount(cluster[keep_images], minlength=c.clusters).tolist(), reverse=True)}
        return self._keep(docs, keep, step, lambda _: "cluster_cap", [None] * len(docs))

    def _keep(self, docs: list[Document], keep: np.ndarray, step: StepRecord, reason: Callable[[Any], str],
              why: Sequence[Any]) -> list[Document]:  # fmt: skip
        kept = []
        for doc, k, w in zip(docs, keep, why):
            if k:
                kept.append(doc)
            else:
                step.removed[reason(w)] += 1
                self.record.example(reason(w), doc)
        step.documents_out = len(kept)
        return kept

    def _tally_output(self, docs: list[Document]) -> None:
        for doc in docs:
            for image in doc.images:
                kind = self._noise.get(id(image))
                if kind is not None:
                    self.record.ground_truth.setdefault(kind, Counter())["in_output"] += 1
        self.record.ground_truth = {k: dict(v) for k, v in sorted(self.record.ground_truth.items())}


def decoder_captioner(model, tokenizer, *, prompt: str, lead: str, max_tokens: int, seed: int = 0,
                      fine_tuned: bool = False) -> Captioner:
    """Captions by the trained decoder after ``prompt``, the image and ``lead``, or (``fine_tuned``) asked as its
    SFT caption task is; the lead and the final stop are left out, so a caption reads like the corpus's ('a large
    red circle …')."""
    shown = "" if fine_tuned else lead  # the text each caption starts with, left out

    def captioner(images: Sequence[Image.Image]) -> list[str]:
        if fine_tuned:
            captions = sft_caption_images(model, tokenizer, images, max_tokens=max_tokens, seed=seed)
        else:
            captions = caption_images(model, tokenizer, images, prompt=prompt, lead=lead, max_tokens=max_tokens,
                                      seed=seed)
        return [c[len(shown):].strip().removesuffix(".").strip() if c.startswith(shown) else c.strip()
                for c in captions]

    return captioner
