"""ardrag-eval end to end on a tiny synthetic shard suite: numbers in the tables, FID/FVD plumbing, missing
videos counted, and an interrupted + resumed run giving the same tables as a single run."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest

from benchmark import eval as ev
from benchmark.methods import WarpMethod

SIZE, FRAMES = 48, 10


def _clip(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Textured background with a bright textured square moving at a constant velocity; tracks on the
    square's corners-inside points (moving) and two static background points. uint8 (T, S, S, 3)."""
    rng = np.random.default_rng(seed)
    bg = cv2.GaussianBlur(rng.random((SIZE, SIZE, 3)).astype(np.float32), (0, 0), 2.0)
    bg = (bg - bg.min()) / (bg.max() - bg.min()) * 120
    sprite = cv2.GaussianBlur(rng.random((14, 14, 3)).astype(np.float32), (0, 0), 1.0)
    sprite = 135 + (sprite - sprite.min()) / (sprite.max() - sprite.min()) * 120
    vel = rng.uniform(-1.5, 1.5, 2)
    x0 = np.array([17.0, 17.0])
    frames, tracks = [], []
    pts = np.array([[4.0, 4.0], [9.0, 4.0], [4.0, 9.0], [9.0, 9.0]])
    for t in range(FRAMES):
        img = bg.copy()
        ox, oy = np.round(x0 + vel * t).astype(int)
        img[oy : oy + 14, ox : ox + 14] = sprite
        frames.append(img.astype(np.uint8))
        tracks.append(np.concatenate([pts + [ox, oy], [[6.0, 40.0], [40.0, 6.0]]]))
    return np.stack(frames), np.stack(tracks).astype(np.float32), np.ones((FRAMES, 6), bool)


def write_suite(folder: Path, n: int = 3) -> Path:
    from datamodules.shards import ShardSink, encode_sample

    with ShardSink(folder, "toy", maxcount=2) as sink:
        for i in range(n):
            video, tracks, visible = _clip(i)
            sink.write(encode_sample(f"item{i:03d}", video, tracks, visible, {"prompt": f"sprite {i}"}))
    return folder


def _fake_set_metrics(monkeypatch) -> None:
    """Stand-ins for fidfvd's compute_fid/compute_fvd that record what the runner passes: value = mean abs
    difference of the mean real and mean fake pixel (0 iff the sets' means agree)."""

    def fake(real, fake_, **kw):
        real, fake_ = np.asarray(real, np.float64), np.asarray(fake_, np.float64)
        return {
            "value": float(np.abs(real.mean(0) - fake_.mean(0)).mean()),
            "n_real": len(real),
            "n_fake": len(fake_),
            "resolution": list(fake_.shape[-3:-1]),
            "frames": fake_.shape[1] if fake_.ndim == 5 else 1,
            "small_n_warning": True,
        }

    for name, fn in (("fid", "compute_fid"), ("fvd", "compute_fvd")):
        mod = types.ModuleType(f"benchmark.metrics.{name}")
        setattr(mod, fn, fake)
        monkeypatch.setitem(sys.modules, f"benchmark.metrics.{name}", mod)


def _config(tmp: Path, shards: Path, out: str, cache: str, videos: Path | None = None) -> dict:
    methods = [
        {"name": "GT", "spec": "groundtruth", "tables": ["table1"]},
        {"name": "Static", "spec": "static", "tables": ["table1", "table2"]},
        {"name": "Warp", "spec": "warp", "tables": ["table1", "table2"]},
    ]
    if videos is not None:
        methods.append({"name": "Noisy", "spec": f"videos:{videos}", "tables": ["table1"]})
    return ev.normalise_config(
        {
            "suite": {"name": "tiny", "path": str(shards), "max_tracks": 4, "num_frames": FRAMES},
            "seeds": [0, 1, 2],
            "methods": methods,
            "metrics": {"latency": {"enabled": False}},
            "out_dir": str(tmp / out),
            "cache_dir": str(tmp / cache),
        }
    )


def _noisy_videos(shards: Path, folder: Path) -> Path:
    """A 'method' whose outputs are the ground truth plus seed-dependent noise; item 2, seed 2 missing."""
    from datamodules.shards import iter_samples

    for s in iter_samples(shards):
        for seed in range(3):
            if s["key"] == "item002" and seed == 2:
                continue
            rng = np.random.default_rng(seed)
            v = np.clip(s["video"].astype(int) + rng.integers(-20, 21, s["video"].shape), 0, 255).astype(
                np.uint8
            )
            (folder / s["key"]).mkdir(parents=True, exist_ok=True)
            np.save(folder / s["key"] / f"seed{seed}.npy", v)
    return folder


def _read(path: Path) -> str:
    return path.read_text()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_suite(tmp_path_factory.mktemp("suite"))


def test_single_run_tables_have_the_expected_numbers(tmp_path, shards, monkeypatch):
    _fake_set_metrics(monkeypatch)
    videos = _noisy_videos(shards, tmp_path / "noisy")
    cfg = _config(tmp_path, shards, "res", "cache", videos)
    ev.EvalRunner(cfg, progress=False).run()
    import pandas as pd

    t1 = pd.read_csv(tmp_path / "res" / "table1.csv").set_index("method")
    t2 = pd.read_csv(tmp_path / "res" / "table2.csv").set_index("method")
    assert list(t1.index) == ["GT", "Static", "Warp", "Noisy"] and list(t2.index) == ["Static", "Warp"]

    # static: ObjMC = mean displacement of the chosen targets from their start (frames 1..T-1, all visible)
    from benchmark.suites import Suite, SuiteConfig

    items = Suite(SuiteConfig(**cfg["suite"])).items()
    disp = np.concatenate(
        [np.linalg.norm(it["tracks"][1:] - it["tracks"][:1], axis=-1).ravel() for it in items]
    )
    assert t1.loc["Static", "objmc_lk_mean"] == pytest.approx(disp.mean(), abs=0.1)
    assert t1.loc["Static", "objmc_flow_mean"] == pytest.approx(disp.mean(), abs=0.1)
    assert t1.loc["Static", "coverage_lk_mean"] == 1.0
    # deterministic rows: one seed, interval 0
    assert t1.loc["Static", "n_seeds"] == 1 and t1.loc["Static", "objmc_lk_ci95"] == 0.0
    assert t1.loc["Static", "smoothness_mean"] == pytest.approx(1.0, abs=1e-9)
    # the ground truth follows its own tracks (integer-pixel sprite motion) far better than static
    assert t1.loc["GT", "objmc_lk_mean"] < 0.6
    assert t1.loc["Warp", "objmc_lk_mean"] < 0.5 * t1.loc["Static", "objmc_lk_mean"]
    # FID/FVD plumbing: real set = ground truth, so the GT row is exactly 0 and static is not
    assert t1.loc["GT", "fid_mean"] == 0.0 and t1.loc["GT", "fvd_mean"] == 0.0
    assert t1.loc["Static", "fid_mean"] > 1.0
    # a seed-dependent method: 3 seeds, a positive interval, and the missing file counted (not fatal)
    assert t1.loc["Noisy", "n_seeds"] == 3 and t1.loc["Noisy", "fid_ci95"] > 0
    assert t1.loc["Noisy", "n_missing"] == 1 and t1.loc["Noisy", "n_items"] == 2
    # absent metrics are empty in the CSV and named in the Markdown, never 0
    assert np.isnan(t1.loc["Static", "aesthetic_mean"]) and np.isnan(t1.loc["Static", "latency_ttff_mean"])
    md = _read(tmp_path / "res" / "table1.md")
    assert "Absent (not computed, not zero): Latency TTFF (s), Aesthetic" in md
    meta = json.loads(_read(tmp_path / "res" / "meta.json"))
    assert meta["n_items"] == 3 and meta["frames"] == FRAMES and meta["resolution"] == [SIZE, SIZE]


def test_interrupted_run_resumes_to_the_same_tables(tmp_path, shards, monkeypatch):
    _fake_set_metrics(monkeypatch)
    ev.EvalRunner(_config(tmp_path, shards, "single", "cache_a"), progress=False).run()

    cfg = _config(tmp_path, shards, "resumed", "cache_b")
    with pytest.raises(ev.BudgetExhausted):  # 1) a budget stops the run after 2 new videos
        ev.EvalRunner(cfg, max_new=2, progress=False).run()
    calls = {"n": 0}
    real_generate = WarpMethod.generate

    def crashing(self, item, seed):  # 2) a crash in the middle of the warp rows
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated crash")
        return real_generate(self, item, seed)

    monkeypatch.setattr(WarpMethod, "generate", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        ev.EvalRunner(cfg, progress=False).run()
    monkeypatch.setattr(WarpMethod, "generate", real_generate)
    assert not (tmp_path / "resumed" / "table1.csv").exists()
    runner = ev.EvalRunner(cfg, progress=False)  # 3) resume
    runner.run()
    # 3 methods x 3 items: 2 (budget) + 5 (GT item 2, static x 3, warp item 0) were cached before the crash
    assert runner.n_new == 9 - 2 - 5
    for name in ("table1.csv", "table1.md", "table2.csv", "table2.md"):
        assert _read(tmp_path / "resumed" / name) == _read(tmp_path / "single" / name), name


def test_cli_rejects_bad_config_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("suite: {name: x, path: nowhere}\nseeds: [0]\nmethods: [{spec: static}]\n")
    assert ev.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "at least 3 seeds" in err
    bad.write_text(f"suite: {{name: x, path: {tmp_path}/none}}\nmethods: [{{spec: magic}}]\n")
    assert ev.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown method spec 'magic'" in err
    # an unquoted YAML name with a comma splits the row: refused, not a silently truncated name
    bad.write_text(
        f"suite: {{name: x, path: {tmp_path}/none}}\nseeds: [0, 1, 2]\n"
        "methods: [{name: Teacher (bidirectional, 20 steps), spec: static}]\n"
    )
    assert ev.main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "quote names that contain commas" in err


def test_set_level_feature_path_reuses_real_features(monkeypatch):
    # Stand-in feature functions (mean colour per frame / per clip) with the fidfvd module layout.
    calls = {"n": 0}

    def feats(x, **kw):
        calls["n"] += 1
        x = np.asarray(x, np.float64)
        return x.reshape(-1, *x.shape[-3:]).mean(axis=(1, 2))  # (B*T, 3): one row per frame

    def from_feats(r, f, method="eigh", **record):
        return {
            "value": float(np.abs(r.mean(0) - f.mean(0)).sum()),
            "n_real": len(r),
            "n_fake": len(f),
            **record,
        }

    mod = types.ModuleType("benchmark.metrics.fid")
    mod.inception_features, mod.fid_from_features = feats, from_feats
    monkeypatch.setitem(sys.modules, "benchmark.metrics.fid", mod)
    real = np.zeros((2, 8, 6, 6, 3), np.uint8)
    fake = np.full((2, 8, 6, 6, 3), 3, np.uint8)
    res, rf = ev.set_level_metric("fid", real, fake, {"enabled": True, "frame_stride": 2})
    assert res["value"] == pytest.approx(9.0) and res["n_fake"] == 8 and res["frame_stride"] == 2
    res2, _ = ev.set_level_metric("fid", real, fake, {"enabled": True, "frame_stride": 2}, real_features=rf)
    assert res2["value"] == res["value"] and calls["n"] == 3  # real features computed once


@pytest.mark.parametrize(
    "path", sorted(Path(__file__).parents[1].glob("configs/eval/*.yaml")), ids=lambda p: p.name
)
def test_shipped_configs_parse(path):
    cfg = ev.load_config(path)
    assert len(cfg["seeds"]) >= 3 and cfg["out_dir"] == f"results/{cfg['suite']['name']}"
    assert ev.output_dir(cfg) == f"runs/eval/{cfg['suite']['name']}/results"  # git-ignored by default
    assert all(set(m["tables"]) <= {"table1", "table2", "steps"} for m in cfg["methods"])


def test_code_fingerprint_changes_with_the_metric_source(tmp_path, monkeypatch):
    mod = tmp_path / "fake_metric_mod.py"
    mod.write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = ev.code_fingerprint(("fake_metric_mod",))
    assert ev.code_fingerprint(("fake_metric_mod",)) == before
    mod.write_text("X = 2\n")  # e.g. a tracker fix: cached metric results must not be reused
    assert ev.code_fingerprint(("fake_metric_mod",)) != before
    assert ev.code_fingerprint(("no_such_module_xyz",)) != before


def test_benchmark_imports_no_training_code():
    # benchmark/ sees methods only through the generator interface; it must not pull in training code
    # (the `lightning` trainer, ardrag's training stages). A fresh interpreter shows what really gets imported.
    import subprocess

    code = (
        "import sys, benchmark.eval, benchmark.methods, benchmark.suites, benchmark.tables\n"
        "bad = [m for m in sys.modules if m == 'lightning' or m.startswith(('lightning.', 'pytorch_lightning',"
        " 'ardrag.training', 'ardrag.train'))]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _fake_frechet_metrics(monkeypatch) -> None:
    """FID/FVD stand-ins that go through the real ``frechet_result`` (so its small-N warning is logged) on
    4 cheap per-video features."""
    from benchmark.metrics.frechet import frechet_result

    def feats(x):
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        return np.stack([x.mean(1), x.std(1), x[:, ::2].mean(1), x[:, 1::2].mean(1)], 1)

    for name, fn, unit in (("fid", "compute_fid", "frames"), ("fvd", "compute_fvd", "clips")):
        mod = types.ModuleType(f"benchmark.metrics.{name}")

        def compute(real, fake_, _name=name, _unit=unit, **kw):
            return frechet_result(_name, feats(real), feats(fake_), 400, [1], _unit)

        setattr(mod, fn, compute)
        monkeypatch.setitem(sys.modules, f"benchmark.metrics.{name}", mod)


def _write_yaml(tmp: Path, shards: Path, tables: list[str]) -> Path:
    import yaml

    cfg = {
        "suite": {"name": "tiny", "path": str(shards), "max_tracks": 4, "num_frames": FRAMES},
        "methods": [{"name": "Static", "spec": "static", "tables": tables}, {"name": "Warp", "spec": "warp"}],
        "metrics": {"latency": {"enabled": False}, "fvd": {"enabled": False}},
        "out_dir": str(tmp / "published"),
        "cache_dir": str(tmp / "cache"),
    }
    path = tmp / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_cli_writes_untracked_results_unless_published(tmp_path, shards, monkeypatch, capsys):
    # a newcomer's run must not rewrite the committed results/<suite>/: those need --publish
    _fake_set_metrics(monkeypatch)
    cfg = _write_yaml(tmp_path, shards, ["table1"])
    assert ev.main(["--config", str(cfg), "--no-progress"]) == 0
    assert (tmp_path / "cache" / "results" / "table1.csv").is_file()
    assert not (tmp_path / "published").exists()
    assert "--publish" in capsys.readouterr().out
    # no method row asks for table2: no table2 file (not an empty table)
    assert not (tmp_path / "cache" / "results" / "table2.md").exists()
    assert ev.main(["--config", str(cfg), "--no_progress", "--publish"]) == 0
    published = (tmp_path / "published" / "table1.md").read_text()
    assert published == (tmp_path / "cache" / "results" / "table1.md").read_text()
    assert ev.main(["--config", str(cfg), "--no-progress", "--out-dir", str(tmp_path / "x")]) == 0
    assert (tmp_path / "x" / "meta.json").is_file()
    # result files are readable by others (atomic temp files are created 0600)
    old = os.umask(0o022)
    try:
        assert ev.main(["--config", str(cfg), "--no-progress", "--out_dir", str(tmp_path / "y")]) == 0
    finally:
        os.umask(old)
    assert {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "y").iterdir()} == {
        n: 0o644 for n in ("table1.csv", "table1.md", "walltime.csv", "meta.json")
    }


def test_markdown_table_is_well_formed_with_and_without_values(tmp_path):
    from benchmark import tables

    row = {"method": "A", "spec": "static", "n_items": 2, "n_missing": 0, "n_seeds": 1}
    for cells in ({}, {"fid": (1.0, 0.0, 1)}):
        tables.write_metric_table(str(tmp_path / "t"), [dict(row, cells=cells)], "T", [])
        lines = [x for x in (tmp_path / "t.md").read_text().splitlines() if x.startswith("|")]
        assert len(lines) == 3 and len({x.count("|") for x in lines}) == 1
        assert "|  |" not in lines[0]


def _sums(err: float, tracked: int, total: int) -> dict[str, float]:
    """Pooled ObjMC sums of ``total`` target points of which ``tracked`` are tracked, each ``err`` px off
    (lost points add 10 px to the penalised sum)."""
    return {
        "err_sum": err * tracked,
        "err_count": tracked,
        "pen_sum": err * tracked + 10.0 * (total - tracked),
        "pen_count": total,
    }


def test_objmc_is_na_below_the_stated_coverage(tmp_path, shards):
    runner = ev.EvalRunner(_config(tmp_path, shards, "res", "cache"), progress=False)
    assert runner.metrics["objmc_min_coverage"] == 0.5

    def cells(coverages):
        per_seed = {
            s: {"k": {"objmc_lk": _sums(2.0, round(c * 100), 100), "timing": {}}}
            for s, c in enumerate(coverages)
        }
        return runner._cells("M", None, {"M": per_seed}, {}, {})

    ok = cells([0.9, 0.6])
    assert ok["objmc_lk"][0] == pytest.approx(2.0) and ok["coverage_lk"][0] == pytest.approx(0.75)
    low = cells([0.9, 0.001])  # one seed tracks 0.1% of the points: its ObjMC stands for nothing
    assert low["objmc_lk"] == (None, None, 0)
    assert low["objmc_lk_penalised"][0] == pytest.approx(((2.0 * 90 + 10.0 * 10) / 100 + 10.0) / 2)
    runner.metrics["objmc_min_coverage"] = 0.0
    assert cells([0.9, 0.001])["objmc_lk"][0] == pytest.approx(2.0)


def test_one_progress_bar_over_all_phases_and_one_small_n_warning_per_metric(
    tmp_path, shards, monkeypatch, caplog
):
    _fake_frechet_metrics(monkeypatch)
    import tqdm

    bars = []

    class Bar:
        def __init__(self, total=None, **kw):
            self.total, self.n = total, 0
            bars.append(self)

        def update(self, n=1):
            self.n += n

        def set_postfix_str(self, s):
            pass

        def close(self):
            pass

    monkeypatch.setattr(tqdm, "tqdm", Bar)
    cfg = _config(tmp_path, shards, "res", "cache")
    cfg["metrics"]["latency"] = {"enabled": True, "items": 2, "warmup": 0, "repeats": 1, "device": "cpu"}
    with caplog.at_level("WARNING"):
        ev.EvalRunner(cfg, progress=True).run()
    # 3 deterministic methods x 3 items, FID + FVD per method (one seed each), latency of static and warp
    # (the generating methods) on 2 items each
    assert len(bars) == 1 and bars[0].total == 9 + 6 + 4 and bars[0].n == bars[0].total
    small = [r.getMessage() for r in caplog.records if "fewer samples than feature" in r.getMessage()]
    assert len(small) == 2 and {m.split(":")[0] for m in small} == {"FID", "FVD"}
    assert "3 of the sets" in small[0]
    assert not [r for r in caplog.records if "biased upwards; compare only" in r.getMessage()]


def test_cache_survives_new_file_times_but_not_new_bytes(tmp_path, shards, monkeypatch):
    _fake_set_metrics(monkeypatch)
    videos = _noisy_videos(shards, tmp_path / "noisy")
    cfg = _config(tmp_path, shards, "res", "cache", videos)
    cfg["methods"] = [m for m in cfg["methods"] if m["name"] == "Noisy"]
    ev.EvalRunner(cfg, progress=False).run()
    for p in videos.rglob("*.npy"):  # e.g. the same outputs written again: new times, same bytes
        os.utime(p, (1, 1))
    runner = ev.EvalRunner(cfg, progress=False)
    runner.run()
    assert runner.n_new == 0
    v = np.load(videos / "item000" / "seed0.npy")
    np.save(videos / "item000" / "seed0.npy", 255 - v)  # new bytes: every video of the method is redone
    runner = ev.EvalRunner(cfg, progress=False)
    runner.run()
    assert runner.n_new == 8


def test_latency_is_timed_in_every_run(tmp_path, shards, monkeypatch):
    """A re-run takes videos and metrics from the cache but times latency again (one run's timings per table)."""
    import benchmark.eval.runner as runner_mod

    _fake_set_metrics(monkeypatch)
    real = runner_mod.measure_latency
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner_mod, "measure_latency", counted)
    cfg = _config(tmp_path, shards, "res", "cache")
    cfg["metrics"]["latency"] = {"enabled": True, "items": 1, "warmup": 0, "repeats": 1, "device": "cpu"}
    ev.EvalRunner(cfg, progress=False).run()
    first = len(calls)
    runner = ev.EvalRunner(cfg, progress=False)
    runner.run()
    assert first == 2 and runner.n_new == 0 and len(calls) == 2 * first  # static and warp generate
