"""Per-block FSDP2 (`fully_shard` on every transformer block, then the root) on 2 gloo CPU ranks equals the unsharded
model: forward outputs and gradients in every attention layout, with and without activation checkpointing."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ardrag.models import CausalConfig, CausalWanTransformer, preset_config

CFG = preset_config("tiny", cond_in_channels=3)
CAUSAL = CausalConfig(chunk_size=1, cache_frames=2, sink_frames=1)
WORLD = 2


def _model() -> CausalWanTransformer:
    torch.manual_seed(0)
    model = CausalWanTransformer(**CFG)
    with torch.no_grad():  # zero-initialised layers would hide a block that is skipped or run twice
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _inputs(rank: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own batch: gradients must be averaged
    f = 4
    return {
        "clean": torch.randn(1, 12, f, 4, 4, generator=g),
        "noisy": torch.randn(1, 12, f, 4, 4, generator=g),
        "cond": torch.randn(1, 3, f, 4, 4, generator=g),
        "ctx": torch.randn(1, 5, 16, generator=g),
        "t": torch.rand(1, f, generator=g) * 1000,
    }


def _loss_and_outputs(model: CausalWanTransformer, b: dict[str, torch.Tensor]):
    """Bidirectional + teacher-forcing (masked) forwards, one scalar loss, and a no-grad cached forward."""
    bi = model(b["noisy"], b["t"], b["ctx"], cond=b["cond"])
    tf = model.forward_teacher_forcing(b["clean"], b["noisy"], b["t"], b["ctx"], CAUSAL, cond=b["cond"])
    with torch.no_grad():
        cache = model.new_cache(CAUSAL, 4, 4)
        model.forward_cached(
            b["clean"][:, :, :1], torch.zeros(1, 1), b["ctx"], cache, 0, b["cond"][:, :, :1], write=True
        )
        cached = model.forward_cached(
            b["noisy"][:, :, 1:2], b["t"][:, 1:2], b["ctx"], cache, 1, b["cond"][:, :, 1:2]
        )
    return bi.square().mean() + tf.square().mean(), (bi.detach(), tf.detach(), cached)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.fsdp import fully_shard

        # one spawn for both settings: starting the processes dominates the runtime
        for checkpointing in (False, True):
            model = _model().train()
            if checkpointing:
                model.enable_gradient_checkpointing()
            for block in model.blocks:
                fully_shard(block)
            fully_shard(model)
            loss, outs = _loss_and_outputs(model, _inputs(rank))
            loss.backward()
            grads = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
            torch.save({"outs": outs, "grads": grads}, f"{out}/ckpt{int(checkpointing)}_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return out


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("checkpointing", [False, True])
def test_per_block_fully_shard_matches_the_unsharded_model(sharded_runs, checkpointing):
    ref = _model().train()
    losses = []
    for rank in range(WORLD):
        loss, outs = _loss_and_outputs(ref, _inputs(rank))
        got = torch.load(sharded_runs / f"ckpt{int(checkpointing)}_rank{rank}.pt")
        for a, b in zip(got["outs"], outs):
            # same weights, same kernels: sharding only moves parameters, so outputs agree to float32 rounding
            # (~1e-6 at magnitudes ~10); a skipped block or a missing all-gather differs by O(1)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        losses.append(loss)
    (sum(losses) / WORLD).backward()  # FSDP averages the ranks' gradients
    grads = torch.load(sharded_runs / f"ckpt{int(checkpointing)}_rank0.pt")["grads"]
    for name, p in ref.named_parameters():
        # reduce-scatter sums in a different order than autograd: rounding ~1e-6 relative
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert sum(g.abs().sum() for g in grads.values()) > 0
