"""JPEG (Pillow) at a bit budget per image: the baseline the image tokenizer benchmarks compare against.

A token grid costs ``tokens · log2(codebook)`` bits per image, with the codebook
and decoder shared by every image. JPEG's counterpart of that shared part is its
tables (quantization and Huffman, fixed per quality with Pillow's standard
tables), so an image's JPEG cost here is its entropy-coded scan: the bytes after
the start-of-scan header up to the end-of-image marker. Each image gets the
highest quality whose scan fits the budget (per-image rate control, which only
favours JPEG); an image that does not fit even at quality 1 is counted as over.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def scan_bytes(jpeg: bytes) -> int:
    """Bytes of entropy-coded data in a baseline JPEG: after the SOS segment, before EOI."""
    pos = 2  # after SOI
    while pos < len(jpeg):
        if jpeg[pos] != 0xFF:
            raise ValueError("not a JPEG marker sequence")
        marker, length = jpeg[pos + 1], int.from_bytes(jpeg[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: the rest is data, then FFD9
            return len(jpeg) - (pos + 2 + length) - 2
        pos += 2 + length
    raise ValueError("JPEG without a scan")


def encode(image: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality, optimize=False)
    return out.getvalue()


def jpeg_at_bits(images: np.ndarray, bits: int) -> tuple[np.ndarray, dict[str, float]]:
    """Decode each uint8 ``[H, W, 3]`` image from its best JPEG within ``bits`` scan bits; return images and stats."""
    decoded, qualities, used, over = [], [], [], 0
    for image in images:
        lo, hi, best = 1, 95, None
        while lo <= hi:  # scan size grows with quality (almost always): binary search the largest fit
            q = (lo + hi) // 2
            data = encode(image, q)
            if scan_bytes(data) * 8 <= bits:
                best, lo = (q, data), q + 1
            else:
                hi = q - 1
        if best is None:
            over += 1
            best = (1, encode(image, 1))
        qualities.append(best[0])
        used.append(scan_bytes(best[1]) * 8)
        decoded.append(np.asarray(Image.open(io.BytesIO(best[1])).convert("RGB")))
    stats = {
        "mean_quality": float(np.mean(qualities)),
        "mean_scan_bits": float(np.mean(used)),
        "over_budget": over / len(images),
    }
    return np.stack(decoded), stats
