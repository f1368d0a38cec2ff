"""scripts/recipe_notes.py walltime: the recipe's training time is data + teacher + the slowest of the side-by-side students
+ RL, read from walltime.tsv (a resumed stage counts each time it ran), and the report says whether it fits."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("recipe_notes", ROOT / "scripts" / "recipe_notes.py")
recipe_notes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(recipe_notes)

TSV = "data\t60\tdata/toyworld\nteacher\t1800\truns/r/teacher/checkpoints/step0000400.ckpt\n"
STUDENTS = "sft\t2000\tx\nsft_no_rollout\t2100\tx\nsft_chunk3\t1900\tx\n"


def _runs(tmp_path: Path, text: str) -> Path:
    runs = tmp_path / "runs"
    (runs / "teacher" / "checkpoints").mkdir(parents=True)
    (runs / "teacher" / "checkpoints" / "step0000400.ckpt").write_bytes(b"")
    (runs / "walltime.tsv").write_text(text)
    return runs


def test_training_time_counts_the_slowest_student_and_resumed_stages(tmp_path):
    runs = _runs(tmp_path, TSV + STUDENTS + "rl\t500\tx\nrl\t100\tx\nbenchmark\t900\t\n")
    out = tmp_path / "report"
    args = ["walltime", "--runs", str(runs), "--out", str(out), "--data", str(tmp_path / "no_world")]
    assert recipe_notes.main([*args, "--target-min", "80"]) == 0
    rec = json.loads(out.with_suffix(".json").read_text())
    # 60 + 1800 + max(2000, 2100, 1900) + (500 + 100): the benchmark is not training
    assert rec["training_seconds"] == pytest.approx(4560.0)
    assert rec["within_target"] is True  # 76 min <= 80
    assert {r["stage"]: r["steps"] for r in rec["stages"]}["teacher"] == 400
    assert "**76.0 min**, within the 80-minute budget" in out.with_suffix(".md").read_text()
    assert recipe_notes.main([*args, "--target-min", "75"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["within_target"] is False


def test_data_time_falls_back_to_the_toy_worlds_own_record(tmp_path):
    runs = _runs(tmp_path, TSV.split("\n", 1)[1] + STUDENTS + "rl\t600\tx\n")
    data = tmp_path / "toyworld"
    data.mkdir()
    (data / "toyworld.json").write_text(json.dumps({"seconds": 65.5}))
    out = tmp_path / "report"
    recipe_notes.main(["walltime", "--runs", str(runs), "--out", str(out), "--data", str(data)])
    assert json.loads(out.with_suffix(".json").read_text())["training_seconds"] == pytest.approx(4565.5)
    # a recipe that found the world already written (1 s) is charged the writer's own seconds
    runs = _runs(tmp_path / "again", "data\t1\tx\n" + TSV.split("\n", 1)[1] + STUDENTS + "rl\t600\tx\n")
    recipe = "CKPTS=elsewhere TRAIN_ONLY=1 bash scripts/toy_recipe.sh"
    recipe_notes.main(
        ["walltime", "--runs", str(runs), "--out", str(out), "--data", str(data), "--recipe", recipe]
    )
    assert json.loads(out.with_suffix(".json").read_text())["training_seconds"] == pytest.approx(4565.5)
    assert f"after `{recipe}`" in out.with_suffix(".md").read_text()


def test_an_unfinished_recipe_is_a_clear_error(tmp_path):
    runs = _runs(tmp_path, TSV)
    with pytest.raises(SystemExit, match="no row for sft, sft_no_rollout, sft_chunk3, rl"):
        recipe_notes.main(["walltime", "--runs", str(runs), "--out", str(tmp_path / "r")])


def test_tblog_reads_values_wall_times_and_resumed_segments(tmp_path):
    """ardrag.training.tblog: a resumed run's later events file wins for the steps it logged again, in values
    (read_run_scalars) and in wall times (step_wall_times, what scripts/bench_recipe.py times steps with); the wall
    span adds each segment's own span, so the pause between segments is not counted."""
    import os

    from torch.utils.tensorboard import SummaryWriter

    from ardrag.training.tblog import read_run_scalars, step_wall_times

    segments = [(tmp_path / "run" / "a", range(0, 6), 1000.0), (tmp_path / "run" / "b", range(4, 8), 5000.0)]
    for k, (folder, steps, t0) in enumerate(segments):
        w = SummaryWriter(str(folder))
        for s in steps:
            w.add_scalar("train/loss", 10.0 * k + s, s, walltime=t0 + 2.0 * s)
            w.add_scalar("val/x", 1.0, s, walltime=t0 + 2.0 * s + 0.5)
        w.close()
        f = next(folder.glob("events.out.tfevents.*"))
        os.utime(f, (t0, t0))  # file age orders the segments
    merged, wall = read_run_scalars(tmp_path / "run", "train/")
    assert merged["train/loss"] == {0: 0, 1: 1, 2: 2, 3: 3, 4: 14, 5: 15, 6: 16, 7: 17}
    assert "val/x" not in merged
    assert wall == pytest.approx((10.5 - 0.0) + (14.5 - 8.0))
    stamps = step_wall_times(tmp_path / "run", "train/")
    assert stamps == {0: 1000.0, 1: 1002.0, 2: 1004.0, 3: 1006.0, 4: 5008.0, 5: 5010.0, 6: 5012.0, 7: 5014.0}
    assert step_wall_times(tmp_path / "run")[7] == pytest.approx(5014.5)  # the last tag logged at the step


def test_an_unknown_subcommand_is_a_usage_error(capsys):
    assert recipe_notes.main(["report"]) == 2
    assert "usage: recipe_notes.py {checkpoint,walltime}" in capsys.readouterr().err
