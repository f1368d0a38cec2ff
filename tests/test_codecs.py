"""Codecs (pixel, PCA and Wan VAE) and trajectory conditioning."""

from __future__ import annotations

import pytest
import torch
import torch.utils._pytree as pytree
from diffusers import AutoencoderKLWan
from torch.utils._python_dispatch import TorchDispatchMode

from ardrag.codecs import PcaCodec, PixelCodec, WanVAECodec, build_codec, fit_pca_codec
from ardrag.conditioning import PALETTE, Conditioner, motion_preview, trajectory_heatmaps


def tiny_vae() -> AutoencoderKLWan:
    # the real Wan VAE's structure (causal 3D convs, 4x temporal) at toy width: 2 stages, so 4x spatial
    return AutoencoderKLWan(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 2],
        num_res_blocks=1,
        temperal_downsample=[True, True],
        latents_mean=[0.1, -0.2, 0.3, 0.0],
        latents_std=[1.5, 0.5, 2.0, 1.0],
    ).eval()


def test_pixel_codec_is_an_exact_inverse():
    codec = PixelCodec(4)
    video = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    z = codec.encode(video)
    assert z.shape == (2, 48, 5, 4, 6)
    assert torch.equal(codec.decode(z), video)
    dec = codec.stream_decoder()
    assert torch.equal(torch.cat([dec(z[:, :, i : i + 1]) for i in range(5)], 2), video)


def _toy_frames(split: str, n: int) -> torch.Tensor:
    import numpy as np

    from datamodules.toy_world import clip_seed, render_clip

    video = np.concatenate([render_clip(clip_seed(0, split, i)).video[::4] for i in range(n)])
    return torch.from_numpy(video).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_pca_codec_fit_reconstructs_toy_frames_and_round_trips_its_description():
    codec = fit_pca_codec(_toy_frames("train", 16), factor=4, channels=12)
    assert codec.latent_channels == 12 and codec.spatial_factor == 4
    torch.testing.assert_close(codec.basis @ codec.basis.T, torch.eye(12), atol=1e-5, rtol=0)
    held_out = _toy_frames("val", 4)[:, :, None]  # (N, 3, 1, H, W): one-frame videos
    z = codec.encode(held_out)
    assert z.shape == (held_out.shape[0], 12, 1, 16, 16)
    psnr = 10 * torch.log10(4 / ((codec.decode(z) - held_out) ** 2).mean())
    assert psnr > 30.0, float(psnr)  # 12 of 48 patch dimensions keep ~32 dB of the held-out toy frames
    # a latent is the projection: decoding then encoding again gives it back (up to float rounding)
    torch.testing.assert_close(codec.encode(codec.decode(z)), z, atol=1e-4, rtol=0)
    # exported description -> the same codec (6-decimal rounding), and streaming decode = full decode
    again = build_codec(codec.describe())
    assert isinstance(again, PcaCodec)
    torch.testing.assert_close(again.decode(z), codec.decode(z), atol=1e-4, rtol=0)
    dec = again.stream_decoder()
    video = torch.randn(1, 12, 3, 16, 16)
    torch.testing.assert_close(
        torch.cat([dec(video[:, :, i : i + 1]) for i in range(3)], 2), again.decode(video)
    )
    # the fit does not depend on eigenvector signs the solver happens to return: a re-fit gives the same basis
    torch.testing.assert_close(fit_pca_codec(_toy_frames("train", 16)).basis, codec.basis, atol=1e-5, rtol=0)


def test_pca_codec_rejects_bad_shapes_in_one_line():
    with pytest.raises(ValueError, match="needs a mean of 48 values"):
        PcaCodec(torch.zeros(47), torch.eye(48)[:12])
    with pytest.raises(ValueError, match="orthonormal"):
        PcaCodec(torch.zeros(48), torch.ones(2, 48))
    with pytest.raises(ValueError, match="needs its 'mean' and 'basis'"):
        build_codec({"type": "pca", "factor": 4})


def test_wan_vae_stream_decode_equals_full_decode_and_frame_counts(tmp_path):
    vae = tiny_vae()
    vae.save_pretrained(tmp_path / "vae")
    codec = build_codec({"type": "wan_vae", "path": str(tmp_path / "vae")})
    assert isinstance(codec, WanVAECodec)
    assert (codec.temporal_factor, codec.spatial_factor, codec.latent_channels) == (4, 4, 4)
    assert codec.num_latent_frames(9) == 3 and codec.num_frames(3) == 9
    with pytest.raises(ValueError, match="1 \\+ 4k"):
        codec.num_latent_frames(8)
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        z = codec.encode(video)
        assert z.shape == (1, 4, 3, 4, 4)
        full = codec.decode(z)
        dec = codec.stream_decoder()
        parts = [dec(z[:, :, i : i + 1]) for i in range(3)]
    assert [p.shape[2] for p in parts] == [1, 4, 4]  # the first latent frame is one video frame, then 4 each
    assert torch.allclose(torch.cat(parts, 2), full, atol=1e-6)


def test_missing_wan_vae_folder_says_what_to_provide(tmp_path):
    with pytest.raises(FileNotFoundError, match="local diffusers folder"):
        build_codec({"type": "wan_vae", "path": str(tmp_path / "nowhere")})


def test_heatmap_peaks_at_the_track_and_respects_visibility():
    tracks = torch.tensor([[[[10.0, 20.0], [40.0, 5.0]], [[12.0, 22.0], [41.0, 6.0]]]])  # (1, T=2, N=2, 2)
    visible = torch.tensor([[[True, True], [True, False]]])
    heat = trajectory_heatmaps(tracks, visible, 32, 48, sigma=2.0)
    assert heat.shape == (1, 3, 2, 32, 48)
    lum = heat[0, 0]  # track 0 is white, track 1 red: channel 0 holds both
    assert lum[0, 20, 10] == pytest.approx(1.0) and lum[0, 5, 40] == pytest.approx(1.0)
    assert lum[1, 22, 12] == pytest.approx(1.0) and lum[1, 6, 41] == pytest.approx(0.0)  # invisible point
    assert heat[0, 1, 0, 5, 40] == pytest.approx(0.2)  # red track: green channel is 0.2
    assert lum[0, 20, 14].item() == pytest.approx(torch.exp(torch.tensor(-16 / 8)).item(), rel=1e-5)


def test_conditioner_layout():
    codec = PixelCodec(4)
    cond = Conditioner(codec, heatmap_sigma=2.0)
    ref = torch.rand(2, 3, 16, 16) * 2 - 1
    tracks = torch.full((2, 3, 1, 2), 8.0)
    c = cond(ref, tracks, None)
    assert c.shape == (2, cond.channels, 3, 4, 4) and cond.channels == 97
    assert torch.equal(c[:, 48:96, 0], codec.encode(ref[:, :, None])[:, :, 0])  # reference at frame 0
    assert c[:, 48:96, 1:].abs().sum() == 0 and c[:, 96, 0].eq(1).all() and c[:, 96, 1:].eq(0).all()


def test_conditioner_can_repeat_the_reference_in_every_frame():
    codec = PixelCodec(4)
    ref = torch.rand(2, 3, 16, 16) * 2 - 1
    tracks = torch.full((2, 3, 1, 2), 8.0)
    first = Conditioner(codec, 2.0, reference_frames="first")(ref, tracks, None)
    every = Conditioner(codec, 2.0, reference_frames="all")(ref, tracks, None)
    enc = codec.encode(ref[:, :, None])[:, :, 0]
    for m in range(3):
        assert torch.equal(every[:, 48:96, m], enc)  # the reference at every latent frame
    # trajectory channels and the frame-0 mask are the same in both layouts
    assert torch.equal(every[:, :48], first[:, :48]) and torch.equal(every[:, 96:], first[:, 96:])
    with pytest.raises(ValueError, match="reference_frames"):
        Conditioner(codec, 2.0, reference_frames="last")


def _dense_heatmaps(tracks, visible, height, width, sigma):
    """The direct formula, materialising (B, T, N, H, W): the reference for small sizes."""
    ys = torch.arange(height, dtype=torch.float32).view(1, 1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.float32).view(1, 1, 1, 1, width)
    px, py = tracks[..., 0, None, None], tracks[..., 1, None, None]
    blobs = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma**2)) * visible[..., None, None]
    colours = PALETTE[torch.arange(tracks.shape[2]) % len(PALETTE)]
    return torch.einsum("btnhw,nc->bcthw", blobs, colours).clamp(0, 1)


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any torch op produces while active (bytes)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for x in pytree.tree_leaves(out):
            if isinstance(x, torch.Tensor):
                self.largest = max(self.largest, x.numel() * x.element_size())
        return out


def test_heatmaps_equal_the_dense_formula_with_memory_independent_of_track_count():
    g = torch.Generator().manual_seed(0)
    b, t, h, w = 2, 11, 24, 40
    largest = {}
    for n in (3, 64):
        tracks = torch.rand(b, t, n, 2, generator=g) * torch.tensor([w, h])
        visible = torch.rand(b, t, n, generator=g) > 0.3
        with _LargestTensor() as probe:
            heat = trajectory_heatmaps(tracks, visible, h, w, sigma=1.5, frames_per_chunk=4)
        largest[n] = probe.largest
        # exp(a) exp(b) vs exp(a + b) and a different summation order: float32 rounding ~1e-6 on values <= 1
        torch.testing.assert_close(heat, _dense_heatmaps(tracks, visible, h, w, 1.5), rtol=0, atol=1e-5)
    out_bytes = b * 3 * t * h * w * 4
    # the output is the largest tensor whatever the track count (per-chunk intermediates are O(chunk N (H + W)));
    # the dense formula's (B, T, N, H, W) at N = 64 would be 21x the output
    assert largest[3] == largest[64] == out_bytes


def test_motion_preview_moves_the_disc_around_a_drag_start_and_keeps_the_rest():
    g = torch.Generator().manual_seed(0)
    ref = torch.rand(1, 3, 32, 40, generator=g) * 2 - 1
    start = torch.tensor([12.0, 10.0])
    tracks = torch.stack([start, start + torch.tensor([7.0, 3.0]), start + torch.tensor([7.0, 3.0])])
    tracks = torch.stack([tracks, torch.tensor([[30.0, 25.0]] * 3)], dim=1)[
        None
    ]  # (1, T=3, N=2, 2); 2nd static
    visible = torch.tensor([[[True, True], [True, True], [False, True]]])  # track 0 hidden in frame 2
    out = motion_preview(ref, tracks, visible, radius=4.0)
    assert out.shape == (1, 3, 3, 32, 40)
    torch.testing.assert_close(out[:, :, 0], ref, atol=1e-5, rtol=0)  # frame 0: every drag is at its start
    torch.testing.assert_close(
        out[:, :, 2], ref, atol=1e-5, rtol=0
    )  # the moving drag is hidden: nothing moves
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(40.0), indexing="ij")
    d = torch.hypot(xx - 19, yy - 13)  # distance to the drag's position in frame 1
    inside, outside = d <= 3.5, d >= 4.5
    shifted = torch.roll(ref, shifts=(3, 7), dims=(2, 3))  # ref(x - 7, y - 3)
    torch.testing.assert_close(out[:, :, 1][..., inside], shifted[..., inside], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[:, :, 1][..., outside], ref[..., outside], atol=1e-5, rtol=0)


def test_conditioner_with_motion_preview_adds_channels_that_trajectory_dropout_finds():
    codec = PixelCodec(4)
    plain = Conditioner(codec, reference_frames="all")
    prev = Conditioner(codec, reference_frames="all", motion_preview_radius=6.0)
    assert (plain.channels, prev.channels) == (97, 145)
    ref = torch.rand(2, 3, 32, 32) * 2 - 1
    tracks = (
        torch.tensor([[5.0, 5.0], [9.0, 6.0], [13.0, 7.0]]).expand(2, 1, 3, 2).transpose(1, 2).contiguous()
    )
    cond_plain, cond_prev = plain(ref, tracks, None), prev(ref, tracks, None)
    torch.testing.assert_close(cond_prev[:, :97], cond_plain)  # the paper's channels are unchanged
    idx = prev.trajectory_channel_index()
    assert idx == list(range(48)) + list(range(97, 145))
    moved = codec.encode(motion_preview(ref, tracks, None, 6.0))
    torch.testing.assert_close(cond_prev[:, 97:], moved)
    torch.testing.assert_close(prev.drag_latents(ref, tracks, None), cond_prev[:, idx])


def test_filled_motion_preview_leaves_no_copy_of_a_dragged_sprite_at_its_start():
    # toy clips where a sprite moves more than its own size: its frame-0 patch must not stay at its start
    from datamodules.toy_world import render_clip

    checked = 0
    for seed in range(12):
        clip = render_clip(seed)
        ref = torch.from_numpy(clip.video[0]).permute(2, 0, 1)[None].float() / 127.5 - 1
        tracks, vis = torch.from_numpy(clip.tracks)[None], torch.from_numpy(clip.visible)[None]
        plain = motion_preview(ref, tracks, vis, 10.0)
        filled, vacated = motion_preview(ref, tracks, vis, 10.0, fill=1.5, return_vacated=True)
        torch.testing.assert_close(filled[:, :, 0], ref, atol=1e-5, rtol=0)  # frame 0 is the reference
        roles = clip.meta.get("roles") or []
        for k in range(tracks.shape[2]):
            if roles and roles[k] != "centre":
                continue
            far = ((tracks[0, :, k] - tracks[0, 0, k]).norm(dim=-1) > 12) & vis[0, :, k] & vis[0, 0, k]
            if not bool(far.any()):
                continue
            t = int(far.nonzero()[-1])
            # still: no other sprite covers that start in the ground truth at frame t
            x, y = (int(round(v)) for v in tracks[0, 0, k].tolist())
            if min(x, y) < 4 or max(x, y) > 59:
                continue
            patch0 = ref[0, :, y - 3 : y + 4, x - 3 : x + 4]
            old = plain[0, :, t, y - 3 : y + 4, x - 3 : x + 4]
            new = filled[0, :, t, y - 3 : y + 4, x - 3 : x + 4]
            if (
                old - patch0
            ).abs().mean() > 0.02:  # another drag's paste covers this start: not a remnant case
                continue
            # the plain preview keeps the sprite at its start, the filled one does not
            assert (new - patch0).abs().mean() > 0.1
            assert float(vacated[0, 0, t, y, x]) > 0.99  # and flags the pixel as vacated
            checked += 1
    assert checked >= 5


def test_conditioner_with_filled_preview_adds_a_vacated_flag_and_blanks_drags_to_the_reference():
    codec = PixelCodec(4)
    cond = Conditioner(codec, reference_frames="all", motion_preview_radius=6.0, preview_fill=1.5)
    assert cond.channels == 146 and cond.preview_channels() == (97, 145)
    assert cond.trajectory_channel_index() == list(range(48)) + list(range(97, 146))
    ref = torch.rand(2, 3, 32, 32) * 2 - 1
    tracks = (
        torch.tensor([[5.0, 5.0], [9.0, 6.0], [19.0, 7.0]]).expand(2, 1, 3, 2).transpose(1, 2).contiguous()
    )
    c = cond(ref, tracks, None)
    _, vac = motion_preview(ref, tracks, None, 6.0, fill=1.5, return_vacated=True)
    # the flag is the vacated fraction per 4x4 latent pixel: the drag start (5, 5) left by frame 2
    torch.testing.assert_close(c[:, 145], torch.nn.functional.avg_pool2d(vac[:, 0], 4))
    assert float(c[0, 145, 2, 1, 1]) == 1.0 and float(c[0, 145, 0].abs().max()) == 0.0
    out = cond.blank_drags(c, torch.tensor([True, False]))
    torch.testing.assert_close(out[1], c[1])  # not dropped: unchanged
    assert float(out[0, :48].abs().max()) == 0 and float(out[0, 145].abs().max()) == 0
    torch.testing.assert_close(out[0, 97:145], c[0, 48:96])  # dropped preview: the reference, still
