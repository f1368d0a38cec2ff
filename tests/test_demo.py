"""ardrag-demo: drawn paths -> trajectories, the server's HTTP/WebSocket protocol, and the page in a real browser.

The browser tests drive Debian's headless Chromium through Selenium (no browser download) and skip with the
reason when it is missing. A tiny random-weight pipeline, exported and loaded back, keeps each test to seconds.
"""

from __future__ import annotations

import base64
import threading
import time

import cv2
import numpy as np
import pytest
import torch
from _compare import frames_close, max_level_diff

pytest.importorskip("fastapi", reason="the demo's server is an optional extra: pip install -e '.[demo]'")
from fastapi.testclient import TestClient  # noqa: E402

from ardrag import ARDragPipeline  # noqa: E402
from ardrag.demo.app import bundled_images, create_app  # noqa: E402
from ardrag.demo.browser import (  # noqa: E402
    chromium_missing,
    drag,
    launch_chromium,
    open_page,
    page_state,
    quit_chromium,
    wait_for,
)
from ardrag.demo.cli import main as demo_main  # noqa: E402
from ardrag.demo.cli import start_server  # noqa: E402
from ardrag.demo.paths import paths_to_tracks, resample_path  # noqa: E402
from ardrag.pipeline import PipelineConfig  # noqa: E402
from ardrag.trajectory import TrajectoryError, TrajectoryLimits  # noqa: E402
from ardrag.video import decode_video_bytes, encode_mp4  # noqa: E402

T = 9
IMAGE_W, IMAGE_H = 40, 48  # not the model size: the server and pipeline rescale


@pytest.fixture(scope="module")
def pipe(tmp_path_factory) -> ARDragPipeline:
    config = PipelineConfig(
        height=32,
        width=32,
        text_encoder={"type": "hash", "dim": 16, "max_length": 8},
        cache_frames=3,
        max_tracks=3,
        max_frames=40,
    )
    fresh = ARDragPipeline.from_preset("tiny", config, seed=0)
    with torch.no_grad():  # an untrained model with zero-init parts would ignore its conditions
        for p in fresh.transformer.parameters():
            p.normal_(0, 0.1)
    folder = fresh.save_pretrained(tmp_path_factory.mktemp("demo") / "export")
    return ARDragPipeline.from_pretrained(folder)  # the demo serves exported folders


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes()


def decode_png(b64: str) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(base64.b64decode(b64), np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def expected_frames(pipe, image, tracks, seed=0, update_after=None, new_tracks=None) -> np.ndarray:
    """Frames of `pipe.stream` directly, with `new_tracks` sent after `update_after` frames."""
    stream = pipe.stream(image, tracks, seed=seed)
    frames = [next(stream)]
    while True:
        try:
            send = {"tracks": new_tracks} if len(frames) == update_after else None
            frames.append(stream.send(send))
        except StopIteration:
            return np.stack(frames)


class GatedPipeline:
    """The pipeline, but frame `hold` waits for `release` before it is yielded (frames < hold flow freely).

    Lets a test look at the page while generation is provably unfinished: frames produced so far are counted, and
    `making_held` is set once the consumer has asked for frame `hold` (from then on that frame is being made).
    """

    def __init__(self, pipe: ARDragPipeline, hold: int):
        self.pipe, self.config, self.hold = pipe, pipe.config, hold
        self.release = threading.Event()
        self.making_held = threading.Event()
        self.produced = 0

    def stream(self, *args, **kwargs):
        inner = self.pipe.stream(*args, **kwargs)
        frame = next(inner)
        while True:
            self.produced += 1
            if self.produced - 1 == self.hold and not self.release.wait(60):
                raise RuntimeError("test gate was never released")
            update = yield frame
            if self.produced == self.hold:
                self.making_held.set()
            try:
                frame = inner.send(update)
            except StopIteration:
                return


# ------------------------------------------------------------------------------------------ paths
def test_resample_path_spaces_points_evenly_along_the_polyline():
    # an L of length 10 + 10 drawn with uneven spacing and a repeated point
    path = np.array([[0, 0], [1, 0], [1, 0], [10, 0], [10, 4], [10, 10]], float)
    out = resample_path(path, 5)
    np.testing.assert_allclose(out, [[0, 0], [5, 0], [10, 0], [10, 5], [10, 10]], atol=1e-5)
    np.testing.assert_allclose(resample_path([[3, 4]], 4), [[3, 4]] * 4)  # a click holds still
    np.testing.assert_allclose(resample_path([[3, 4], [3, 4]], 2), [[3, 4]] * 2)  # zero length
    np.testing.assert_allclose(resample_path(path, 1), [[0, 0]])


def test_paths_to_tracks_holds_the_start_before_a_live_update():
    limits = TrajectoryLimits(max_frames=40, max_tracks=3)
    tracks = paths_to_tracks([[[0, 0], [30, 0]], [[5, 5]]], 7, 40, 48, limits, start=3)
    assert tracks.shape == (7, 2, 2) and tracks.dtype == np.float32
    np.testing.assert_allclose(tracks[:4, 0], [[0, 0]] * 4)  # held until frame 3, then moving
    np.testing.assert_allclose(tracks[3:, 0, 0], [0, 10, 20, 30], atol=1e-5)
    np.testing.assert_allclose(tracks[:, 1], [[5, 5]] * 7)


@pytest.mark.parametrize(
    ("paths", "frames", "message"),
    [
        ([], 9, "draw at least one drag path"),
        ([[[1, 1]]] * 4, 9, "4 drag paths exceed the model's limit of 3"),
        ([[[1, 1], [2]]], 9, "path 0: track 0 point 1 must be a pair of numbers"),
        ([[[1, 1], [200, 1]]], 9, "far outside the 40x48 frame"),
        ([[[1, 1], [float("nan"), 1]]], 9, "is not finite"),
        ([[[1, 1]]], 41, "41 frames exceed the model's limit of 40"),
        ([[[1, 1]]], 2.5, "frame count must be a positive integer"),
        ("not a list", 9, "draw at least one drag path"),
    ],
)
def test_paths_to_tracks_refuses_bad_drags_with_one_line(paths, frames, message):
    with pytest.raises(TrajectoryError, match=message) as err:
        paths_to_tracks(paths, frames, 40, 48, TrajectoryLimits(max_frames=40, max_tracks=3))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------------ server (no browser)
def test_bundled_images_are_toy_world_frames():
    images = bundled_images()
    toys = [k for k in images if k.startswith("toy-")]
    assert len(toys) == 3
    for k in toys:
        assert images[k].shape == (64, 64, 3) and images[k].dtype == np.uint8 and images[k].std() > 10


def test_upload_validation(pipe, image):
    from ardrag.demo.app import DemoSettings

    client = TestClient(create_app(pipe, {"test": image}, DemoSettings(max_upload_bytes=20_000)))
    r = client.post("/api/upload", content=b"hello, I am not a picture")
    assert r.status_code == 400 and "not an image" in r.json()["error"]
    r = client.post("/api/upload", content=b"")
    assert r.status_code == 400 and "empty" in r.json()["error"]
    big = np.random.default_rng(1).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # ~120 kB of PNG
    r = client.post("/api/upload", content=png_bytes(big))
    assert r.status_code == 413 and r.json()["error"].endswith("the limit is 0.0191 MB")
    r = client.post("/api/upload", content=png_bytes(image))
    assert r.status_code == 200 and r.json()["width"] == IMAGE_W and r.json()["height"] == IMAGE_H
    got = cv2.imdecode(np.frombuffer(client.get(f"/api/image/{r.json()['id']}").content, np.uint8), 1)
    assert np.array_equal(got[..., ::-1], image)  # lossless round trip


def test_websocket_streams_the_pipelines_frames_and_refuses_bad_requests(pipe, image):
    path = [[4.0, 6.0], [20.0, 30.0], [36.0, 40.0]]
    tracks = paths_to_tracks([path], T, IMAGE_W, IMAGE_H, pipe.config.limits())
    want = expected_frames(pipe, image, tracks, seed=5)
    with TestClient(create_app(pipe, {"test": image})) as client, client.websocket_connect("/ws") as ws:
        bad = {"type": "generate", "image": "test", "paths": [[[4, 6], [500, 6]]], "frames": T, "seed": 5}
        ws.send_json(bad)
        msg = ws.receive_json()
        assert msg["type"] == "error" and "far outside" in msg["message"]
        ws.send_json({**bad, "image": "nope"})
        assert "pick an image" in ws.receive_json()["message"]
        ws.send_json({"type": "dance"})
        assert "unknown message type" in ws.receive_json()["message"]

        ws.send_json({**bad, "paths": [path]})  # the same connection still works
        assert ws.receive_json() == {"type": "started", "frames": T}
        frames = []
        while (msg := ws.receive_json())["type"] != "done":
            assert msg["type"] == "frame" and msg["index"] == len(frames)
            frames.append(decode_png(msg["png"]))
        assert msg["frames"] == T and not msg["stopped"] and not msg["failed"]
        assert frames_close(np.stack(frames), want)  # lossless PNG of the very same call
        clip = client.get(msg["clip"])
        assert clip.headers["content-type"] == "video/mp4"
        video = decode_video_bytes(clip.content)
        assert video.shape == (T, 32, 32, 3)
        # the clip encodes exactly the streamed frames (mp4v is lossy, so compare against the same encoder)
        assert np.array_equal(video, decode_video_bytes(encode_mp4(np.stack(frames), pipe.config.fps)))


def test_one_generation_per_page_others_queue_and_stop_ends_it(pipe, image):
    gated = GatedPipeline(pipe, hold=2)
    req = {"type": "generate", "image": "test", "paths": [[[4, 6], [30, 40]]], "frames": T}
    with TestClient(create_app(gated, {"test": image})) as client:
        with client.websocket_connect("/ws") as a, client.websocket_connect("/ws") as b:
            a.send_json(req)
            assert a.receive_json()["type"] == "started"
            assert [a.receive_json()["index"] for _ in range(2)] == [0, 1]  # frame 2 is held
            a.send_json(req)
            assert "already being generated" in a.receive_json()["message"]
            b.send_json(req)  # another page waits for the model
            assert b.receive_json() == {"type": "queued"}
            assert gated.making_held.wait(20)  # the worker is making frame 2 when the stop comes
            a.send_json({"type": "stop"})
            # the server reads a page's messages in order: its answer to the next one shows the stop has landed
            a.send_json({"type": "ping"})
            assert "unknown message type 'ping'" in a.receive_json()["message"]
            gated.release.set()
            while (msg := a.receive_json())["type"] != "done":
                assert msg["type"] == "frame"
            assert msg["stopped"] and msg["frames"] == 3  # the held frame, then it stopped
            assert b.receive_json()["type"] == "started"
            n = 0
            while (msg := b.receive_json())["type"] != "done":
                n += msg["type"] == "frame"
            assert n == T and msg["frames"] == T


def test_a_page_closing_mid_stream_frees_the_model(pipe, image, caplog):
    gated = GatedPipeline(pipe, hold=1)
    req = {"type": "generate", "image": "test", "paths": [[[4, 6], [30, 40]]], "frames": T}
    app = create_app(gated, {"test": image})
    with TestClient(app) as client:
        with client.websocket_connect("/ws") as a:
            a.send_json(req)
            assert a.receive_json()["type"] == "started"
            assert a.receive_json()["index"] == 0
            # the page closes only once the worker is making frame 1 (under CPU load it could otherwise see the
            # closed page before starting frame 1, and there would be no frame in flight to test)
            assert gated.making_held.wait(20)
        assert app.state.demo.model_lock.locked()  # frame 1 is still being made for the closed page
        gated.release.set()  # the held frame finishes, the worker sees the page is gone and lets go
        deadline = time.monotonic() + 20
        while app.state.demo.model_lock.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        # it stopped at the frame in flight (frame 1) instead of finishing the video
        assert gated.produced == 2 and T > 2
        with client.websocket_connect("/ws") as b:
            gated.hold = -1
            b.send_json(req)
            assert b.receive_json()["type"] == "started"  # not queued for ever: the model lock was freed
            kinds = [b.receive_json()["type"] for _ in range(T + 1)]
            assert kinds == ["frame"] * T + ["done"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]  # a closed page is not a failure


def test_cli_refuses_a_missing_checkpoint(tmp_path, capsys):
    assert demo_main(["--checkpoint", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ardrag-demo: error:") and "ardrag_pipeline.json is missing" in err
    assert "\n" not in err


# ------------------------------------------------------------------------------------------ the page in Chromium
needs_chromium = pytest.mark.skipif(chromium_missing() is not None, reason=f"{chromium_missing()}")


@pytest.fixture
def browser():
    driver = launch_chromium()
    yield driver
    quit_chromium(driver)


@needs_chromium
def test_page_streams_frames_and_takes_a_new_drag_mid_stream(browser, pipe, image):
    from selenium.webdriver.common.by import By

    gated = GatedPipeline(pipe, hold=1)  # frame 1 waits until the test has seen frame 0 and steered
    server = start_server(create_app(gated, {"test": image}))
    try:
        open_page(browser, server.url)
        browser.find_element(By.ID, "frames").clear()
        browser.find_element(By.ID, "frames").send_keys(str(T))
        drag(browser, [(40, 60), (80, 120), (140, 200), (180, 250)])
        browser.find_element(By.ID, "generate").click()
        wait_for(browser, "window.ardragDemo.received.length >= 1")
        # frame 0 is on screen while the model has produced only frames 0 and 1 of T: it streams
        assert gated.produced <= 2 < T
        assert browser.execute_script("return window.ardragDemo.stats.first_frame_ms") > 0

        drag(browser, [(200, 40), (150, 150), (60, 280)])  # steer while it plays
        wait_for(browser, "window.ardragDemo.log.some(m => m.type === 'update_queued')")
        gated.release.set()
        wait_for(browser, "window.ardragDemo.stats.done === true")

        demo = page_state(browser)
        assert [r["index"] for r in demo["received"]] == list(range(T))  # every frame, in order, painted
        assert demo["errors"] == []
        assert {"type": "update_ok", "frames_shown": 2} in demo["log"]  # sent after frames 0 and 1
        got = np.stack([decode_png(r["png"]) for r in demo["received"]])
        generate, update = demo["sent"][0], demo["sent"][1]
        assert generate["type"] == "generate" and update["type"] == "update" and len(update["paths"]) == 1
        limits = pipe.config.limits()
        tracks = paths_to_tracks(generate["paths"], T, IMAGE_W, IMAGE_H, limits)
        new = paths_to_tracks(update["paths"], T, IMAGE_W, IMAGE_H, limits, start=2)
        unsteered = expected_frames(pipe, image, tracks)
        steered = expected_frames(pipe, image, tracks, update_after=2, new_tracks=new)
        assert frames_close(got, steered)  # exactly what the pipeline streams with that update
        assert frames_close(got[:2], unsteered[:2])  # frames before the update are untouched
        assert max_level_diff(got[2:], unsteered[2:]) > 10  # later frames follow the new drag
        stats = browser.find_element(By.ID, "stats").text
        assert f"frame {T}/{T}" in stats and "FPS" in stats
        assert browser.find_element(By.ID, "download").get_attribute("href").endswith(".mp4")
    finally:
        gated.release.set()
        server.stop()


@needs_chromium
def test_page_shows_an_upload_error_and_the_server_keeps_serving(browser, pipe, image, tmp_path):
    from selenium.webdriver.common.by import By

    server = start_server(create_app(pipe, {"test": image}))
    try:
        open_page(browser, server.url)
        bogus = tmp_path / "notes.png"
        bogus.write_text("these are my notes, not a picture\n")
        browser.find_element(By.ID, "upload").send_keys(str(bogus))
        wait_for(browser, "window.ardragDemo.errors.length > 0")
        shown = browser.find_element(By.ID, "error").text
        assert "not an image" in shown and "\n" not in shown

        browser.find_element(By.ID, "generate").click()  # no drag drawn: refused by the trajectory contract
        wait_for(browser, "window.ardragDemo.errors.length > 1")
        assert "draw at least one drag path" in browser.find_element(By.ID, "error").text
        assert browser.find_element(By.ID, "generate").is_enabled()

        drag(browser, [(30, 30), (120, 90)])  # the server still serves: a real video follows
        browser.find_element(By.ID, "generate").click()
        wait_for(browser, "window.ardragDemo.stats.done === true")
        assert browser.execute_script("return window.ardragDemo.received.length") == 17  # page default
    finally:
        server.stop()
