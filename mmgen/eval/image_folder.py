"""Generative classification of an ImageFolder: every image scored against every class name.

The class folders' names go into ``eval.template`` (e.g. "Here is a drawing of a {label}."); each image is
classified both ways (``classify_both_ways``): by log p(image | template) and by log p(template | BOS, image).
"""

from __future__ import annotations

import itertools

from mmgen.config.schema import ExperimentConfig
from mmgen.data.curation import Curator
from mmgen.data.imagefolder import class_label, list_classes, read_shard
from mmgen.data.reading import ReadStats
from mmgen.eval.classify import classify_both_ways


def read_folder(cfg: ExperimentConfig) -> tuple[list, list[int], list[str], ReadStats]:
    """Images, class index per image and class names of ``eval.image_folder`` (``eval.images_per_class`` at most
    per class; 0: all), read by ``mmgen.data.imagefolder`` without curation."""
    e = cfg.eval
    fs, class_dirs = list_classes(e.image_folder)
    curator, stats = Curator(cfg.data, curate=False), ReadStats()
    images, truth = [], []
    for index, class_dir in enumerate(class_dirs):
        docs = read_shard(fs, class_dir, class_dir, curator, stats, label_index=index)
        for doc in itertools.islice(docs, e.images_per_class or None):
            images.append(doc.images[0])
            truth.append(index)
    return images, truth, [class_label(d) for d in class_dirs], stats


def folder_classification(cfg: ExperimentConfig, model, tokenizer, log=print) -> tuple[dict, list[str]]:
    """``{"folder/<direction>": metrics}`` and the skipped files (source, row, reason) as lines."""
    e = cfg.eval
    images, truth, classes, stats = read_folder(cfg)
    skipped = [f"{source} row {row} ({reason})" for source, row, reason in stats.examples]
    if stats.skipped:
        log(f"skipped {sum(stats.skipped.values())} image(s): {dict(stats.skipped)}, e.g. {skipped[0]}")
    if not images:
        raise FileNotFoundError(f"no decodable images under {e.image_folder}")
    log(f"{len(images)} images, {len(classes)} classes from {e.image_folder}")
    vocab = tokenizer.vocab
    grids = tokenizer.image_tok.encode(images)
    texts = [e.template.format(label=c) for c in classes]
    prompts = [tokenizer.encode_parts([t], eos=False) for t in texts]
    follows = [tokenizer.encode_text(t) for t in texts]
    both = classify_both_ways(model, vocab, grids, truth, classes, prompts=[prompts] * len(grids), lead=[vocab.bos],
                              follows=[follows] * len(grids), batch_size=e.batch_size, calibrate=e.calibrate,
                              seed=e.seed)  # fmt: skip
    return {f"folder/{direction}": metrics for direction, metrics in both.items()}, skipped
