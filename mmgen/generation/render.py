"""Turn a sampled token stream into files: text, one PNG per image, the raw stream as JSON, and an
HTML page that shows the documents with their images inline."""

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
    pieces, image_files, layout = [], [], []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
            layout.append({"text": part})
            continue
        name = f"{stem}-image-{len(image_files)}.png"
        with fs.open(posixpath.join(root, name), "wb") as f:
            next(images).save(f, format="PNG")
        pieces.append(f"\n[image {len(image_files)}: {name}]\n")
        layout.append({"image": name})
        image_files.append(name)
    text = "".join(pieces)
    record = {
        "prompt_ids": list(map(int, prompt_ids)),
        "new_ids": list(map(int, new_ids)),
        "text": text,
        "images": image_files,
        "parts": layout,
    }
    with fs.open(posixpath.join(root, f"{stem}.txt"), "w") as f:
        f.write(text + "\n")
    with fs.open(posixpath.join(root, f"{stem}.json"), "w") as f:
        json.dump(record, f, indent=1)
    return record


def render_html(records: list[dict], out_dir: str, *, title: str, name: str = "index.html") -> str:
    """Write ``<out_dir>/<name>``: every record's text and images in reading order (images inlined)."""
    from mmgen.eval import html as H  # the page helpers live with the reports

    fs, root = fsspec.core.url_to_fs(out_dir)
    body = []
    for k, record in enumerate(records):
        body.append(f"<h2>sample {k}</h2><div class='doc'>")
        for part in record["parts"]:
            if "text" in part:
                body.append(H.escape(part["text"]))
            else:
                with fs.open(posixpath.join(root, part["image"]), "rb") as f:
                    body.append(f"<br>{H.img_tag(f.read(), width=160, title=part['image'])}<br>")
        body.append("</div>")
    path = posixpath.join(root, name)
    with fs.open(path + ".tmp", "w") as f:
        f.write(H.page(title, "\n".join(body)))
    fs.mv(path + ".tmp", path)
    return path
