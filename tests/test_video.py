"""Video helpers: trajectories drawn over frames land where the targets are."""

from __future__ import annotations

import numpy as np
import pytest

from ardrag.video import TRACK_COLORS, draw_tracks


def test_draw_tracks_marks_the_targets_and_leaves_the_input_alone():
    frames = np.zeros((5, 16, 16, 3), np.uint8)
    tracks = np.stack([np.linspace([3, 3], [12, 3], 5), np.linspace([8, 12], [8, 12], 5)], axis=1)
    visible = np.ones((5, 2), bool)
    visible[2:, 1] = False
    out = draw_tracks(frames, tracks, visible, scale=4)
    assert out.shape == (5, 64, 64, 3) and frames.max() == 0  # upscaled copy, input untouched
    # the ring of track 0 at frame 4 is centred on (12, 3) * 4 + 1.5: its colour appears within radius 6 of it
    cy, cx = int(3 * 4 + 1.5), int(12 * 4 + 1.5)
    patch = out[4, cy - 6 : cy + 7, cx - 6 : cx + 7].reshape(-1, 3).astype(int)
    assert (np.abs(patch - TRACK_COLORS[0]).sum(1) < 60).any()
    # track 1's ring is drawn while visible, not after it is hidden (only its faint 1-point path history remains)
    cy, cx = int(12 * 4 + 1.5), int(8 * 4 + 1.5)
    assert out[1, cy - 6 : cy + 7, cx - 6 : cx + 7].max() > 100
    assert out[3, cy - 6 : cy + 7, cx - 6 : cx + 7].max() < 20
    # the path of track 0 is drawn up to the current frame only
    assert out[1, :, 44:].max() == 0 and out[4, :, 44:].max() > 100


def test_draw_tracks_rejects_mismatched_tracks():
    with pytest.raises(ValueError, match="tracks must be"):
        draw_tracks(np.zeros((3, 8, 8, 3), np.uint8), np.zeros((4, 1, 2)))


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    import os

    from ardrag.video import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.json", b"{}")
    finally:
        os.umask(old)
    # the temp file behind the atomic rename is created 0600; results must be readable by other users
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600  # a private umask is respected
    assert (tmp_path / "a.json").read_bytes() == b"{}"
