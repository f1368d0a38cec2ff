"""scripts/gpu_check.py --tiny: every stage's steps under per-block FSDP, each stage's export loaded by the next, and a
streamed clip from the RL export, on a CPU at stand-in sizes; its table holds a figure for every cell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # ~15 s of CPU in a fresh interpreter; ~70 s wall on a busy 2-core CPU
def test_gpu_check_tiny_runs_every_stage_and_streams(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--tiny", "--out", str(tmp_path)]
    r = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["stage"] for s in res["stages"]] == ["teacher", "sft", "rl"]
    for s in res["stages"]:
        assert len(s["step_s"]) == 2 and all(t > 0 for t in s["step_s"])
        assert len(s["peak_gib"]) == 1 and s["peak_gib"][0] > 0
        assert (Path(s["export"]) / "ardrag_pipeline.json").exists()
    st = res["stream"]
    assert st["frames"] == 9 and 0 < st["time_to_first_frame_s"] <= st["total_s"] and st["frames_per_s"] > 0
    table = (tmp_path / "gpu_check.md").read_text()
    assert all(f"| {s} |" in table for s in ("teacher", "sft", "rl")) and "time to first frame" in table
    # Bad use: a clear one-line error, no traceback.
    r = subprocess.run(
        [*cmd[:2], "--steps", "0", "--tiny"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 2 and "--steps must be >= 1" in r.stderr and "Traceback" not in r.stderr
