"""Per-block FSDP (FSDP2 `fully_shard`) through Lightning, for every stage.

`PerBlockFSDP` is Lightning's `ModelParallelStrategy` with data parallelism over every process (no tensor
parallelism) and full (unsharded) state dicts in checkpoints, so a checkpoint and an export load on one device.
The stage module's `configure_model` (`StageModule.configure_model`) calls `shard_stage`: every
`CausalWanTransformer` of the stage, trained or frozen (teacher's weights and EMA; SFT's student, critic, frozen
teacher and EMA; RL's policy and frozen reference), is sharded one `CausalWanBlock` per FSDP unit, then the rest of
the model as one unit; any other submodule with parameters (e.g. SFT's adversarial head) becomes its own unit, so
every parameter's gradient is reduced across ranks. Activation checkpointing recomputes each block in backward.

    ardrag-fit --config configs/teacher.yaml --config configs/trainer/fsdp.yaml      # CUDA, NCCL, bf16
    ardrag-fit --config configs/toy/teacher.yaml --config configs/trainer/fsdp_cpu.yaml   # 2 gloo CPU processes
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

FORWARD_METHODS = ("forward_teacher_forcing", "forward_cached")
"""Public forwards of CausalWanTransformer besides `forward`: registered so FSDP gathers the root unit for them."""


class PerBlockFSDP(ModelParallelStrategy):
    """FSDP2 over all processes, one unit per transformer block (see the module docstring).

    Args:
        activation_checkpointing: recompute each block of the TRAINED transformers in backward (frozen ones and
            no-grad forwards are unaffected).
        param_dtype: dtype the gathered parameters compute in ("bfloat16" on GPUs: half the all-gather; None:
            the parameters' own dtype). The sharded master weights and the optimizer stay float32.
        reduce_dtype: dtype of the gradient reduce-scatter (None: param_dtype).
        reshard_after_forward: free each block's gathered parameters after its forward (ZeRO-3); False keeps
            them until backward (ZeRO-2 memory, fewer all-gathers).
        data_parallel_size: processes that split the batch ("auto": all of them).
        tensor_parallel_size: 1 (the stages have no tensor-parallel plan).
        save_distributed_checkpoint: False: one full checkpoint file (loads on one device, `ardrag-export --ckpt`
            reads it); True: a folder of per-rank shards.
        **kwargs: ModelParallelStrategy's (e.g. process_group_backend, timeout).
    """

    def __init__(
        self,
        activation_checkpointing: bool = False,
        param_dtype: str | None = None,
        reduce_dtype: str | None = None,
        reshard_after_forward: bool = True,
        data_parallel_size: int | str = "auto",
        tensor_parallel_size: int | str = 1,
        save_distributed_checkpoint: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            data_parallel_size=data_parallel_size,
            tensor_parallel_size=tensor_parallel_size,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )
        self.activation_checkpointing = activation_checkpointing
        self.param_dtype = _dtype(param_dtype)
        self.reduce_dtype = _dtype(reduce_dtype)
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        # data parallel over every process (Lightning's "auto" would be the node count, tensor parallel the rest)
        if self._tensor_parallel_size == "auto":
            self._tensor_parallel_size = 1
        if self._data_parallel_size == "auto":
            self._data_parallel_size = self.num_processes * self.num_nodes // self._tensor_parallel_size
        super().setup_environment()

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's full-checkpoint loading, which checks each parameter of the model against the file, except
        the stage's frozen submodules (`StageModule.frozen_modules`: re-read from their export, never saved); every
        other key the module saves must be in the file."""
        module = self.lightning_module
        frozen = tuple(getattr(module, "frozen_modules", ()))
        path = Path(self.broadcast(checkpoint_path))
        if not frozen or not path.is_file():
            return super().load_checkpoint(path, weights_only)
        saved = torch.load(path, mmap=True, map_location="cpu", weights_only=True)["state_dict"]
        missing = [
            k for k in module.state_dict() if k not in saved
        ]  # the frozen ones are left out by the module
        if missing:
            raise KeyError(f"checkpoint {path} lacks {len(missing)} keys of the model, e.g. {missing[0]!r}")
        strict = module.strict_loading
        module.strict_loading = False
        try:
            return super().load_checkpoint(path, weights_only)
        finally:
            module.strict_loading = strict


def _dtype(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown torch dtype {name!r} (e.g. 'bfloat16', 'float32')")
    return dtype


def is_sharded(module: torch.nn.Module) -> bool:
    """True when `module` (or one of its submodules) is managed by FSDP2."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def shard_stage(
    stage: torch.nn.Module,
    mesh: Any,
    activation_checkpointing: bool = False,
    param_dtype: torch.dtype | None = None,
    reduce_dtype: torch.dtype | None = None,
    reshard_after_forward: bool = True,
) -> list[str]:
    """Shard a stage module in place (idempotent); returns the names of the FSDP units' roots it made."""
    from torch.distributed.fsdp import (
        FSDPModule,
        MixedPrecisionPolicy,
        fully_shard,
        register_fsdp_forward_method,
    )

    from ardrag.models.causal_wan import CausalWanTransformer

    if is_sharded(stage):
        return []
    if any("lora_" in name for name, _ in stage.named_parameters()):
        raise ValueError(
            "LoRA adapters (model.init_args.lora.rank > 0) are not sharded by PerBlockFSDP (their export folds them "
            "into a copy of the unsharded model): use the ddp overlay, or a full fine-tune (lora.rank 0)"
        )
    kw: dict[str, Any] = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if param_dtype is not None:
        kw["mp_policy"] = MixedPrecisionPolicy(
            param_dtype=param_dtype, reduce_dtype=reduce_dtype or param_dtype
        )
    made = []
    for name, module in stage.named_modules():
        if not isinstance(module, CausalWanTransformer):
            continue
        trained = any(p.requires_grad for p in module.parameters())
        if activation_checkpointing and trained:
            module.enable_gradient_checkpointing()
        for block in module.blocks:
            fully_shard(block, **kw)
        fully_shard(module, **kw)
        for method in FORWARD_METHODS:
            register_fsdp_forward_method(module, method)
        made.append(name)
    # anything else with parameters (outside the transformers): its own unit, so its gradients are reduced too
    for name, child in stage.named_children():
        if isinstance(child, FSDPModule) or is_sharded(child):
            continue
        if any(True for _ in child.parameters()):
            fully_shard(child, **kw)
            made.append(name)
    return made
