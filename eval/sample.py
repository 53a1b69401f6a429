"""Sample interleaved documents from the pretrained decoder.

    python eval/sample.py --config demo --prompt "a large red circle"
    python eval/sample.py --config demo --prompt "Look at this picture." --sample.prompt_images a.png
    python eval/sample.py --config demo --prompt "Draw" --sample.context "Here is a drawing of a red circle.|Another one."

Text continues the prompt (which may hold images: ``sample.prompt_images``, and
be preceded by retrieved context: ``sample.context``);
when the model opens an image (or right away, with ``sample.force_image``)
exactly h·w image codes follow, then end-of-image is forced and text resumes.
Guidance (``sample.cfg_scale``, ``sample.image_cfg_scale``, ``sample.cdk_k``)
and the repetition penalty are in the ``sample`` section. Writes
``<run>/samples/sample-K.txt``, its PNGs, ``sample-K.json`` (the token stream)
and ``index.html`` (every sample with its images inline).
"""

import json
import time

import fsspec
import torch
from PIL import Image

from mmgen.cli import run_cli
from mmgen.config import RunPaths, load_config
from mmgen.device import default_device
from mmgen.eval.shapes_eval import sample_kwargs
from mmgen.generation.render import render_html, render_sample
from mmgen.generation.sampler import sample
from mmgen.model.checkpoint import load_trained_model
from mmgen.retrieval.augment import retrieved_prefix
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import TextTokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab


def _load_images(spec: str) -> list[Image.Image]:
    images = []
    for path in (p.strip() for p in spec.split(",") if p.strip()):
        fs, local = fsspec.core.url_to_fs(path)
        if not fs.exists(local):
            raise FileNotFoundError(f"missing prompt image {path}")
        with fs.open(local, "rb") as f:
            images.append(Image.open(f).convert("RGB"))
    return images


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
    prompt = tokenizer.encode_parts([s.prompt, *_load_images(s.prompt_images)], eos=False)
    context = [tokenizer.encode_parts([c.strip()]) for c in s.context.split("|") if c.strip()]
    if context:  # the training layout of retrieval-augmented documents: BOS r1 SEP r2 SEP main
        vocab = tokenizer.vocab
        prompt = retrieved_prefix(context, bos=vocab.bos, eos=vocab.eos, sep=vocab.sep).tolist() + prompt[1:]
    print(f"sampling {s.num_samples} document(s) of up to {s.max_new_tokens} tokens from step {step} "
          f"for prompt {s.prompt!r}", flush=True)

    def progress(done: int, total: int) -> None:
        print(f"  {done}/{total} tokens, {time.time() - start:.1f}s", flush=True)

    outputs = sample(
        model, tokenizer.vocab, [prompt] * s.num_samples, max_new_tokens=s.max_new_tokens, progress=progress,
        **sample_kwargs(s),
    )
    records = []
    for k, new_ids in enumerate(outputs):
        record = render_sample(tokenizer, prompt, new_ids, paths.samples_dir, f"sample-{k}")
        records.append(record)
        print(f"--- sample {k} ---\n{record['text']}")
    page = render_html(records, paths.samples_dir, title=f"mmgen samples: {s.prompt}")
    print(f"wrote {len(records)} sample(s) to {paths.samples_dir} (open {page})")
    with fsspec.open(paths.stage_timing("sample"), "w", auto_mkdir=True) as f:
        json.dump({"seconds": time.time() - start, "step": step, "images": sum(len(r["images"]) for r in records)}, f)


if __name__ == "__main__":
    with torch.inference_mode():
        run_cli(main)
