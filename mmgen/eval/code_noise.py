"""How much of an image tokenizer's code map is noise, probed on the shapes world.

The shapes world is deterministic and mostly flat background, so an ideal code map writes a flat image with
one code per border position at most and changes only the cells a shape covers when the shape changes. Codes
that vary beyond that (a wide receptive field, near-duplicate codes splitting flat regions) are entropy the
decoder must learn code by code. These figures chose nothing by themselves: they explain why a tokenizer with
good PSNR can still be hard to model (docs/BENCHMARKS.md, "The image codes' noise").
"""

from __future__ import annotations

import numpy as np

from mmgen.data.shapes_world import BACKGROUNDS, COLORS, POSITIONS, SHAPES, SIZES, render_scene


def one_shape_scenes() -> list[dict]:
    """Every one-shape scene, the three shapes of one (background, colour, size, position) adjacent."""
    return [{"background": b, "shapes": [{"shape": s, "color": c, "size": z, "position": p}]}
            for b in BACKGROUNDS for c in COLORS for z in SIZES for p in POSITIONS for s in SHAPES]  # fmt: skip


def code_map_noise(tokenizer, image_size: int) -> dict[str, float]:
    """Distinct codes of flat images, codes per cell, and codes a shape swap changes (small and large)."""
    scenes = one_shape_scenes()
    codes = tokenizer.encode([render_scene(s, image_size) for s in scenes]).reshape(len(scenes), -1).numpy()
    out: dict[str, float] = {"codes_used": int(len(np.unique(codes)))}
    for size in SIZES:
        changed = [np.mean([(codes[i + a] != codes[i + b]).sum() for a, b in ((0, 1), (0, 2), (1, 2))])
                   for i in range(0, len(scenes), len(SHAPES)) if scenes[i]["shapes"][0]["size"] == size]  # fmt: skip
        out[f"codes_changed_by_shape_swap_{size}"] = float(np.mean(changed))
    for background in BACKGROUNDS:
        rows = [i for i, s in enumerate(scenes) if s["background"] == background]
        out[f"codes_per_cell_{background}"] = float(np.mean([len(np.unique(codes[rows, j])) for j in range(codes.shape[1])]))
        flat = tokenizer.encode([render_scene({"background": background, "shapes": []}, image_size)])
        out[f"codes_in_flat_{background}_image"] = int(len(np.unique(flat.numpy())))
    return out
