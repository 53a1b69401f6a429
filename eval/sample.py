"""Sample interleaved documents from the pretrained decoder.

    python eval/sample.py --config demo --prompt "a large red circle"

Text continues the prompt; when the model opens an image (or right away, with
``sample.force_image``) exactly h·w image codes follow, then end-of-image is
forced and text resumes. Writes ``<run>/samples/sample-K.txt``, its PNGs and
``sample-K.json`` (the token stream).
"""

import json
import time

import fsspec
import torch

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.device import default_device
from mmgen.generation.render import render_sample
from mmgen.generation.sampler import sample
from mmgen.model.checkpoint import load_trained_model
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import TextTokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab


def main() -> None:
    cfg = load_config(description=__doc__, aliases={"prompt": "sample.prompt", "seed": "sample.seed"})
    paths = RunPaths(cfg.run_dir)
    s = cfg.sample
    start = time.time()
    device = default_device()
    if device.type == "cpu":
        # one-token decode steps are tiny: a second thread costs more in handoff than it computes
        torch.set_num_threads(1)
    tokenizer = MultimodalTokenizer(
        Vocab.load(paths.vocab), TextTokenizer.load(paths.text_tokenizer), ImageTokenizer.load(paths.image_tokenizer, device=device)
    )
    model, step = load_trained_model(paths.pretrain_dir, checkpoint_folder=cfg.checkpoint.folder, step=s.checkpoint_step, device=device)
    prompt = tokenizer.encode_parts([s.prompt], eos=False)
    print(f"sampling {s.num_samples} document(s) from step {step} for prompt {s.prompt!r}")
    outputs = sample(
        model, tokenizer.vocab, [prompt] * s.num_samples,
        max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
        max_images=s.max_images, force_image=s.force_image, seed=s.seed,
    )
    records = []
    for k, new_ids in enumerate(outputs):
        record = render_sample(tokenizer, prompt, new_ids, paths.samples_dir, f"sample-{k}")
        records.append(record)
        print(f"--- sample {k} ---\n{record['text']}")
    print(f"wrote {len(records)} sample(s) to {paths.samples_dir}")
    with fsspec.open(paths.stage_timing("sample"), "w", auto_mkdir=True) as f:
        json.dump({"seconds": time.time() - start, "step": step, "images": sum(len(r["images"]) for r in records)}, f)


if __name__ == "__main__":
    with torch.inference_mode():
        run_cli(main)
