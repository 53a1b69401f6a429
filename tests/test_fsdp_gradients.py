"""Under FSDP2 on several ranks, the gradient is the one-process gradient of the same global batch.

torchtitan's trainer divides each rank's summed loss by the global token count,
so FSDP must sum the ranks' gradients rather than average them
(``parallelize_decoder`` sets that up, with a reduction gloo supports).
"""

import os
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mmgen.config.schema import ModelConfig

WORLD = 2
VOCAB = 64


def _model():
    from mmgen.train.model_spec import TitanTransformer

    torch.manual_seed(0)
    model = TitanTransformer(TitanTransformer.Config(model=ModelConfig(dim=32, n_layers=2, n_heads=2, max_seq_len=64),
                                                     vocab_size=VOCAB))
    model.init_weights()
    return model


def _loss(model, tokens, global_tokens):
    from mmgen.model.loss import head_nll_and_logsumexp

    out = model(tokens[:, :-1])
    nll, _ = head_nll_and_logsumexp(out.hidden.flatten(0, 1), out.head_weight, tokens[:, 1:].flatten())
    return nll.sum() / global_tokens


def _rank(rank, port, batch, queue):
    from torch.distributed.device_mesh import init_device_mesh

    from mmgen.train.model_spec import parallelize_decoder

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        mesh = init_device_mesh("cpu", (WORLD,), mesh_dim_names=("fsdp",))
        dims = SimpleNamespace(tp_enabled=False, cp_enabled=False, pp_enabled=False, ep_enabled=False,
                               dp_replicate_enabled=False, get_optional_mesh=lambda names: mesh)
        model = parallelize_decoder(
            _model(), parallel_dims=dims,
            training=SimpleNamespace(mixed_precision_param="float32", mixed_precision_reduce="float32"),
            parallelism=SimpleNamespace(fsdp_reshard_after_forward="default"),
            compile_config=SimpleNamespace(enable=False, components=[]), ac_config=None, dump_folder="")
        share = batch.shape[0] // WORLD
        _loss(model, batch[rank * share : (rank + 1) * share], batch[:, 1:].numel()).backward()
        # numpy pickles by value: a tensor would be shared through a file descriptor of an exiting process
        grads = {name: p.grad.full_tensor().numpy() for name, p in model.named_parameters()}
        if rank == 0:
            queue.put(grads)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_give_the_one_process_gradient(free_port):
    batch = torch.randint(0, VOCAB, (4, 33), generator=torch.Generator().manual_seed(1))
    reference = _model()
    _loss(reference, batch, batch[:, 1:].numel()).backward()

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port
    procs = [ctx.Process(target=_rank, args=(r, port, batch, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    grads = queue.get(timeout=240)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for name, p in reference.named_parameters():
        torch.testing.assert_close(torch.from_numpy(grads[name]), p.grad, atol=1e-5, rtol=1e-4, msg=name)
