"""mmgen's decoder as a torchtitan model: the ModelSpec and its parallelize function.

The decoder itself is plain PyTorch (``mmgen.model``); here it only gains the
torchtitan protocol (``BaseModel`` + a nested ``Config``), so its state-dict
keys are the plain model's and checkpoints load without torchtitan. The
parallelize function follows torchtitan's order — activation checkpointing,
then per-block compile, then FSDP2 per block and at the root with a
mixed-precision policy — and supports data parallelism only (FSDP/HSDP).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
from torchtitan.config import TORCH_DTYPE_MAP
from torchtitan.distributed.fsdp import get_fsdp_reshard_after_forward_policy
from torchtitan.protocols import BaseModel
from torchtitan.protocols.model_spec import ModelSpec

from mmgen.config.schema import ModelConfig
from mmgen.model.lora import LoRALinear, add_lora
from mmgen.model.transformer import HiddenStates, Transformer


class TitanTransformer(Transformer, BaseModel):
    """The plain decoder, speaking torchtitan's model protocol."""

    @dataclass(kw_only=True, slots=True)
    class Config(BaseModel.Config):
        model: ModelConfig = field(default_factory=ModelConfig)
        vocab_size: int = 0
        lora_rank: int = 0
        """LoRA adapters of this rank on every projection (0: none; the base weights are then frozen)."""
        lora_alpha: float = 16.0

        def update_from_config(self, *, config, **kwargs) -> None:
            if config.training.seq_len > self.model.max_seq_len:
                raise ValueError(
                    f"training.seq_len ({config.training.seq_len}) exceeds model.max_seq_len ({self.model.max_seq_len})"
                )

        def get_nparams_and_flops(self, model: torch.nn.Module, seq_len: int) -> tuple[int, int]:
            return model.num_params(), model.flops_per_token(seq_len)

    def __init__(self, config: Config):
        Transformer.__init__(self, config.model, config.vocab_size)
        if config.lora_rank:
            add_lora(self, rank=config.lora_rank, alpha=config.lora_alpha)

    def forward(self, tokens: torch.Tensor, **kwargs) -> HiddenStates:
        # torchtitan hands this output to ModalityLoss, which applies the head fused with the cross-entropy
        return Transformer.forward(self, tokens, return_hidden=True, **kwargs)

    def init_weights(self, buffer_device: torch.device | None = None, **kwargs) -> None:
        Transformer.init_weights(self, buffer_device=buffer_device)
        for module in self.modules():
            if isinstance(module, LoRALinear):
                module.reset_adapter()

    def verify_module_protocol(self) -> None:
        # the submodules are plain nn.Modules by design (the model must not depend on torchtitan)
        pass


def parallelize_decoder(model, *, parallel_dims, training, parallelism, compile_config, ac_config, dump_folder):
    """Activation checkpointing → per-block compile → FSDP2 (per block, then root)."""
    if parallel_dims.tp_enabled or parallel_dims.cp_enabled or parallel_dims.pp_enabled or parallel_dims.ep_enabled:
        raise NotImplementedError("mmgen parallelizes over data only (FSDP2/HSDP); set tensor/context/pipeline/expert degrees to 1")
    if ac_config is not None:
        ac_config.build(dump_folder=dump_folder).apply(model)
    if compile_config.enable and "model" in compile_config.components:
        for name, block in list(model.layers.named_children()):
            model.layers.register_module(name, torch.compile(block, backend=compile_config.backend, fullgraph=True))

    names = ["dp_replicate", "fsdp"] if parallel_dims.dp_replicate_enabled else ["fsdp"]
    mesh = parallel_dims.get_optional_mesh(names)
    if mesh is None:  # one process: nothing to shard; it trains in training.dtype
        return model
    mp_policy = MixedPrecisionPolicy(
        param_dtype=TORCH_DTYPE_MAP[training.mixed_precision_param],
        reduce_dtype=TORCH_DTYPE_MAP[training.mixed_precision_reduce],
        # block inputs include float32 RoPE factors, which must not be rounded to the compute dtype
        cast_forward_inputs=False,
    )
    reshard = get_fsdp_reshard_after_forward_policy(parallelism.fsdp_reshard_after_forward, False)
    for block in model.layers.values():
        fully_shard(block, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=reshard)
    # the root unit holds embeddings, final norm and head; it is needed right after the last block
    fully_shard(model, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=False)
    # the loss is already each rank's sum over the global token count (torchtitan's trainer): FSDP must sum
    # the ranks' gradients, not average them, or every gradient shrinks by the number of ranks. A plain SUM
    # (rather than torchtitan's divide factor 1, a PREMUL_SUM) is what gloo can reduce too.
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return model


def build_model_spec(model: ModelConfig, vocab_size: int, name: str) -> ModelSpec:
    return ModelSpec(
        name="mmgen",
        flavor=name,
        model=TitanTransformer.Config(model=dataclasses.replace(model), vocab_size=vocab_size),
        parallelize_fn=parallelize_decoder,
        pipelining_fn=None,
        post_optimizer_build_fn=None,
        state_dict_adapter=None,
    )
