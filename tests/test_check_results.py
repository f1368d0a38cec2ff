"""scripts/check_results.py: a committed result is 'ok' only while its recorded commit, config and the code
that defines its numbers still match the tree (checked on a throwaway git repository)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("check_results", ROOT / "scripts" / "check_results.py")
check_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_results)

CONFIG = """suite: {name: s, path: data/s}
seeds: [0, 1, 2]
methods: [{name: Static, spec: static}]
out_dir: results/s
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path) -> Path:
    from benchmark.eval import load_config

    (tmp_path / "configs/eval").mkdir(parents=True)
    (tmp_path / "configs/eval/s.yaml").write_text(CONFIG)
    (tmp_path / "benchmark").mkdir()
    (tmp_path / "benchmark/metric.py").write_text("SCALE = 1\n")
    (tmp_path / "notes.txt").write_text("not a number-defining file\n")
    _git(tmp_path, "init", "-q")
    _commit_result(
        tmp_path,
        "results/s",
        command="/venv/bin/ardrag-eval --config configs/eval/s.yaml --publish",
        config=json.loads(json.dumps(load_config(tmp_path / "configs/eval/s.yaml"))),
    )
    return tmp_path


def _commit_result(repo: Path, folder: str, **meta) -> None:
    """Commit the code as it is, then a result folder whose meta.json records that commit and a clean tree."""
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "code")
    meta.update(git_commit=_git(repo, "rev-parse", "HEAD"), git_dirty=[])
    (repo / folder).mkdir(parents=True)
    (repo / folder / "meta.json").write_text(json.dumps(meta))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "results")


def _check(repo: Path) -> tuple[str, list[str]]:
    return check_results.check_meta(repo, repo / "results/s/meta.json")


def _edit_meta(repo: Path, **changes) -> None:
    path = repo / "results/s/meta.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_fresh_result_is_ok_and_unrelated_changes_keep_it_ok(repo):
    assert _check(repo) == ("ok", [])
    (repo / "notes.txt").write_text("edited\n")
    _git(repo, "commit", "-qam", "docs")
    assert _check(repo) == ("ok", [])
    assert check_results.main(["--root", str(repo)]) == 0


def test_code_change_after_the_recorded_commit_makes_it_stale(repo, capsys):
    (repo / "benchmark/metric.py").write_text("SCALE = 2\n")
    _git(repo, "commit", "-qam", "metric fix")
    status, reasons = _check(repo)
    assert status == "stale" and any("benchmark/metric.py" in r for r in reasons)
    assert check_results.main(["--root", str(repo)]) == 1
    assert "STALE" in capsys.readouterr().out


def test_config_change_unknown_commit_and_dirty_tree_are_stale(repo):
    (repo / "configs/eval/s.yaml").write_text(CONFIG.replace("[0, 1, 2]", "[0, 1, 2, 3]"))
    _git(repo, "commit", "-qam", "more seeds")
    status, reasons = _check(repo)
    assert status == "stale" and any("differs in seeds" in r for r in reasons)
    _git(repo, "reset", "-q", "--hard", "HEAD~1")
    _edit_meta(repo, git_dirty=["benchmark/metric.py"])
    assert _check(repo)[0] == "stale" and "dirty tree" in _check(repo)[1][0]
    _edit_meta(repo, git_dirty=[], git_commit="0" * 40)
    assert _check(repo) == ("stale", ["recorded commit 0000000 is not in this repository"])
    _edit_meta(repo, git_commit=None)
    assert _check(repo)[0] == "unchecked"


def test_a_script_result_depends_on_the_code_it_runs(repo):
    """results/latency (scripts/bench_latency.py) times the pipeline: a tracker change leaves it ok, a pipeline or
    checkpoint change makes it stale."""
    for path, text in (
        ("scripts/bench_latency.py", "print(1)\n"),
        ("src/ardrag/tracking.py", "A = 1\n"),
        ("src/ardrag/pipeline.py", "B = 1\n"),
        ("ckpt/rl/weights.txt", "1\n"),
    ):
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    _commit_result(
        repo,
        "results/latency",
        command="python scripts/bench_latency.py --checkpoint ckpt/rl --frames 64 --out results/latency",
    )

    def check():
        return check_results.check_meta(repo, repo / "results/latency/meta.json")

    (repo / "src/ardrag/tracking.py").write_text("A = 2\n")
    (repo / "benchmark/metric.py").write_text("SCALE = 2\n")
    _git(repo, "commit", "-qam", "tracker and metric fix")
    assert check() == ("ok", [])
    for path in ("src/ardrag/pipeline.py", "ckpt/rl/weights.txt", "scripts/bench_latency.py"):
        (repo / path).write_text("changed\n")
        _git(repo, "commit", "-qam", f"edit {path}")
        status, reasons = check()
        assert status == "stale" and path in reasons[0], (path, reasons)
        _git(repo, "reset", "-q", "--hard", "HEAD~1")


def test_moved_or_redocumented_code_keeps_a_result_ok(repo):
    """Code moved to another file, with a new docstring and imports, leaves the result ok; a changed value or a
    changed non-Python input makes it stale; a cache-key change alone does not."""
    (repo / "benchmark/scale.py").write_text('"""Where the scale lives now."""\n\nimport os\n\nSCALE = 1\n')
    (repo / "benchmark/metric.py").write_text("from benchmark.scale import SCALE  # noqa: F401\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "move SCALE")
    assert _check(repo) == ("ok", [])
    (repo / "benchmark/scale.py").write_text("SCALE = 2\n")
    _git(repo, "commit", "-qam", "new scale")
    status, reasons = _check(repo)
    assert status == "stale" and "benchmark/scale.py" in reasons[0]
    _git(repo, "reset", "-q", "--hard", "HEAD~1")
    (repo / "benchmark/metric.py").write_text(
        'from benchmark.scale import SCALE  # noqa: F401\n\nPER_VIDEO_CODE = ("benchmark.scale",)\n'
    )
    _git(repo, "commit", "-qam", "cache key")
    assert _check(repo) == ("ok", [])
    (repo / "benchmark/table.csv").write_text("1\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "data")
    assert _check(repo)[0] == "stale"
