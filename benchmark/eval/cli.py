"""``ardrag-eval``'s command line: arguments, where the tables go, exit codes (2 bad config, 3 budget hit)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from benchmark.eval.config import ConfigError, load_config
from benchmark.eval.runner import BudgetExhausted, EvalRunner


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ardrag-eval",
        description="Run every method of an eval config on its suite and write Table 1/2, latency and meta.json. "
        "Tables go to <cache_dir>/results/ (untracked) unless --publish or --out-dir says otherwise.",
    )
    p.add_argument("--config", required=True, help="eval config, e.g. configs/eval/toy.yaml")
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--publish",
        action="store_true",
        help="write the tables to the config's out_dir (the committed results/<suite>/): regenerates them",
    )
    where.add_argument(
        "--out-dir", "--out_dir", dest="out_dir", help="write the tables here (default <cache_dir>/results/)"
    )
    p.add_argument(
        "--cache-dir",
        "--cache_dir",
        dest="cache_dir",
        help="videos and per-video metrics cache; re-running resumes from it (default: the config's cache_dir)",
    )
    p.add_argument("--methods", help="comma-separated method names to run (default: all rows)")
    p.add_argument(
        "--max-new",
        "--max_new",
        dest="max_new",
        type=int,
        help="stop after generating this many new videos (exit 3; re-running resumes)",
    )
    p.add_argument(
        "--no-progress",
        "--no_progress",
        dest="no_progress",
        action="store_true",
        help="hide the progress bar",
    )
    return p


def output_dir(cfg: dict[str, Any], publish: bool = False, out_dir: str | None = None) -> str:
    """Where the tables go: ``out_dir`` if given, the config's ``out_dir`` (committed results) with
    ``publish``, else ``<cache_dir>/results`` (git-ignored), so a trial run never rewrites tracked files."""
    if out_dir:
        return out_dir
    return cfg["out_dir"] if publish else str(Path(cfg["cache_dir"]) / "results")


def main(argv: list[str] | None = None) -> int:
    """Console script ``ardrag-eval``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config)
        if args.cache_dir:
            cfg["cache_dir"] = args.cache_dir
        published = cfg["out_dir"]
        cfg["out_dir"] = output_dir(cfg, args.publish, args.out_dir)
        runner = EvalRunner(
            cfg,
            max_new=args.max_new,
            progress=not args.no_progress,
            only=args.methods.split(",") if args.methods else None,
        )
        summary = runner.run()
    except (ConfigError, FileNotFoundError) as e:
        print(f"ardrag-eval: error: {e}", file=sys.stderr)
        return 2
    except BudgetExhausted as e:
        print(f"ardrag-eval: stopped: {e}", file=sys.stderr)
        return 3
    print(
        f"ardrag-eval: wrote {summary['out_dir']} ({summary['n_items']} items, {summary['new_videos']} new videos)"
    )
    for w in summary["walltime"]:
        secs = sum(v for k, v in w.items() if k not in ("method", "videos"))
        print(f"  {w['method']}: {w['videos']} videos, {secs:.1f} s generation + metrics (cached totals)")
    if Path(summary["out_dir"]).resolve() != Path(published).resolve():
        print(f"  (the committed tables in {published}/ are regenerated with --publish)")
    return 0
