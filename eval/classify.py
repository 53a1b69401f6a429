"""Generative classification with the pretrained decoder, by likelihood in both directions.

    python eval/classify.py --config demo                                   # held-out shapes: shape and colour
    python eval/classify.py --config demo --eval.image_folder DIR --eval.template "Here is a drawing of a {label}."

With an ImageFolder (one subfolder per class) every image is scored against
every class name put into ``eval.template``: log p(image | template) and
log p(template | image) (``eval.calibrate`` subtracts the unconditional
likelihood). Without one, held-out shapes-world images are classified by shape
and colour, each label put into the image's own caption. Writes
``<run>/eval/classify/results.json`` (top-1/top-5, per-class accuracy,
confusion matrices, chance levels, images/s) and one confusion-matrix PNG per
task and direction.
"""

import itertools
import json
import posixpath
import time

import fsspec
import torch

from mmgen.cli import run_cli, start_stage
from mmgen.data.curation import Curator
from mmgen.data.imagefolder import class_label, list_classes, read_shard
from mmgen.data.reading import ReadStats
from mmgen.device import generation_device
from mmgen.eval.attributes import label_chance
from mmgen.eval.classify import (
    classification_metrics,
    confusion_png,
    image_given_label_scores,
    label_given_image_scores,
)
from mmgen.eval.shapes_eval import classify_eval, eval_scenes
from mmgen.files import write_atomic
from mmgen.model.checkpoint import load_trained_model
from mmgen.tokenizers.run import load_run_tokenizer


def read_folder(cfg) -> tuple[list, list[int], list[str], ReadStats]:
    """Images, class index per image and class names of an ImageFolder (mmgen.data.imagefolder reads it)."""
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


def folder_tasks(cfg, model, tokenizer) -> dict:
    e = cfg.eval
    images, truth, classes, stats = read_folder(cfg)
    skipped = [f"{source} row {row} ({reason})" for source, row, reason in stats.examples]
    if stats.skipped:
        print(f"skipped {sum(stats.skipped.values())} image(s): {dict(stats.skipped)}, e.g. {skipped[0]}")
    if not images:
        raise FileNotFoundError(f"no decodable images under {e.image_folder}")
    print(f"{len(images)} images, {len(classes)} classes from {e.image_folder}")
    vocab = tokenizer.vocab
    grids = tokenizer.image_tok.encode(images)
    texts = [e.template.format(label=c) for c in classes]
    prompts = [tokenizer.encode_parts([t], eos=False) for t in texts]
    follows = [tokenizer.encode_text(t) for t in texts]
    kwargs = dict(batch_size=e.batch_size, calibrate=e.calibrate)
    scores = {
        "image_given_label": image_given_label_scores(model, vocab, grids, [prompts] * len(grids), **kwargs),
        "label_given_image": label_given_image_scores(model, vocab, grids, [vocab.bos], [follows] * len(grids),
                                                      **kwargs),
    }
    results = {}
    for direction, s in scores.items():
        metrics = classification_metrics(s, truth, classes)
        metrics["chance"] = label_chance([classes[t] for t in truth], metrics["predictions"], seed=e.seed)
        metrics["labels"] = classes
        results[f"folder/{direction}"] = metrics
    return results | {"skipped": skipped}


def main() -> None:
    stage = start_stage("classify", __doc__)
    cfg, paths = stage.cfg, stage.paths
    device = generation_device()
    model, step = load_trained_model(paths.pretrain_dir, checkpoint_folder=cfg.checkpoint.folder,
                                     step=cfg.sample.checkpoint_step, device=device)
    tokenizer = load_run_tokenizer(paths, device)
    start = time.time()
    with torch.inference_mode():
        if cfg.eval.image_folder:
            results = folder_tasks(cfg, model, tokenizer)
        else:
            scenes = eval_scenes(cfg.eval.classify_images, cfg.world, seed=cfg.eval.seed + 2, max_shapes=1,
                                 split=cfg.eval.split)
            results = classify_eval(model, tokenizer, scenes, cfg.eval, cfg.world.image_size)
    seconds = time.time() - start
    out = paths.classify_dir
    fs, local = fsspec.core.url_to_fs(out)
    fs.makedirs(local, exist_ok=True)
    for name, task in results.items():
        if name == "skipped":
            continue
        with fs.open(posixpath.join(local, name.replace("/", "-") + "-confusion.png"), "wb") as f:
            f.write(confusion_png(task["confusion"], task["labels"]))
        lo, hi = task["ci95"]
        print(f"{name}: top-1 {task['top1']:.3f} [95 % interval {lo:.3f}, {hi:.3f}; {len(task['predictions'])} images] "
              f"(chance {task['chance']:.3f}), top-5 {task['top5']:.3f}, "
              f"per class {json.dumps(task['per_class'])}")
    images = len(next(t for n, t in results.items() if n != "skipped")["predictions"])
    summary = {"step": step, "seconds": seconds, "images_per_second": images / seconds, "tasks": results}
    write_atomic(posixpath.join(out, "results.json"), json.dumps(summary, indent=1))
    print(f"wrote {out}/results.json and confusion PNGs ({images / seconds:.1f} images/s)")


if __name__ == "__main__":
    run_cli(main)
