"""Turn a sampled token stream into files: text, one PNG per image, and the raw stream as JSON."""

from __future__ import annotations

import json
import posixpath

import fsspec

from mmgen.tokenizers.vocab import MultimodalTokenizer


def render_sample(tokenizer: MultimodalTokenizer, prompt_ids: list[int], new_ids: list[int], out_dir: str, stem: str) -> dict:
    """Write ``<stem>.txt`` (text with [image k] markers), ``<stem>-image-k.png`` and ``<stem>.json``; returns the record."""
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    # sampled streams are decoded leniently: an image cut off by the token budget is dropped
    parts = tokenizer.decode_parts(list(prompt_ids) + list(new_ids), strict=False)
    images = iter(tokenizer.decode_images([p for p in parts if not isinstance(p, str)]))
    pieces, image_files = [], []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
            continue
        name = f"{stem}-image-{len(image_files)}.png"
        with fs.open(posixpath.join(root, name), "wb") as f:
            next(images).save(f, format="PNG")
        pieces.append(f"\n[image {len(image_files)}: {name}]\n")
        image_files.append(name)
    text = "".join(pieces)
    record = {
        "prompt_ids": list(map(int, prompt_ids)),
        "new_ids": list(map(int, new_ids)),
        "text": text,
        "images": image_files,
    }
    with fs.open(posixpath.join(root, f"{stem}.txt"), "w") as f:
        f.write(text + "\n")
    with fs.open(posixpath.join(root, f"{stem}.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record
