"""PerBlockFSDP's sharding of a stage (`shard_stage`, what `StageModule.configure_model` runs under the strategy) on
2 gloo CPU ranks: every transformer of the SFT stage (student, critic, EMA and the FROZEN teacher) is sharded one
`CausalWanBlock` per FSDP unit, every parameter is split between the ranks, and the sharded teacher's forward
equals the unsharded one."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ardrag.pipeline import ARDragPipeline, PipelineConfig

WORLD = 2


def _worker(rank: int, port: int, export: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule

        from ardrag.models.causal_wan import CausalWanBlock, CausalWanTransformer
        from ardrag.training.fsdp import shard_stage
        from ardrag.training.sft import SFTModule

        stage = SFTModule(teacher=export)
        cfg = stage.teacher.config
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, cfg.in_channels, 2, 4, 4, generator=g)
        cond = torch.randn(1, cfg.cond_in_channels, 2, 4, 4, generator=g)
        ctx, t = torch.randn(1, 4, cfg.text_dim, generator=g), torch.tensor([500.0])
        with torch.no_grad():
            before = stage.teacher(x, t, ctx, cond=cond)
        made = shard_stage(stage, init_device_mesh("cpu", (WORLD,)), activation_checkpointing=True)
        with torch.no_grad():
            after = stage.teacher(x, t, ctx, cond=cond)
        report = {"made": made, "max_diff": float((after - before).abs().max())}
        for name, m in stage.named_modules():
            if isinstance(m, CausalWanTransformer):
                blocks = [b for b in m.blocks if isinstance(b, CausalWanBlock)]
                report[name] = {
                    "root": isinstance(m, FSDPModule),
                    "blocks": sum(isinstance(b, FSDPModule) for b in blocks),
                    "num_blocks": len(blocks),
                    "local": sum(p.to_local().numel() for p in m.parameters()),
                    "full": sum(p.numel() for p in m.parameters()),
                    "checkpointing": bool(getattr(m, "gradient_checkpointing", False)),
                }
        torch.save(report, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_transformer_of_the_sft_stage_is_sharded_per_block(tmp_path):
    config = PipelineConfig(height=16, width=16)
    ARDragPipeline.from_preset("tiny", config, seed=0).save_pretrained(tmp_path / "teacher")
    mp.spawn(_worker, args=(_free_port(), str(tmp_path / "teacher"), str(tmp_path)), nprocs=WORLD, join=True)
    reports = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    for rep in reports:
        assert rep["max_diff"] <= 1e-5  # the gathered teacher computes what the unsharded one did
        assert {"teacher", "student", "critic", "ema.module"} <= set(rep)
        for name in ("teacher", "student", "critic", "ema.module"):
            r = rep[name]
            assert r["root"] and r["blocks"] == r["num_blocks"] == 2, name
            # the trained models recompute blocks in backward; the frozen teacher and the EMA never run backward
            assert r["checkpointing"] == (name in ("student", "critic")), name
    for name in ("teacher", "student", "critic", "ema.module"):
        local = [rep[name]["local"] for rep in reports]
        assert sum(local) == reports[0][name]["full"] and max(local) < reports[0][name]["full"], name
