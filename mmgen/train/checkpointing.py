"""torchtitan's DCP checkpoint manager, with mmgen's handling of a killed, corrupt or foreign checkpoint.

- **Killed mid-save.** DCP writes a checkpoint's ``.metadata`` last (to a temporary name, then renamed), so
  a save that dies midway leaves a folder without one, and only folders with one are resume candidates.
  A save over a folder that already has one (a step re-run after falling back from a corrupt checkpoint)
  removes it first, so a kill during the rewrite cannot leave old metadata over half-new data.
- **Corrupt.** Before resuming, the newest candidate is checked: its metadata must read and every byte
  range it lists must lie inside its files (a truncated, missing or garbled shard fails). A corrupt one is
  named in one warning line and the previous one is tried; when every candidate is corrupt the run stops.
  Bit flips inside tensor data are not detected (DCP keeps no checksums).
- **Another model.** A checkpoint whose tensors have other shapes than the configured model stops the run
  with one line naming the checkpoint, the tensor and both shapes.
- **Another world size.** The data loader learns the layout it was saved with from the metadata
  (``PackedDataLoader.expect_saved_world_size``); model and optimizer are resharded by DCP itself.
- **Poison.** A save whose parameters hold NaN or inf stops the run instead of writing the checkpoint.
"""

from __future__ import annotations

import posixpath
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import fsspec
import torch
import torch.distributed as dist
from torch.distributed.checkpoint import FileSystemWriter
from torch.distributed.checkpoint.metadata import Metadata, TensorStorageMetadata
from torchtitan.components.checkpoint import DATALOADER, MODEL, CheckpointManager
from torchtitan.tools import filesystem
from torchtitan.tools.logging import logger

from mmgen.config.paths import StaleInputError
from mmgen.model.checkpoint import METADATA, newest_sound_step, read_checkpoint_metadata
from mmgen.nonfinite import NonFiniteError, all_finite
from mmgen.train.fault_injection import fault_requested, pause_if_asked

def check_shapes(state_dict: dict[str, Any], metadata: Metadata, checkpoint: str) -> None:
    """The model tensors about to be loaded have the shapes the checkpoint holds (else: one line naming both)."""
    for key, value in state_dict.items():
        saved = metadata.state_dict_metadata.get(key)
        if isinstance(value, torch.Tensor) and isinstance(saved, TensorStorageMetadata):
            if tuple(saved.size) != tuple(value.shape):
                raise StaleInputError(f"{checkpoint} holds a model of another shape ({key}: {list(saved.size)} "
                                      f"there, {list(value.shape)} in the configured model); use the config it "
                                      f"was trained with or another output folder")  # fmt: skip


def saved_world_size(metadata: Metadata) -> int:
    """How many data-parallel ranks saved the data loader's state (one key per rank)."""
    return sum(1 for key in metadata.state_dict_metadata if key.startswith(f"{DATALOADER}.dp_rank_"))


@contextmanager
def _pause_before_metadata(point: str) -> Iterator[None]:
    """During the save of ``point``, stop the coordinator after the data files and before ``.metadata``."""
    if not fault_requested(f"pause:{point}"):
        yield
        return
    finish = FileSystemWriter.finish

    def pausing_finish(self, *args, **kwargs):
        pause_if_asked(point)
        return finish(self, *args, **kwargs)

    FileSystemWriter.finish = pausing_finish
    try:
        yield
    finally:
        FileSystemWriter.finish = finish


class MMGenCheckpointManager(CheckpointManager):
    @dataclass(kw_only=True, slots=True)
    class Config(CheckpointManager.Config):
        pass

    def _find_load_step(self, folder: str = "") -> int:
        def warn(message: str) -> None:
            if not dist.is_initialized() or dist.get_rank() == 0:
                logger.warning(message)

        return newest_sound_step(folder or self.folder, warn)

    def dcp_load(self, state_dict: dict[str, Any], checkpoint_id: str, from_hf: bool, from_quantized: bool) -> None:
        if not from_hf:
            metadata = read_checkpoint_metadata(checkpoint_id)
            check_shapes(state_dict, metadata, checkpoint_id)
            loader = state_dict.get(DATALOADER)
            if loader is not None and hasattr(loader, "expect_saved_world_size"):
                loader.expect_saved_world_size(saved_world_size(metadata))
        super().dcp_load(state_dict, checkpoint_id, from_hf, from_quantized)

    def _save(self, curr_step: int, last_step: bool = False) -> bool:
        if self._should_save(curr_step, last_step):
            params = [p for model in self.states[MODEL].model for p in model.parameters()]
            if not all_finite(params):
                raise NonFiniteError(f"step {curr_step}: the model's parameters hold NaN or inf; the checkpoint "
                                     f"{self._create_checkpoint_id(curr_step)} was not written")  # fmt: skip
        return super()._save(curr_step, last_step)

    def dcp_save(self, state_dict: dict[str, Any], checkpoint_id: str, *args: Any, **kwargs: Any):
        if not dist.is_initialized() or dist.get_rank() == 0:  # the coordinator is the one writer of .metadata
            stale = filesystem.join(checkpoint_id, METADATA)
            if filesystem.isfile(stale):
                fs, local = fsspec.core.url_to_fs(stale)
                fs.rm_file(local)
        with _pause_before_metadata(f"save-{posixpath.basename(checkpoint_id)}"):
            return super().dcp_save(state_dict, checkpoint_id, *args, **kwargs)
