"""Fixtures shared by the corpus and encode tests: tiny tokenizers and schema-exact corpora on disk.

The corpora follow the published schemas exactly: OBELICS parquet as on the Hugging Face hub (``images``
and ``texts`` aligned ``list<string>`` with nulls, ``metadata`` and ``general_metadata`` as JSON strings),
MMC4 jsonl / ``.jsonl.zip`` as in the allenai/mmc4 README, with some referenced images missing on disk.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from mmgen.config import RunPaths
from mmgen.config.schema import ImageTokenizerConfig, TextTokenizerConfig
from mmgen.tokenizers.image import ImageTokenizer
from mmgen.tokenizers.text import TextTokenizer, train_text_tokenizer
from mmgen.tokenizers.vocab import MultimodalTokenizer, Vocab
from mmgen.tokenizers.vqvae import VQVAE

OBELICS_HUB_SCHEMA = pa.schema([
    ("images", pa.list_(pa.string())),
    ("metadata", pa.string()),
    ("general_metadata", pa.string()),
    ("texts", pa.list_(pa.string())),
])  # fmt: skip

SENTENCES = [
    "A red circle sits on a blue square.", "The green triangle is small.", "Photos of cats and dogs.",
    "When you lock the door, all of the other doors lock at the same time.", "Press the master switch.",
    "a photo of a cat", "a photo of a dog", "Ünïcödé text, digits 0123456789 and punctuation!?",
]  # fmt: skip


def make_tokenizers(run_dir: Path) -> RunPaths:
    """A real SentencePiece model and an untrained (seeded) VQ-VAE: 16×16 images → 4×4 codes."""
    paths = RunPaths(str(run_dir))
    train_text_tokenizer(SENTENCES * 4, TextTokenizerConfig(vocab_size=300), paths.text_tokenizer, log=lambda _: None)
    cfg = ImageTokenizerConfig(image_size=16, downsample=4, channels=16, res_blocks=1, codebook_size=32,
                               codebook_dim=8, kmeans_init=False, precision="float32")  # fmt: skip
    torch.manual_seed(0)
    ImageTokenizer(model=VQVAE.from_config(cfg), config=cfg).save(paths.image_tokenizer)
    return paths


def joint_tokenizer(text: TextTokenizer, image: ImageTokenizer) -> MultimodalTokenizer:
    """The two tokenizers over the joint vocabulary that encode would build for them."""
    vocab = Vocab.build(text_vocab_size=text.vocab_size, codebook_size=image.codebook_size, grid=image.grid)
    return MultimodalTokenizer(vocab, text, image)


def image_bytes(seed: int, *, size=(20, 14), fmt="PNG", mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if mode != "RGB":
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def write_obelics(folder: Path) -> Path:
    """Two hub-schema shards; images are shard-relative paths or URLs (as published)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img").mkdir(exist_ok=True)
    (folder / "img" / "a.png").write_bytes(image_bytes(1))
    (folder / "img" / "b.jpg").write_bytes(image_bytes(2, fmt="JPEG"))
    general = json.dumps({"url": "https://example.com/page", "warc_filename": "crawl.warc.gz",
                          "warc_record_offset": 1, "warc_record_length": 2})  # fmt: skip
    image_meta = {"document_url": "https://example.com/page", "unformatted_src": "a.png", "src": "a.png",
                  "formatted_filename": "a", "alt_text": "an image", "rendered_width": 20, "rendered_height": 14}
    rows = [
        {"images": [None, "img/a.png", None], "texts": ["Intro text.", None, "After the image."],
         "metadata": json.dumps([None, image_meta, None]), "general_metadata": general},
        {"images": ["img/b.jpg", None], "texts": [None, "Caption below."],
         "metadata": json.dumps([{"src": "b.jpg"}, None]), "general_metadata": general},
        {"images": [None], "texts": ["Only text here."], "metadata": json.dumps([None]), "general_metadata": general},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=OBELICS_HUB_SCHEMA), folder / "shard-0.parquet")
    rows = [
        {"images": ["https://example.com/x.jpg", None], "texts": [None, "URL image, no network."],
         "metadata": json.dumps([{"src": "https://example.com/x.jpg"}, None]), "general_metadata": general},
        {"images": [None, "img/missing.png"], "texts": ["Missing on disk.", None],
         "metadata": json.dumps([None, {}]), "general_metadata": general},
        {"images": [None, None], "texts": ["A second document.", "Two text positions."],
         "metadata": json.dumps([None, None]), "general_metadata": general},
    ]
    pq.write_table(pa.Table.from_pylist(rows, schema=OBELICS_HUB_SCHEMA), folder / "shard-1.parquet")
    return folder


def mmc4_record(i: int, *, images: list[tuple[str, int]], texts: list[str | None]) -> dict:
    info = [{"face_detections": None, "image_name": name, "matched_sim": 0.25 + 0.01 * k,
             "matched_text_index": index, "raw_url": f"http://example.com/{name}"}
            for k, (name, index) in enumerate(images)]  # fmt: skip
    return {"image_info": info, "similarity_matrix": [[0.2] * len(texts) for _ in images], "text_list": texts,
            "url": f"http://example.com/doc{i}.html", "could_have_url_duplicate": i % 2}


def mmc4_records() -> list[dict]:
    return [
        mmc4_record(0, images=[("aa11.jpg", 2), ("bb22.png", 1)], texts=["First.", "Second.", "Third."]),
        mmc4_record(1, images=[("cc33.png", 0)], texts=["Only sentence.", None]),
        mmc4_record(2, images=[("missing.jpg", 0)], texts=["Image is not on disk."]),
        mmc4_record(3, images=[], texts=["No images at all.", "Still a document."]),
    ]


def write_mmc4(folder: Path, *, zipped: bool) -> Path:
    """One MMC4 shard (``docs_shard_0_v2.jsonl[.zip]``) with its images beside it; one image is missing."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, seed, fmt in (("aa11.jpg", 3, "JPEG"), ("bb22.png", 4, "PNG"), ("cc33.png", 5, "PNG")):
        (folder / name).write_bytes(image_bytes(seed, fmt=fmt))
    lines = "".join(json.dumps(r) + "\n" for r in mmc4_records())
    if zipped:
        path = folder / "docs_shard_0_v2.jsonl.zip"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("docs_shard_0_v2.jsonl", lines)
    else:
        path = folder / "docs_shard_0_v2.jsonl"
        path.write_text(lines)
    return path


def write_imagefolder(root: Path, per_class: int = 3) -> Path:
    for c, label in enumerate(("cat", "hot_dog")):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            fmt = "PNG" if i % 2 else "JPEG"
            (root / label / f"{i:03d}.{fmt.lower()}").write_bytes(image_bytes(100 * c + i, fmt=fmt))
    return root


def write_captions(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / "cap").mkdir(exist_ok=True)
    lines = []
    for i in range(4):
        (path.parent / "cap" / f"{i}.png").write_bytes(image_bytes(200 + i))
        lines.append({"image": f"cap/{i}.png", "caption": f"caption number {i}", "metadata": {"i": i}})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
