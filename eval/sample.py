"""Sample interleaved documents from the pretrained decoder.

    python eval/sample.py --config demo --prompt "a large red circle"
    python eval/sample.py --config demo --prompt "Look at this picture." --sample.prompt_images a.png
    python eval/sample.py --config demo --prompt "Draw" --sample.context "Here is a drawing of a red circle.|Another one."

Text continues the prompt (which may hold images: ``sample.prompt_images``, and
be preceded by retrieved context: ``sample.retrieve`` documents searched in the
run's memory bank — retrieval/train_encoder.py and retrieval/build_index.py
first — and/or passages given as ``sample.context``, laid out and cut to the
training length as in retrieval-augmented pretraining);
when the model opens an image (or right away, with ``sample.force_image``)
exactly h·w image codes follow, then end-of-image is forced and text resumes.
Guidance (``sample.cfg_scale``, ``sample.image_cfg_scale``, ``sample.cdk_k``)
and the repetition penalty are in the ``sample`` section. Writes
``<run>/samples/sample-K.txt``, its PNGs, ``sample-K.json`` (the token stream)
and ``index.html`` (every sample with its images inline, and what was retrieved). A run whose
image tokenizer has no decoder (a Chameleon import without ``--vq_decoder``) writes each image's
codes as ``sample-K-codes-J.json`` instead of a PNG. ``sample.prompt_sep`` ends the prompt with the
separator, Chameleon's chat form.
"""

import fsspec
import torch
from PIL import Image

from mmgen.cli import run_cli, start_stage
from mmgen.retrieval.bank_documents import bank_documents
from mmgen.device import compute_dtype, generation_device
from mmgen.files import CorruptFileError
from mmgen.generation.render import render_html, render_sample
from mmgen.generation.sampler import SamplingParams, sample
from mmgen.model.checkpoint import load_pretrained_model
from mmgen.progress import progress_bar, sampler_progress
from mmgen.retrieval.query import load_retriever, prompt_with_context, retrieve_for_prompt
from mmgen.tokenizers.run import load_run_tokenizer


def _load_images(spec: str) -> list[Image.Image]:
    images = []
    for path in (p.strip() for p in spec.split(",") if p.strip()):
        fs, local = fsspec.core.url_to_fs(path)
        if not fs.exists(local):
            raise FileNotFoundError(f"missing prompt image {path}")
        with fs.open(local, "rb") as f:
            try:
                images.append(Image.open(f).convert("RGB"))
            except (OSError, ValueError, Image.DecompressionBombError):
                raise CorruptFileError(f"prompt image {path} is not an image that can be read") from None
    return images


def main() -> None:
    stage = start_stage("sample", __doc__, aliases={"prompt": "sample.prompt", "seed": "sample.seed"})
    cfg, paths, s = stage.cfg, stage.paths, stage.cfg.sample
    device = generation_device()
    tokenizer = load_run_tokenizer(paths, device)
    if not tokenizer.image_tok.can_decode:
        print("note: the run's image tokenizer has no decoder; sampled images are saved as codes, not pictures")
    # a missing bank or encoder is reported before the model is loaded
    retriever = load_retriever(paths.retrieval_encoder, paths.memory_bank, device=device) if s.retrieve > 0 else None
    model, step = load_pretrained_model(cfg, paths, device)
    model.to(compute_dtype(s.dtype, device))
    prompt = tokenizer.encode_parts([s.prompt, *_load_images(s.prompt_images)], eos=False)
    if s.prompt_sep:  # Chameleon's chat form: the answer follows a separator
        prompt.append(tokenizer.vocab.sep)
    vocab = tokenizer.vocab
    retrieved = []
    if retriever is not None:
        encoder, bank = retriever
        r = cfg.retrieval
        found = retrieve_for_prompt(prompt, encoder=encoder, bank=bank, documents=bank_documents(paths),
                                    vocab=vocab, k=s.retrieve, candidates=r.candidates, max_similarity=r.max_similarity,
                                    centred_similarity=r.centred_similarity, text_tokenizer=tokenizer.text_tok)
        print(f"retrieved {len(found)} of {s.retrieve} document(s) from {paths.memory_bank}")
        for n, doc in enumerate(found, 1):
            text = " ".join(p if isinstance(p, str) else "[image]" for p in tokenizer.decode_parts(doc.tokens, strict=False))
            print(f"  {n}. bank document {doc.bank_id} (similarity {doc.similarity:.3f}): {text}")
            retrieved.append({"bank_id": doc.bank_id, "similarity": doc.similarity, "tokens": doc.tokens.tolist()})
    retrieved += [{"source": "sample.context", "tokens": tokenizer.encode_parts([c.strip()])}
                  for c in s.context.split("|") if c.strip()]
    augmented = prompt_with_context(prompt, retrieved, vocab, seq_len=cfg.training.seq_len, max_new_tokens=s.max_new_tokens)
    if augmented.note:
        print(augmented.note)
    prompt, context_len, retrieved = augmented.tokens, augmented.context_len, augmented.context
    print(f"sampling {s.num_samples} document(s) of up to {s.max_new_tokens} tokens from step {step} "
          f"for prompt {s.prompt!r}", flush=True)
    with progress_bar(desc="sampling", unit="token") as bar:
        outputs = sample(model, tokenizer.vocab, [prompt] * s.num_samples, SamplingParams.from_section(s),
                         compile=s.compile, progress=sampler_progress(bar))
    records = []
    for k, new_ids in enumerate(outputs):
        record = render_sample(tokenizer, prompt, new_ids, paths.samples_dir, f"sample-{k}", context_len=context_len,
                               retrieved=retrieved)
        records.append(record)
        print(f"--- sample {k} ---\n{record['text']}")
    page = render_html(records, paths.samples_dir, title=f"mmgen samples: {s.prompt}")
    print(f"wrote {len(records)} sample(s) to {paths.samples_dir} (open {page})")
    stage.record_timing(step=step, images=sum(len(r["images"]) for r in records),
                        retrieved=[d.get("bank_id", d.get("source")) for d in retrieved])


if __name__ == "__main__":
    with torch.inference_mode():
        run_cli(main)
