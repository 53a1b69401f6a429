"""torchtitan components for mmgen: the packing data loader and the modality-aware loss."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from torchtitan.components.dataloader import BaseDataLoader
from torchtitan.components.loss import BaseLoss
from torchtitan.config import CompileConfig
from torchtitan.tools.logging import logger

from mmgen.config.paths import StaleInputError
from mmgen.data.objectives import CM3Masking, ConditionDropout, SFTTargets
from mmgen.data.packing import IGNORE_INDEX, PackedBatches
from mmgen.data.token_shards import TokenShards
from mmgen.data.transforms import DocumentTransform
from mmgen.model.loss import head_nll_and_logsumexp, nll_and_logsumexp
from mmgen.model.transformer import HiddenStates
from mmgen.retrieval.augment import RetrievalAugmentation
from mmgen.retrieval.bank_documents import BankDocuments
from mmgen.retrieval.neighbours import load_neighbours
from mmgen.tokenizers.vocab import Vocab


class PackedDataLoader(BaseDataLoader):
    """Packed token-shard batches for one data-parallel rank; checkpointed per rank.

    The packer applies at most three per-document transforms, in this order:
    SFT targets (the output of each example) or, for pretraining, condition
    dropout then CM3 masking and last retrieval augmentation (neighbours come
    from the plain shards, then the bank corpus's when there is one).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(BaseDataLoader.Config):
        tokens_dir: str = ""
        """Token-shard folder written by tokenizers/encode.py."""
        pad_id: int = 0
        """Vocabulary id of the padding token."""
        seed: int = 0
        """Seed of the document order."""
        neighbours_path: str = ""
        """Neighbour table of the shards (retrieval/build_index.py); empty: no retrieval augmentation."""
        bank_tokens_dir: str = ""
        """Token folder of the run's bank corpus, read after the shards as the memory bank's later documents; empty: none."""
        specials: tuple[int, int, int] = (0, 0, 0)
        """Vocabulary ids of BOS, EOS and SEP, for building augmented sequences."""
        retrieved_loss_weight: float = 1.0
        """Loss weight of the retrieved prefix of an augmented sequence."""
        sft: bool = False
        """The shards hold SFT examples: only each example's output is a target."""
        vocab_path: str = ""
        """The run's vocab.json (needed by the CM3 transform)."""
        cm3_rate: float = 0.0
        """Share of documents in CM3's causal-masked form."""
        cm3_image_share: float = 0.5
        """Share of CM3 spans that are whole images."""
        cm3_text_cue: int = 0
        """Text tokens before a text CM3 hole repeated after the closing sentinel (0: none)."""
        condition_dropout: float = 0.0
        """Share of documents whose caption before one image is removed (CFG training)."""

    def __init__(self, config: Config, *, dp_world_size: int, dp_rank: int, seq_len: int, local_batch_size: int, **_: Any):
        self.dp_rank = dp_rank
        self.dp_world_size = dp_world_size
        shards = TokenShards(config.tokens_dir)
        self.batches = PackedBatches(
            shards,
            transforms=document_transforms(config, shards, seq_len),
            seq_len=seq_len,
            batch_size=local_batch_size,
            pad_id=config.pad_id,
            seed=config.seed,
            dp_rank=dp_rank,
            dp_world_size=dp_world_size,
        )

    def __iter__(self):
        return iter(self.batches)

    saved_world_size: int | None = None
    """Set by the checkpoint manager before a load: how many data-parallel ranks saved the state."""

    def expect_saved_world_size(self, n: int) -> None:
        self.saved_world_size = n

    # Each rank saves its own key: DCP keeps only one copy of a non-tensor value per key.
    def state_dict(self) -> dict[str, Any]:
        if self.saved_world_size not in (None, self.dp_world_size):
            # a load from another world size: ask DCP for every saved rank's state (a key it lacks is an error)
            return {**{f"dp_rank_{r}": "" for r in range(self.saved_world_size)}, "world_size": 0}
        return {f"dp_rank_{self.dp_rank}": json.dumps(self.batches.state_dict()), "world_size": self.dp_world_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.saved_world_size = None
        if not state_dict:
            return
        saved = int(state_dict.get("world_size", 0))
        if saved == self.dp_world_size:
            self.batches.load_state_dict(json.loads(state_dict[f"dp_rank_{self.dp_rank}"]))
            return
        self.batches.restart_epochs([json.loads(state_dict[f"dp_rank_{r}"]) for r in range(saved)])
        if self.dp_rank == 0:
            logger.warning(f"the checkpoint's data loader ran on {saved} data-parallel ranks, this run has "
                           f"{self.dp_world_size}: each corpus restarts its current epoch")  # fmt: skip


def document_transforms(config: PackedDataLoader.Config, shards: TokenShards, seq_len: int) -> list[DocumentTransform]:
    """The loader's per-document transforms, in the order they apply."""
    if config.sft:
        return [SFTTargets(shards)]
    transforms: list[DocumentTransform] = []
    vocab = Vocab.load(config.vocab_path) if config.condition_dropout > 0 or config.cm3_rate > 0 or config.neighbours_path else None
    if config.condition_dropout > 0:
        transforms.append(ConditionDropout(vocab, rate=config.condition_dropout, seed=config.seed))
    if config.cm3_rate > 0:
        transforms.append(CM3Masking(vocab, rate=config.cm3_rate, image_share=config.cm3_image_share, seed=config.seed,
                                     text_cue=config.cm3_text_cue))
    if config.neighbours_path:
        bos, eos, sep = config.specials
        bank = BankDocuments([shards] + ([TokenShards(config.bank_tokens_dir)] if config.bank_tokens_dir else []))
        neighbours = load_neighbours(config.neighbours_path, shards)
        if neighbours.size and neighbours.max() >= len(bank):
            raise StaleInputError(f"{config.neighbours_path} names bank documents beyond the {len(bank)} of "
                                  f"{bank.folder}: rerun retrieval/build_index.py")  # fmt: skip
        transforms.append(RetrievalAugmentation(
            bank, neighbours, bos=bos, eos=eos, sep=sep,
            retrieved_weight=config.retrieved_loss_weight, max_len=seq_len + 1, vocab=vocab,
        ))  # fmt: skip
    return transforms


MODALITY_SUMS = "modality_sums"
"""The loss's metric: text loss sum, text tokens, image loss sum, image tokens (float32, on device)."""


class ModalityLoss(BaseLoss):
    """Next-token cross-entropy plus z-loss; its metrics split the loss into text and image tokens.

    Follows torchtitan's loss contract: ``(local summed loss / global number of
    valid tokens, metrics)``, the metrics being ``{MODALITY_SUMS: sums}`` for
    this batch (on device: no host sync per step). With per-token
    ``loss_weights`` (SFT targets, retrieval augmentation) each token's loss is
    scaled by its weight and the text/image sums cover the weight-1 tokens
    (the main documents) only.

    ``pred`` is either logits [B, T, V] or, from pretraining's model
    (``TitanTransformer``), ``HiddenStates``: then the output head runs here,
    fused with the cross-entropy (``head_nll_and_logsumexp``).
    """

    @dataclass(kw_only=True, slots=True)
    class Config(BaseLoss.Config):
        image_start: int = 0
        """First vocabulary id of image codes."""
        image_stop: int = 0
        """One past the last vocabulary id of image codes."""
        z_loss_weight: float = 0.0
        """Weight of logsumexp(logits)² per token."""

    def __init__(self, config: Config, *, compile_config: CompileConfig | None = None):
        self.config = config
        self.fn = self._summed_loss
        self._maybe_compile(compile_config)

    def _summed_loss(self, pred: torch.Tensor | HiddenStates, labels: torch.Tensor, weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        labels = labels.flatten()
        valid = labels != IGNORE_INDEX
        # the fused kernels never materialise float32 log-probabilities of the whole vocabulary
        if isinstance(pred, HiddenStates):
            nll, lse = head_nll_and_logsumexp(pred.hidden.flatten(0, 1), pred.head_weight, labels.clamp(min=0))
        else:
            nll, lse = nll_and_logsumexp(pred.flatten(0, 1), labels.clamp(min=0))
        nll = torch.where(valid, nll, 0.0)
        per_token = nll + self.config.z_loss_weight * torch.where(valid, lse.square(), 0.0)
        if weights is not None:
            weights = weights.flatten().to(per_token.dtype)
            per_token = per_token * weights
            valid = valid & (weights == 1)
        loss = per_token.sum()
        is_image = valid & (labels >= self.config.image_start) & (labels < self.config.image_stop)
        is_text = valid & ~is_image
        nll = nll.detach()
        stats = torch.stack([(nll * is_text).sum(), is_text.sum(), (nll * is_image).sum(), is_image.sum()]).float()
        return loss, stats

    def __call__(self, pred, labels, global_valid_tokens=None, *, loss_weights: torch.Tensor | None = None, **kwargs):
        loss, sums = self.fn(pred, labels, loss_weights)
        if global_valid_tokens is not None:
            loss = loss / global_valid_tokens
        return loss, {MODALITY_SUMS: sums}
