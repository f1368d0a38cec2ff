"""ardrag-generate: malformed trajectories are refused before any model loads; a good one writes a video."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from ardrag import ARDragPipeline
from ardrag.cli.generate import main
from ardrag.pipeline import PipelineConfig
from ardrag.trajectory import TrajectoryLimits, parse_trajectory
from ardrag.video import read_image, read_video, write_video

W, H = 40, 30
GOOD = {"tracks": [[[5, 5], [10, 8], [15, 12]], [[30, 20], [30, 20], [31, 21]]]}

MALFORMED = {
    "not an object": ([1, 2], "JSON object"),
    "no tracks": ({"visible": []}, "missing 'tracks'"),
    "empty": ({"tracks": []}, "non-empty"),
    "empty track": ({"tracks": [[]]}, "track 0 must be a non-empty"),
    "wrong nesting": ({"tracks": [[5, 5], [6, 6]]}, "holds [x, y] points, not tracks"),
    # more flat points than the track limit: the nesting is the error, not the count
    "flat points": ({"tracks": [[i, i] for i in range(17)]}, "holds [x, y] points, not tracks"),
    "triple": ({"tracks": [[[1, 2, 3]]]}, "pair of numbers"),
    "string coord": ({"tracks": [[["1", 2]]]}, "pair of numbers"),
    "NaN": ("NAN", "not finite"),
    "infinite": ("INF", "not finite"),
    "ragged T": ({"tracks": [[[1, 1], [2, 2]], [[1, 1]]]}, "same number of frames"),
    "far outside": ({"tracks": [[[5, 5], [500, 5]]]}, "far outside"),
    "too many frames": ({"tracks": [[[1, 1]] * 9]}, "exceed the model's limit of 8"),
    "too many tracks": ({"tracks": [[[1, 1]]] * 5}, "exceed the model's limit of 4"),
    "bad visible": ({"tracks": [[[1, 1], [2, 2]]], "visible": [[True]]}, "'visible' must be"),
    "visible not bool": ({"tracks": [[[1, 1]]], "visible": [[1]]}, "true or false"),
    "bad width": ({"tracks": [[[1, 1]]], "width": -3}, "'width' must be a positive"),
    "unknown key": ({"tracks": [[[1, 1]]], "colour": 1}, "unknown keys"),
}


def _args(checkpoint, image, trajectory, out, *extra: str) -> list[str]:
    """ardrag-generate's command line."""
    return [
        "--checkpoint",
        str(checkpoint),
        "--image",
        str(image),
        "--trajectory",
        str(trajectory),
        "--out",
        str(out),
        *extra,
    ]


def _write_case(path, obj):
    if obj == "NAN":
        path.write_text('{"tracks": [[[1, NaN]]]}')
    elif obj == "INF":
        path.write_text('{"tracks": [[[Infinity, 1]]]}')
    else:
        path.write_text(json.dumps(obj))


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    config = PipelineConfig(
        height=32,
        width=32,
        text_encoder={"type": "hash", "dim": 16, "max_length": 8},
        max_frames=8,
        max_tracks=4,
    )
    pipe = ARDragPipeline.from_preset("tiny", config)
    with torch.no_grad():
        for p in pipe.transformer.parameters():
            p.normal_(0, 0.1)
    pipe.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def image_path(tmp_path_factory):
    import cv2

    p = tmp_path_factory.mktemp("img") / "img.png"
    cv2.imwrite(str(p), np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    return p


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_trajectory_is_refused_with_one_line_and_exit_2(case, tmp_path, image_path, capsys):
    obj, message = MALFORMED[case]
    traj = tmp_path / "t.json"
    _write_case(traj, obj)
    # a folder with only the JSON: if validation let the input through, loading the model would fail instead
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    cfg = PipelineConfig(max_frames=8, max_tracks=4)
    (ckpt / "ardrag_pipeline.json").write_text(json.dumps(cfg.__dict__))
    rc = main(_args(ckpt, image_path, traj, tmp_path / "o.mp4"))
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("ardrag-generate: error: ") and message in err
    assert not (tmp_path / "o.mp4").exists()


def test_not_json_and_missing_file(tmp_path, image_path, export_dir, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text("{tracks: ")
    for traj, msg in ((bad, "not valid JSON"), (tmp_path / "none.json", "cannot read")):
        rc = main(_args(export_dir, image_path, traj, tmp_path / "o.mp4"))
        err = capsys.readouterr().err
        assert rc == 2 and msg in err and err.count("\n") == 1


def test_console_script_exit_code_and_no_traceback(tmp_path, image_path, export_dir):
    traj = tmp_path / "t.json"
    traj.write_text('{"tracks": [[[1, NaN]]]}')
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ardrag.cli.generate",
            *_args(export_dir, image_path, traj, tmp_path / "o.mp4"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1


def test_coordinates_are_rescaled_from_the_given_frame():
    tracks, visible = parse_trajectory({"tracks": [[[10, 10], [20, 5]]], "width": 20, "height": 10}, 40, 30)
    assert tracks.shape == (2, 1, 2) and visible.all()
    assert tracks[:, 0].tolist() == [[20.0, 30.0], [40.0, 15.0]]
    with pytest.raises(ValueError, match="far outside"):
        parse_trajectory({"tracks": [[[0, 0], [200, 0]]]}, 40, 30, TrajectoryLimits(margin=0.5))


def test_generate_writes_mp4_and_gif(tmp_path, image_path, export_dir, capsys):
    traj = tmp_path / "t.json"
    traj.write_text(json.dumps(GOOD))
    out = tmp_path / "video.mp4"
    rc = main(_args(export_dir, image_path, traj, out, "--gif", "--seed", "1"))
    assert rc == 0
    assert f"wrote {out} and {tmp_path / 'video.gif'} (" in capsys.readouterr().out  # both files named
    frames, _ = read_video(out)
    assert frames.shape == (3, 32, 32, 3)
    pipe = ARDragPipeline.from_pretrained(export_dir)
    tracks, visible = parse_trajectory(GOOD, W, H)
    ref = pipe(read_image(image_path), tracks, visible, seed=1)
    # the files hold the pipeline's frames: an untrained model's output is noise, which lossy MP4 keeps only in
    # its per-frame mean colour; the GIF (palette-quantised) keeps the pixels
    assert np.abs(frames.mean((1, 2)) - ref.mean((1, 2))).max() < 5
    gif = Image.open(tmp_path / "video.gif")
    gif_frames = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)])
    assert gif_frames.shape == ref.shape and np.abs(gif_frames.astype(int) - ref).mean() < 15
    other = pipe(read_image(image_path), tracks, visible, seed=2)
    assert np.abs(gif_frames.astype(int) - other).mean() > 40  # and not just any noise video


def test_write_video_rejects_bad_suffix(tmp_path):
    with pytest.raises(ValueError, match="suffix"):
        write_video(tmp_path / "x.avi", np.zeros((2, 8, 8, 3), np.uint8))


def test_export_cli_preset_and_base(tmp_path):
    from diffusers import WanTransformer3DModel

    from ardrag.cli.export import main as export_main
    from ardrag.models import preset_config

    cfg = tmp_path / "p.json"
    cfg.write_text(json.dumps({"height": 32, "width": 32, "text_encoder": {"type": "hash", "dim": 16}}))
    assert export_main(["--pipeline-config", str(cfg), "--preset", "tiny", "--out", str(tmp_path / "a")]) == 0
    assert export_main(["--pipeline-config", str(cfg), "--preset", "tiny", "--out", str(tmp_path / "b")]) == 0
    a, b = ARDragPipeline.from_pretrained(tmp_path / "a"), ARDragPipeline.from_pretrained(tmp_path / "b")
    assert all(
        torch.equal(x, y) for x, y in zip(a.transformer.parameters(), b.transformer.parameters())
    )  # seeded
    # --base: a diffusers Wan folder (48 latent channels = the pixel codec's) gains zero-init condition channels
    base = WanTransformer3DModel(**preset_config("tiny", in_channels=48, out_channels=48))
    base.save_pretrained(tmp_path / "wan")
    assert (
        export_main(
            ["--pipeline-config", str(cfg), "--base", str(tmp_path / "wan"), "--out", str(tmp_path / "c")]
        )
        == 0
    )
    c = ARDragPipeline.from_pretrained(tmp_path / "c")
    assert (
        c.transformer.config.cond_in_channels == 97 and c.transformer.cond_embedding.weight.abs().sum() == 0
    )
    assert (
        export_main(
            ["--pipeline-config", str(cfg), "--base", str(tmp_path / "none"), "--out", str(tmp_path / "d")]
        )
        == 2
    )


def _good_traj(tmp_path):
    traj = tmp_path / "t.json"
    traj.write_text(json.dumps(GOOD))
    return traj


def test_missing_image_is_one_line_without_opencv_warning_or_torch(tmp_path, export_dir):
    # a fresh interpreter: the missing image must be refused before torch (seconds to import) is loaded
    code = (
        "import sys\nfrom ardrag.cli.generate import main\n"
        f"rc = main({_args(export_dir, tmp_path / 'photo.png', _good_traj(tmp_path), tmp_path / 'o.mp4')!r})\n"
        "print(rc, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["2", "False"]
    assert proc.stderr.count("\n") == 1 and "photo.png does not exist" in proc.stderr
    assert "WARN" not in proc.stderr


def test_unreadable_image_is_one_line(tmp_path, export_dir, capfd):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    rc = main(_args(export_dir, bad, _good_traj(tmp_path), tmp_path / "o.mp4"))
    err = capfd.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "cannot read image" in err and "WARN" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a torch without CUDA")
def test_cuda_device_without_cuda_is_one_line(tmp_path, image_path, export_dir, capsys):
    rc = main(_args(export_dir, image_path, _good_traj(tmp_path), tmp_path / "o.mp4", "--device", "cuda"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "no usable CUDA" in err and "--device cpu" in err
    rc = main(_args(export_dir, image_path, _good_traj(tmp_path), tmp_path / "o.mp4", "--device", "gpu0"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "not a torch device" in err


def test_uncreatable_output_folder_fails_before_any_model_loads(
    tmp_path, image_path, export_dir, capsys, monkeypatch
):
    blocker = tmp_path / "a_file"
    blocker.write_text("")

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the output folder was checked")

    monkeypatch.setattr(ARDragPipeline, "from_pretrained", no_load)
    rc = main(_args(export_dir, image_path, _good_traj(tmp_path), blocker / "sub" / "o.mp4"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "a_file is a file" in err
    (tmp_path / "out.mp4").mkdir()
    rc = main(_args(export_dir, image_path, _good_traj(tmp_path), tmp_path / "out.mp4"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "is a folder" in err
