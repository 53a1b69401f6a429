"""Read a shapes-world scene back from pixels: background, and shape, colour, size per grid cell.

Deterministic and tolerant of the blur and colour noise of VQ-decoded or
generated images:
- every pixel is assigned to the nearest palette colour (the two backgrounds
  and the six shape colours); pixels nearest a shape colour are foreground;
- the background is the background colour nearest the median border pixel
  (shapes never touch the border);
- each of the nine cells is read inside the box a large shape occupies (cells
  are separated, so a box never reaches a neighbour's shape); a cell with
  fewer foreground pixels than half the smallest shape is empty;
- colour is the majority colour of the cell's foreground, and shape and size
  are the (shape, size) template, drawn exactly as ``render_scene`` draws it,
  with the highest intersection-over-union with the foreground mask.
On the generator's own renders this reads every attribute exactly (tested).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from mmgen.data.shapes_world import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, grid_geometry, shape_mask

_PALETTE_NAMES = (*BACKGROUNDS, *COLORS)
_PALETTE = np.array([*BACKGROUNDS.values(), *COLORS.values()], dtype=np.float32)
_N_BACKGROUNDS = len(BACKGROUNDS)


def _templates(image_size: int) -> tuple[list[int], int, list[tuple[str, str, np.ndarray]]]:
    centers, half = grid_geometry(image_size)
    box = half["large"]
    templates = []
    for size in SIZES:
        for shape in SHAPES:
            mask = np.zeros((2 * box + 1, 2 * box + 1), dtype=bool)
            r = half[size]
            mask[box - r : box + r + 1, box - r : box + r + 1] = shape_mask(shape, r)
            templates.append((shape, size, mask))
    return centers, box, templates


def analyse_scene(image: Image.Image | np.ndarray) -> dict:
    """A scene dict like ``random_scene`` gives (background; shapes with shape, color, size, position)."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    if pixels.ndim != 3 or pixels.shape[0] != pixels.shape[1] or pixels.shape[2] != 3:
        raise ValueError(f"expected a square RGB image, got shape {pixels.shape}")
    size = pixels.shape[0]
    centers, box, templates = _templates(size)
    distance = ((pixels[:, :, None, :] - _PALETTE[None, None]) ** 2).sum(-1)
    nearest = distance.argmin(-1)  # palette index per pixel
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    median = np.median(border, axis=0)
    background = _PALETTE_NAMES[int(((_PALETTE[:_N_BACKGROUNDS] - median) ** 2).sum(-1).argmin())]
    smallest = min(int(t[2].sum()) for t in templates)
    shapes = []
    for cell, position in enumerate(POSITIONS):
        cx, cy = centers[cell % 3], centers[cell // 3]
        labels = nearest[cy - box : cy + box + 1, cx - box : cx + box + 1]
        foreground = labels >= _N_BACKGROUNDS
        if foreground.sum() * 2 < smallest:
            continue
        colour = int(np.bincount(labels[foreground]).argmax())
        ious = [(m & foreground).sum() / (m | foreground).sum() for _, _, m in templates]
        shape, size_name, _ = templates[int(np.argmax(ious))]
        shapes.append({"shape": shape, "color": _PALETTE_NAMES[colour], "size": size_name, "position": position})
    return {"background": background, "shapes": shapes}
