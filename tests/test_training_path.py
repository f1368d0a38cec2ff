"""The pieces the training stages will use fit together: datamodule batch -> conditions -> masked forward ->
flow-matching loss that falls; and a Self-Rollout/GRPO rollout on the same batch gives gradients and log-probs."""

from __future__ import annotations

import torch

from ardrag.conditioning import Conditioner
from ardrag.models import CausalConfig, CausalWanTransformer, preset_config
from ardrag.sampling import Conditions, Denoiser, RolloutConfig, iter_rollout
from ardrag.text import HashTextEncoder
from datamodules import ARDragDataModule
from datamodules.toy_world import write_toy_world


def test_teacher_forcing_flow_matching_loss_falls_on_a_toy_batch(tmp_path):
    write_toy_world(
        tmp_path,
        num_train=8,
        num_val=2,
        num_test=2,
        size=32,
        frames=9,
        samples_per_shard=4,
        min_shards=2,
        progress=False,
    )
    dm = ARDragDataModule(
        train_shards=str(tmp_path / "train"),
        val_shards=None,
        test_shards=None,
        batch_size=4,
        num_workers=0,
        epoch_length=4,
        max_tracks=3,
        num_frames=8,
        seed=0,
    )
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    video, tracks, visible = batch["video"], batch["tracks"], batch["visible"]
    assert video.shape[:3] == (4, 3, 8) and tracks.shape[:2] == (4, 8) and visible.dtype == torch.bool

    torch.manual_seed(0)
    from ardrag.codecs import PixelCodec

    codec = PixelCodec(4)
    text = HashTextEncoder(dim=16, max_length=8)
    cond = Conditioner(codec, heatmap_sigma=1.5)(video[:, :, 0], tracks, visible)
    x0 = codec.encode(video)  # (B, 48, 8, 8, 8)
    ctx = text.encode(batch["prompt"])
    model = CausalWanTransformer(
        **preset_config("tiny", in_channels=48, out_channels=48, cond_in_channels=97)
    )
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    causal = CausalConfig(chunk_size=1, cache_frames=4)
    g = torch.Generator().manual_seed(0)
    eps = torch.randn(x0.shape, generator=g)
    s = torch.rand(x0.shape[0], x0.shape[2], generator=g).clamp(0.05, 0.95)  # per-frame noise levels
    xs = (1 - s[:, None, :, None, None]) * x0 + s[:, None, :, None, None] * eps
    losses = []
    for _ in range(60):
        v = model.forward_teacher_forcing(x0, xs, s * 1000, ctx, causal, cond=cond)
        loss = (v - (eps - x0)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    target = eps - x0
    per_channel_mean = target.mean(dim=(0, 2, 3, 4), keepdim=True)
    constant_loss = (target - per_channel_mean).square().mean().item()  # the best input-blind prediction
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}; best constant predictor {constant_loss:.3f}")
    assert losses[-1] < 0.75 * losses[0]
    assert losses[-1] < 0.95 * constant_loss  # it uses its inputs, not just the target's mean

    # the same batch through the frame-wise rollout: one SDE step and one gradient step per frame
    den = Denoiser(model, Conditions(ctx[:1], cond[:1]))
    noise = torch.randn(1, 48, 8, 8, 8, generator=g)
    chunks = list(
        iter_rollout(den, noise, RolloutConfig(causal=causal), sde_steps=[1] * 8, grad_steps=[0] * 8)
    )
    assert all(torch.isfinite(c.log_prob).all() for c in chunks)
    sum(c.grad_x0.square().mean() for c in chunks).backward()
    assert model.cond_embedding.weight.grad.abs().sum() > 0
