"""Turn a sampled token stream into files: text, one PNG per image, the raw stream as JSON, and an
HTML page that shows the documents with their images inline (and the retrieved documents a sample
was conditioned on)."""

from __future__ import annotations

import io
import json
import posixpath

import fsspec

from mmgen import pages as H
from mmgen.files import write_atomic
from mmgen.tokenizers.vocab import MultimodalTokenizer


def _decode(tokenizer: MultimodalTokenizer, ids: list[int], fs, root: str, stem: str) -> tuple[str, list[str], list[dict]]:
    """(text with [image k] markers, PNG names, layout) of a token stream; writes ``<stem>-image-k.png``."""
    # sampled streams are decoded leniently: an image cut off by the token budget is dropped
    parts = tokenizer.decode_parts(list(ids), strict=False)
    grids = [p for p in parts if not isinstance(p, str)]
    renderable = tokenizer.image_tok is not None and tokenizer.image_tok.can_decode
    images = iter(tokenizer.decode_images(grids) if renderable else ())
    pieces, image_files, layout = [], [], []
    for part in parts:
        if isinstance(part, str):
            pieces.append(part)
            layout.append({"text": part})
            continue
        if not renderable:  # an image tokenizer without its decoder: keep the codes, say why there is no picture
            name = f"{stem}-codes-{sum('codes' in p for p in layout)}.json"
            write_atomic(posixpath.join(root, name), json.dumps(part.tolist()), fs)
            pieces.append(f"\n[image codes: {name} (no VQ-VAE decoder to render them)]\n")
            layout.append({"codes": name})
            continue
        name = f"{stem}-image-{len(image_files)}.png"
        png = io.BytesIO()
        next(images).save(png, format="PNG")
        write_atomic(posixpath.join(root, name), png.getvalue(), fs)
        pieces.append(f"\n[image {len(image_files)}: {name}]\n")
        layout.append({"image": name})
        image_files.append(name)
    return "".join(pieces), image_files, layout


def render_sample(tokenizer: MultimodalTokenizer, prompt_ids: list[int], new_ids: list[int], out_dir: str, stem: str,
                  *, context_len: int = 0, retrieved: list[dict] | None = None) -> dict:  # fmt: skip
    """Write ``<stem>.txt`` (text with [image k] markers), ``<stem>-image-k.png`` and ``<stem>.json``; returns the record.

    ``prompt_ids[:context_len]`` is retrieved context (``BOS r₁ SEP r₂ SEP``):
    the record's text and images cover the rest. Each of ``retrieved`` (a dict
    with the document's ``tokens`` and whatever else to record, e.g. its bank id
    and similarity) is decoded into ``record["retrieved"]`` with its own PNGs.
    """
    fs, root = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(root, exist_ok=True)
    text, image_files, layout = _decode(tokenizer, list(prompt_ids[context_len:]) + list(new_ids), fs, root, stem)
    context = []
    for j, doc in enumerate(retrieved or []):
        doc_text, doc_images, doc_layout = _decode(tokenizer, list(doc["tokens"]), fs, root, f"{stem}-retrieved-{j}")
        info = {k: v for k, v in doc.items() if k != "tokens"}
        context.append({**info, "ids": list(map(int, doc["tokens"])), "text": doc_text, "images": doc_images,
                        "parts": doc_layout})  # fmt: skip
    record = {
        "prompt_ids": list(map(int, prompt_ids)),
        "new_ids": list(map(int, new_ids)),
        "context_tokens": int(context_len),
        "text": text,
        "images": image_files,
        "parts": layout,
        "retrieved": context,
    }
    write_atomic(posixpath.join(root, f"{stem}.txt"), (text + "\n").encode(), fs)
    write_atomic(posixpath.join(root, f"{stem}.json"), json.dumps(record, indent=1).encode(), fs)
    return record


def render_html(records: list[dict], out_dir: str, *, title: str, name: str = "index.html") -> str:
    """Write ``<out_dir>/<name>``: every record's text and images in reading order (images inlined)."""
    fs, root = fsspec.core.url_to_fs(out_dir)

    def parts_html(parts: list[dict], width: int) -> list[str]:
        out = []
        for part in parts:
            if "text" in part:
                out.append(H.escape(part["text"]))
            elif "codes" in part:
                out.append(f"<br><i>[image codes in {H.escape(part['codes'])}: no VQ-VAE decoder to render them]</i><br>")
            else:
                with fs.open(posixpath.join(root, part["image"]), "rb") as f:
                    out.append(f"<br>{H.img_tag(f.read(), width=width, title=part['image'])}<br>")
        return out

    body = []
    for k, record in enumerate(records):
        body.append(f"<h2>sample {k}</h2>")
        for j, doc in enumerate(record.get("retrieved", [])):
            facts = [f"bank document {doc['bank_id']}" if "bank_id" in doc else doc.get("source", ""),
                     f"similarity {doc['similarity']:.3f}" if "similarity" in doc else ""]
            label = ", ".join([f"retrieved {j + 1}", *filter(None, facts)])
            body.append(f"<details><summary>{H.escape(label)}</summary><div class='doc'>")
            body += parts_html(doc["parts"], 96)
            body.append("</div></details>")
        body.append("<div class='doc'>")
        body += parts_html(record["parts"], 160)
        body.append("</div>")
    path = posixpath.join(root, name)
    write_atomic(path, H.page(title, "\n".join(body)).encode(), fs)
    return path
