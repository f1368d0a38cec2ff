"""``ardrag-eval --config configs/eval/SUITE.yaml``: run methods on a suite, cache per-video results, write tables.

For every method row x seed x suite item the runner generates (or reads) a video, computes the per-video
metrics (ObjMC with the LK tracker and with dense flow, motion smoothness (flow-interp), aesthetic when
weights are given) and caches both under ``cache_dir/<method hash>/seed<k>/``; an interrupted run resumes
from there. Set-level FID/FVD are computed per seed against the suite's ground-truth videos. Latency is
measured on generating methods (warm-up excluded). Outputs: ``table1.{csv,md}``, ``table2.{csv,md}`` (a
table no method row asks for is not written), ``latency.{csv,md}``, ``latency_vs_frame.png``, ``walltime.csv``
and ``meta.json``, in ``<cache_dir>/results/`` (untracked) by default; ``--publish`` writes them to the
config's ``out_dir`` (the committed ``results/<suite>/``), ``--out-dir DIR`` anywhere.
"""

from benchmark.eval.cache import PER_VIDEO_CODE, SET_LEVEL_CODE, SET_LEVEL_RECORD_VERSION, code_fingerprint
from benchmark.eval.cli import build_parser, main, output_dir
from benchmark.eval.config import DEFAULT_METRICS, MIN_SEEDS, ConfigError, load_config, normalise_config
from benchmark.eval.runner import BudgetExhausted, EvalRunner, per_video_metrics, set_level_metric

__all__ = [
    "DEFAULT_METRICS",
    "MIN_SEEDS",
    "PER_VIDEO_CODE",
    "SET_LEVEL_CODE",
    "SET_LEVEL_RECORD_VERSION",
    "BudgetExhausted",
    "ConfigError",
    "EvalRunner",
    "build_parser",
    "code_fingerprint",
    "load_config",
    "main",
    "normalise_config",
    "output_dir",
    "per_video_metrics",
    "set_level_metric",
]
