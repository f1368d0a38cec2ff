"""Does every committed benchmark result still match the tree? ``python scripts/check_results.py [FOLDER ...]``

For each ``results/**/meta.json`` (written by ``ardrag-eval`` or a benchmark script) it checks that
1. the recorded ``git_commit`` exists and is an ancestor of HEAD, and the tree was clean when it ran
   (``git_dirty`` empty, for results written since that field exists);
2. the recorded config equals the config file named in the recorded command, read with today's defaults
   (``out_dir``/``cache_dir`` aside: they say where files went, not what they contain);
3. no file that defines the numbers (metric, tracker, pipeline and data code, the eval and pipeline configs,
   checkpoint folders inside the repo) changed between the recorded commit and HEAD; a result written by a
   script listed in ``SCRIPT_DEFINED_BY`` is checked against that script, the code it lists and the folders its
   command names. Python code that was only moved between files, re-documented or re-imported counts as
   unchanged: the functions and statements of those paths (docstrings, comments and imports left out) must be
   the same at both commits, up to the cache-key definitions in ``CACHE_KEYS``.
Results that record no commit are listed as unchecked. Exit code 1 when any result is stale, else 0.
A stale result is regenerated with its committed command (see its folder's RUN.md), e.g.
``ardrag-eval --config configs/eval/skvideo.yaml --publish``, at a clean commit.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

# Paths whose content decides an eval table's numbers (git pathspecs, relative to the repo root).
NUMBER_DEFINING = [
    "benchmark",
    "src/ardrag/tracking",
    "src/ardrag/tracking.py",
    "src/ardrag/aesthetic.py",
    "src/ardrag/video.py",
    "src/ardrag/pipeline.py",
    "src/ardrag/sampling.py",
    "src/ardrag/codecs.py",
    "src/ardrag/conditioning.py",
    "src/ardrag/text.py",
    "src/ardrag/trajectory.py",
    "src/ardrag/models",
    "datamodules/shards.py",
    "datamodules/prepare.py",
    "datamodules/toy_world.py",
    "configs/pipeline",
]
PLACE_KEYS = ("out_dir", "cache_dir")
# Results written by a script instead of ardrag-eval: the code their numbers come from, besides the script itself
# and any folder of the repository its command names (e.g. a checkpoint). bench_latency times the pipeline's
# stream and imports neither the tracker, the aesthetic scorer, the benchmark nor the data code.
_PIPELINE_CODE = [p for p in NUMBER_DEFINING if p.startswith(("src/ardrag/", "configs/pipeline"))]
SCRIPT_DEFINED_BY = {
    "scripts/bench_latency.py": [
        p
        for p in _PIPELINE_CODE
        if p not in ("src/ardrag/tracking", "src/ardrag/tracking.py", "src/ardrag/aesthetic.py")
    ],
}
# Definitions that decide which cached values the eval reuses, never the values: a change to them alone leaves a
# result valid.
CACHE_KEYS = {"code_fingerprint", "PER_VIDEO_CODE", "SET_LEVEL_CODE"}


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)


def _config_path(command: str) -> str | None:
    words = shlex.split(command or "")
    for i, w in enumerate(words):
        if w == "--config" and i + 1 < len(words):
            return words[i + 1]
        if w.startswith("--config="):
            return w.split("=", 1)[1]
    return None


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _statements(source: str) -> list[str]:
    """A Python file's code as normalised statements: each function (methods included, without the class around
    it) and each other module- or class-level statement; string statements (docstrings, attribute docs), imports,
    ``__all__``, ``__main__`` guards and ``CACHE_KEYS`` left out."""
    import ast

    class DropStrings(ast.NodeTransformer):
        def generic_visit(self, node: ast.AST) -> ast.AST:
            super().generic_visit(node)
            for field in ("body", "orelse", "finalbody"):
                stmts = getattr(node, field, None)
                if isinstance(stmts, list) and stmts and isinstance(stmts[0], ast.stmt):
                    kept = [
                        n
                        for n in stmts
                        if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
                        or not isinstance(n.value.value, str)
                    ]
                    setattr(node, field, kept or [ast.Pass()])
            return node

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return {node.name}
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        return {t.id for t in targets if isinstance(t, ast.Name)}

    out: list[str] = []

    def walk(nodes: list) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom, ast.Pass)) or names(node) & (
                CACHE_KEYS | {"__all__"}
            ):
                continue
            if isinstance(node, ast.If) and "__main__" in ast.dump(node.test):
                continue
            if isinstance(node, ast.ClassDef):
                walk(node.body)
                continue
            out.append(ast.dump(node))

    walk(DropStrings().visit(ast.parse(source)).body)
    return out


def _code(root: Path, rev: str, paths: list[str]) -> dict[str, list[str]]:
    """Normalised statements of every Python file under ``paths`` at ``rev`` (``__main__.py`` aside), by file."""
    files = _git(root, "ls-tree", "-r", "--name-only", rev, "--", *paths).stdout.split()
    return {
        f: _statements(_git(root, "show", f"{rev}:{f}").stdout)
        for f in files
        if f.endswith(".py") and not f.endswith("__main__.py")
    }


def code_changes(root: Path, commit: str, paths: list[str], changed: list[str]) -> list[str]:
    """Of the ``changed`` files, those that change what the code does: every non-Python file (a checkpoint's
    RECIPE.md aside), and the Python files
    holding a statement found at only one of the two commits (code that moved between files, or whose docstrings,
    comments or imports changed, is no change)."""
    changed = [f for f in changed if Path(f).name != "RECIPE.md"]  # a checkpoint's notes: never loaded
    py = [f for f in changed if f.endswith(".py")]
    out = [f for f in changed if not f.endswith(".py")]
    if not py:
        return out
    try:
        old, new = _code(root, commit, paths), _code(root, "HEAD", paths)
    except SyntaxError:
        return changed
    from collections import Counter

    gone = Counter(x for v in old.values() for x in v) - Counter(x for v in new.values() for x in v)
    came = Counter(x for v in new.values() for x in v) - Counter(x for v in old.values() for x in v)
    for f in py:
        if any(x in gone for x in old.get(f, [])) or any(x in came for x in new.get(f, [])):
            out.append(f)
    return sorted(out)


def check_meta(root: Path, meta_path: Path) -> tuple[str, list[str]]:
    """("ok" | "stale" | "unchecked", reasons) for one eval ``meta.json``."""
    from benchmark.eval import ConfigError, load_config

    meta = json.loads(meta_path.read_text())
    commit = meta.get("git_commit")
    if not commit:
        return "unchecked", ["records no git_commit"]
    reasons = []
    if _git(root, "cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
        return "stale", [f"recorded commit {commit[:7]} is not in this repository"]
    if _git(root, "merge-base", "--is-ancestor", commit, "HEAD").returncode != 0:
        reasons.append(f"recorded commit {commit[:7]} is not an ancestor of HEAD")
    if meta.get("git_dirty"):
        reasons.append(f"made from a dirty tree ({', '.join(meta['git_dirty'][:5])})")
    cfg_file = _config_path(meta.get("command", ""))
    paths = list(NUMBER_DEFINING)
    words = shlex.split(meta.get("command") or "")
    script = next((w for w in words if w in SCRIPT_DEFINED_BY), None)
    if script is not None:
        here = meta_path.resolve().parent  # the result's own folder is its output, not an input
        named = [
            w
            for w in words
            if w != script and not w.startswith("-") and (root / w).is_dir() and (root / w).resolve() != here
        ]
        paths = [script, *SCRIPT_DEFINED_BY[script], *named]
    if cfg_file and "config" in meta:
        paths.append(cfg_file)
        try:
            current = load_config(root / cfg_file)
        except ConfigError as e:
            reasons.append(f"config {cfg_file}: {e}")
        else:
            recorded = {k: v for k, v in meta["config"].items() if k not in PLACE_KEYS}
            current = {k: v for k, v in current.items() if k not in PLACE_KEYS}
            # a method's checkpoint folder inside the repo is an input too
            for m in current.get("methods", []):
                spec = m.get("spec", "")
                if ":" in spec and (root / spec.split(":", 1)[1]).exists():
                    paths.append(spec.split(":", 1)[1])
            keys = _diff_keys(recorded, json.loads(json.dumps(current, default=str)))
            if keys:
                reasons.append(f"config {cfg_file} differs in {', '.join(keys[:6])}")
    changed = _git(root, "diff", "--name-only", commit, "HEAD", "--", *paths).stdout.split()
    changed = code_changes(root, commit, paths, changed) if changed else []
    if changed:
        more = f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""
        reasons.append(f"changed since {commit[:7]}: {', '.join(changed[:6])}{more}")
    return ("stale" if reasons else "ok"), reasons


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "folders", nargs="*", help="results folders to check (default: every results/**/meta.json)"
    )
    p.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="repository root")
    args = p.parse_args(argv)
    root = Path(args.root)
    metas = (
        [Path(f) / "meta.json" for f in args.folders]
        if args.folders
        else sorted(p for p in (root / "results").rglob("meta.json") if "checkpoints" not in p.parts)
    )
    n_stale = 0
    for meta in metas:
        meta = meta if meta.is_absolute() else root / meta
        if not meta.is_file():
            print(f"{meta}: missing", file=sys.stderr)
            n_stale += 1
            continue
        status, reasons = check_meta(root, meta)
        n_stale += status == "stale"
        rel = meta.parent.relative_to(root) if meta.is_relative_to(root) else meta.parent
        print(f"{status.upper():9} {rel}" + "".join(f"\n          - {r}" for r in reasons))
    return 1 if n_stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
