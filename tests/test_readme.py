"""The README's and docs' commands run as written: the README's Generate block and Python API snippet are executed
(in a scratch folder, from a fresh shell with only the venv on PATH), every flag the README or a page of docs/
passes to an ``ardrag-*`` command exists in that command's ``--help``, and every repository path and relative
link they name exists."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BIN = Path(sys.executable).parent
# the README and every page of docs/, by path relative to the repository root
PAGES = {
    p.relative_to(ROOT).as_posix(): p.read_text()
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}


def _section(title: str) -> str:
    start = README.index(f"\n## {title}")
    end = README.find("\n## ", start + 1)
    return README[start : end if end > 0 else None]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def _scratch(tmp_path: Path) -> dict[str, str]:
    """A scratch working folder that sees the repo's configs, and a shell environment with the venv first."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    (tmp_path / "results").symlink_to(ROOT / "results")  # the committed checkpoints the README uses
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", OMP_NUM_THREADS="1")
    return env


@pytest.mark.slow  # ~45 s on a busy 2-core CPU: one export and two toy generations in fresh interpreters
def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_generate_section_and_python_snippet_run_as_written(tmp_path):
    env = _scratch(tmp_path)
    (bash,) = _blocks(_section("Generate"), "bash")
    proc = _run(["bash", "-euo", "pipefail", "-c", bash], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from ardrag.video import read_video

    video = read_video(tmp_path / "runs/toy/samples/out.mp4")[0]
    assert (tmp_path / "runs/toy/samples/out.gif").is_file()
    tracks_nt = np.asarray(
        __import__("json").loads((ROOT / "configs/examples/astronaut_drag.json").read_text())["tracks"]
    )
    assert len(video) == tracks_nt.shape[1]  # T frames: the file's tracks are (N, T, 2)

    (snippet,) = _blocks(_section("Generate"), "python")
    snippet += "\nprint(tracks.shape, video.shape, frame0.shape, frame1.shape)"
    proc = _run([sys.executable, "-c", snippet], tmp_path, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    n, t = tracks_nt.shape[:2]
    h, w = video.shape[1:3]
    assert proc.stdout.split("\n")[-2] == f"({t}, {n}, 2) ({t}, {h}, {w}, 3) ({h}, {w}, 3) ({h}, {w}, 3)"
    api = read_video(tmp_path / "runs/toy/samples/api.mp4")[0]
    # same model, image, drags, prompt and seed as the CLI above: the same video up to mp4 coding
    assert api.shape == video.shape and np.abs(api.astype(int) - video).mean() < 1.0


def _commands() -> dict[str, set[str]]:
    """Flags given to each ardrag-* command in the bash blocks of the README and docs/ (ardrag-fit aside:
    LightningCLI)."""
    flags: dict[str, set[str]] = {}
    for block in (b for text in PAGES.values() for b in _blocks(text, "bash")):
        for line in block.replace("\\\n", " ").splitlines():
            for cmd, rest in re.findall(r"(ardrag-[a-z]+)\s+([^;#|&]*)", line):
                if cmd != "ardrag-fit":
                    found = {f.split("=")[0] for f in re.findall(r"--[a-z][a-z0-9_-]*(?:=\S+)?", rest)}
                    flags.setdefault(cmd, set()).update(found)
    return flags


@pytest.mark.parametrize("cmd", sorted(_commands()))
def test_readme_flags_exist(cmd):
    out = subprocess.run(
        [str(BIN / cmd), "--help"], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    known = set(re.findall(r"--[a-z][a-z0-9_-]*", out))
    assert _commands()[cmd] <= known, f"{cmd}: README/docs flags not in --help: {_commands()[cmd] - known}"


_REPO_PATH = re.compile(
    r"(?<![\w./-])((?:configs|scripts|results|docs|tests|src|benchmark|datamodules)/[\w./-]*[\w/])"
)


def _named_paths(text: str) -> set[str]:
    """Repository paths a page names (templates with braces, globs or placeholders left out), and its relative
    links."""
    paths = {p for p in _REPO_PATH.findall(text) if not re.search(r"[{*<]|NNN|XXX", p)}
    links = {m for m in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text) if "://" not in m}
    return paths | {f"link:{m}" for m in links}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_named_paths_exist(page):
    base = (ROOT / page).parent

    def exists(p: str) -> bool:
        path = (base / p[5:]) if p.startswith("link:") else ROOT / p
        # "results/toy/long_horizon.*" names a file stem: one file of that stem is enough
        return path.exists() or any(path.parent.glob(path.name + ".*"))

    missing = sorted(p for p in _named_paths(PAGES[page]) if not exists(p))
    assert not missing, f"{page} names paths that do not exist: {missing}"


def test_docs_point_nowhere_outside_the_repository():
    # a user has the repository only: the README and docs/ carry what they need
    for page, text in PAGES.items():
        assert not re.search(r"DESIGN\.md|PAPER\.md|\.\./shared", text), page


def test_top_level_package_names_belong_to_ardrag_only():
    # `datamodules` and `benchmark` are generic names: installed next to another project that ships a
    # package of the same name, one would shadow the other. This environment must have exactly one owner.
    import importlib.metadata as md

    owners = md.packages_distributions()
    for name in ("ardrag", "benchmark", "datamodules"):
        assert set(owners.get(name, [])) == {"ardrag"}, (name, owners.get(name))
