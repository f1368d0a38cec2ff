"""ardrag-eval end to end on a tiny synthetic shard suite: numbers in the tables, FID/FVD plumbing, missing
videos counted, and an interrupted + resumed run giving the same tables as a single run."""

from __future__ import annotations

import json
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
    assert all(set(m["tables"]) <= {"table1", "table2"} for m in cfg["methods"])


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
    # DESIGN: benchmark/ sees methods only through the generator interface; it must not pull in training code
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
