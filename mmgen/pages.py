"""Self-contained HTML pages: images are inlined as PNG data URIs, so a page is one file to copy or open.

Shared by the sample pages (``mmgen.generation.render``) and the report (``mmgen.eval.report``), so neither
package reaches into the other.
"""

from __future__ import annotations

import base64
import html
import io

from PIL import Image

STYLE = """
body { font-family: sans-serif; margin: 1.5em; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
img.px { image-rendering: pixelated; border: 1px solid #888; }
.grid { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { width: 11em; font-size: 0.8em; }
.doc { max-width: 45em; line-height: 1.5; }
"""


def escape(text: str) -> str:
    return html.escape(str(text))


def png_data_uri(image: Image.Image | bytes) -> str:
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        image = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def img_tag(image: Image.Image | bytes, *, width: int = 128, title: str = "") -> str:
    return f'<img class="px" width="{width}" src="{png_data_uri(image)}" title="{escape(title)}">'


def page(title: str, body: str) -> str:
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body>\n<h1>{escape(title)}</h1>\n{body}\n</body></html>\n")
