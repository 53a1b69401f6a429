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

import time

import torch

from mmgen.cli import run_cli, start_stage
from mmgen.device import generation_device
from mmgen.eval.classify import write_classification
from mmgen.eval.image_folder import folder_classification
from mmgen.eval.shapes_eval import classify_eval, eval_scenes
from mmgen.model.checkpoint import load_pretrained_model
from mmgen.tokenizers.run import load_run_tokenizer


def main() -> None:
    stage = start_stage("classify", __doc__)
    cfg, paths = stage.cfg, stage.paths
    device = generation_device()
    model, step = load_pretrained_model(cfg, paths, device)
    tokenizer = load_run_tokenizer(paths, device)
    start = time.time()
    skipped = None
    with torch.inference_mode():
        if cfg.eval.image_folder:
            results, skipped = folder_classification(cfg, model, tokenizer)
        else:
            scenes = eval_scenes(cfg.eval.classify_images, cfg.world, seed=cfg.eval.seed + 2, max_shapes=1,
                                 split=cfg.eval.split)
            results = classify_eval(model, tokenizer, scenes, cfg.eval, cfg.world.image_size)
    seconds = time.time() - start
    images = len(next(iter(results.values()))["predictions"])
    summary = {"step": step, "seconds": seconds, "images_per_second": images / seconds}
    for line in write_classification(paths.classify_dir, results, summary, skipped=skipped):
        print(line)
    print(f"wrote {paths.classify_dir}/results.json and confusion PNGs ({images / seconds:.1f} images/s)")


if __name__ == "__main__":
    run_cli(main)
