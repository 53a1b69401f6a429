"""Image bytes → an upright RGB ``PIL.Image``, safely, and the resize / crop policy.

Notable:
- The decompression-bomb limit is checked on the header size, before any pixel is decoded; PIL's own
  global limit is left alone (it warns instead of failing below twice its default).
- EXIF orientation is applied, so a phone photo stored sideways is tokenized upright.
- Transparency (RGBA, LA, palette with a transparent index) is composited onto white: the VQ-VAE sees
  what a browser shows. Grayscale, palette, CMYK and 16-bit images become 8-bit RGB.
- JPEGs are decoded at a reduced scale (``draft``) when only a small image is wanted — several times
  faster on large photos, and the result is resized anyway.
- Every failure is ``SkipRow`` with a reason, never an exception that stops a run.
"""

from __future__ import annotations

import io
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from mmgen.data.reading import SkipRow

ResizeMode = Literal["stretch", "center_crop", "pad"]


def decode_image(data: bytes, *, max_pixels: int, draft_size: int = 0) -> tuple[Image.Image, tuple[int, int]]:
    """The image as upright RGB and its original (width, height), or ``SkipRow``.

    ``draft_size`` > 0 lets a JPEG decode at the smallest scale that keeps both sides at least that long.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: our own limit decides
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width <= 0 or height <= 0:
                    raise SkipRow("undecodable_image")
                if max_pixels and width * height > max_pixels:
                    raise SkipRow("image_too_large")
                orientation = im.getexif().get(0x0112, 1)
                if draft_size and im.format == "JPEG":
                    im.draft("RGB", (draft_size, draft_size))
                im.load()
                rgb = to_rgb(ImageOps.exif_transpose(im) if orientation != 1 else im)
                if orientation in (5, 6, 7, 8):  # a quarter turn swaps the sides
                    width, height = height, width
                return rgb, (width, height)
    except SkipRow:
        raise
    except Image.DecompressionBombError:  # PIL's own check, at twice its default limit
        raise SkipRow("image_too_large") from None
    except Exception:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ValueError, ...)
        raise SkipRow("undecodable_image") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB; transparent pixels become white."""
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit integer or float gray: scale to 8 bits
        values = np.asarray(im, dtype=np.float64)
        scale = 257.0 if im.mode.startswith("I") and values.max(initial=0) > 255 else 1.0
        im = Image.fromarray(np.clip(values / scale, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode in ("RGB", "L") and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im.copy()


def fit_image(image: Image.Image, size: int, mode: ResizeMode = "stretch") -> Image.Image:
    """A ``size``×``size`` image: ``stretch`` resizes, ``center_crop`` keeps the central square, ``pad``
    letterboxes onto white. ``size`` 0 returns the image unchanged."""
    if not size or image.size == (size, size):
        return image
    width, height = image.size
    if mode == "center_crop" and width != height:
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    elif mode == "pad" and width != height:
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        image = canvas
    return image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
