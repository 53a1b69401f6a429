"""The code-map noise probe: an ideal, patch-local code map scores as ideal; a noisy one does not."""

import numpy as np
import torch

from mmgen.eval.code_noise import code_map_noise


class PatchTokenizer:
    """Codes that depend only on their own 4×4 patch's pixels (an ideal local code map), optionally salted."""

    def __init__(self, salt_flat_cells: bool = False):
        self.salt = salt_flat_cells
        self.table: dict[bytes, int] = {}

    def encode(self, images):
        grids = []
        for image in images:
            a = np.asarray(image)
            cells = [a[r:r + 4, c:c + 4].tobytes() for r in range(0, 32, 4) for c in range(0, 32, 4)]
            codes = [self.table.setdefault(cell, len(self.table)) for cell in cells]
            if self.salt:  # position-dependent codes, like a wide receptive field with zero padding
                codes = [code * 64 + j for j, code in enumerate(codes)]
            grids.append(codes)
        return torch.tensor(grids).reshape(len(images), 8, 8)


def test_a_patch_local_code_map_is_ideal():
    noise = code_map_noise(PatchTokenizer(), 32)
    assert noise["codes_in_flat_white_image"] == 1 and noise["codes_in_flat_black_image"] == 1
    # a small shape (5×5 px) covers at most 2×2 cells; a large one (9×9 px) at most 3×3
    assert 0 < noise["codes_changed_by_shape_swap_small"] <= 4
    assert noise["codes_changed_by_shape_swap_small"] < noise["codes_changed_by_shape_swap_large"] <= 9


def test_position_dependent_codes_show_up_as_noise():
    ideal, salted = code_map_noise(PatchTokenizer(), 32), code_map_noise(PatchTokenizer(salt_flat_cells=True), 32)
    assert salted["codes_in_flat_white_image"] == 64
    assert salted["codes_per_cell_white"] == ideal["codes_per_cell_white"]  # per cell, the salt is constant
    assert salted["codes_used"] > ideal["codes_used"]
