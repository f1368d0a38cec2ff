"""The training callbacks on several ranks: every rank takes part in every collective and every forward (sampling,
reward probe), only rank 0 writes; a rank without validation data gets rank 0's conditions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ardrag.training.tblog import read_run_scalars

TESTS = Path(__file__).resolve().parent


def test_callbacks_compute_on_every_rank_and_write_on_rank_zero(tmp_path):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        [sys.executable, str(TESTS / "_rank_rule_run.py"), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,  # a rank left waiting in a collective would hang: fail instead
    )
    assert r.returncode == 0, r.stderr[-3000:]
    calls = [(tmp_path / f"calls_rank{i}.txt").read_text().split("\n")[:-1] for i in range(2)]
    # probe before step 0, samples and probe at steps 2 and 4, then the end-of-train probe is a repeat of step 4
    # (skipped on both ranks) and the end-of-fit sample runs on both
    want = ["probe 0", "sample 2", "probe 2", "sample 4", "probe 4", "sample 4"]
    assert calls[0] == calls[1] == want
    gifs = sorted(p.name for p in (tmp_path / "tb" / "samples").iterdir())
    assert gifs == ["step_000002.gif", "step_000004.gif"]  # written once each, by rank 0
    probes = read_run_scalars(tmp_path / "tb")[0]["val/reward/motion"]
    # all-reduced over 2 ranks (2) + the broadcast batch's 2 conditions: rank 0's batch reached the computation
    assert probes == {0: 4.0, 2: 4.0, 4: 4.0}
