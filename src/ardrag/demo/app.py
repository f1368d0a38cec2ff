"""The demo server: a FastAPI app that streams `ARDragPipeline.stream` frames to the page over a WebSocket.

Why FastAPI + uvicorn (not Gradio): the page must paint each frame the moment it is decoded and push new drags
into the running generator; a plain WebSocket does both with one small message protocol, and a hand-written
canvas page needs no frontend build. Gradio's streaming outputs and sketch inputs do not map onto a generator
that takes `send()` updates between frames.

WebSocket `/ws` protocol (JSON text messages):
    page -> server  {"type": "generate", "image": ID, "paths": [[[x, y], ...], ...], "frames": T,
                     "prompt": str, "seed": int}
                    {"type": "update", "paths": [...]}   new drags for the running stream (from the next frame)
                    {"type": "stop"}
    server -> page  {"type": "queued"} (another page is generating), {"type": "started", "frames": T},
                    {"type": "frame", "index": i, "total": T, "gen_ms": ms, "png": base64},
                    {"type": "update_queued"}, {"type": "update_ok", "frames_shown": k} (sent into the stream
                    after k frames: it applies from the next latent frame the pipeline starts),
                    {"type": "error", "message": one line},
                    {"type": "done", "frames": n, "stopped": bool, "failed": bool, "clip": URL of the MP4}
Images: bundled ones are listed by GET /api/info, served by GET /api/image/ID; uploads are the raw request body
of POST /api/upload. A finished clip is GET /api/clip/ID.mp4.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from ardrag.assets import AssetNotFoundError, skimage_photo
from ardrag.demo.paths import paths_to_tracks
from ardrag.trajectory import TrajectoryError
from ardrag.video import encode_mp4, read_image

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
BUNDLED_PHOTOS = ("astronaut.png", "coffee.png", "chelsea.png")
"""scikit-image photos offered when scikit-image's data files are installed (scripts/setup.sh does)."""


@dataclass
class DemoSettings:
    max_upload_bytes: int = 10 * 1024 * 1024
    """Largest accepted upload (bytes of the encoded file)."""
    max_image_pixels: int = 4096 * 4096
    """Largest accepted decoded image (width x height)."""
    max_prompt_chars: int = 500
    keep_clips: int = 8
    """Finished clips kept in memory for download (oldest dropped first)."""
    keep_uploads: int = 32


@dataclass
class _Generation:
    """One running generation of a connection: the drags waiting to be sent and the stop flag."""

    image: np.ndarray
    frames: int
    update: list | None = None  # latest validated drag paths, taken by the worker at the next frame boundary
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards `update` across the two threads
    task: asyncio.Task | None = None


class DemoState:
    """What the app serves: the pipeline (loaded once), images by id, finished clips by id."""

    def __init__(self, pipe: Any, images: dict[str, np.ndarray], settings: DemoSettings):
        self.pipe = pipe
        self.settings = settings
        self.images: OrderedDict[str, np.ndarray] = OrderedDict(images)
        self.bundled = list(images)
        self.clips: OrderedDict[str, bytes] = OrderedDict()
        # one generation at a time on the one model; other pages queue. Held by the worker thread that runs the
        # stream, so the model is never used twice at once even when a page's task is cancelled mid-frame.
        self.model_lock = threading.Lock()
        self._ids = itertools.count(1)

    def add_upload(self, image: np.ndarray) -> str:
        key = f"upload-{next(self._ids)}"
        self.images[key] = image
        uploads = [k for k in self.images if k not in self.bundled]
        for old in uploads[: max(0, len(uploads) - self.settings.keep_uploads)]:
            del self.images[old]
        return key

    def add_clip(self, data: bytes) -> str:
        key = f"clip-{next(self._ids)}"
        self.clips[key] = data
        while len(self.clips) > self.settings.keep_clips:
            self.clips.popitem(last=False)
        return key


def bundled_images() -> dict[str, np.ndarray]:
    """Toy-world first frames shipped with the package, then scikit-image photos when installed."""
    images = {p.stem: read_image(p) for p in sorted((STATIC / "images").glob("*.png"))}
    for name in BUNDLED_PHOTOS:
        try:
            images[Path(name).stem] = read_image(skimage_photo(name))
        except AssetNotFoundError:  # scikit-image's data files are optional for the demo
            pass
    return images


def _mb(n: int) -> str:
    return f"{n / 2**20:.3g} MB"


def decode_upload(data: bytes, settings: DemoSettings) -> np.ndarray:
    """Uploaded file bytes -> uint8 (H, W, 3) RGB; ValueError with one line when it is not a usable image."""
    if not data:
        raise ValueError("the uploaded file is empty")
    if len(data) > settings.max_upload_bytes:
        raise ValueError(f"the upload is {_mb(len(data))}; the limit is {_mb(settings.max_upload_bytes)}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("the uploaded file is not an image OpenCV can read (use PNG, JPEG, BMP, WebP ...)")
    h, w = img.shape[:2]
    if h * w > settings.max_image_pixels or min(h, w) < 8:
        raise ValueError(f"the image is {w}x{h}; use one between 8x8 and {settings.max_image_pixels} pixels")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def png_base64(frame: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    assert ok
    return base64.b64encode(buf.tobytes()).decode("ascii")


def _advance(stream: Any, update: dict | None) -> np.ndarray | None:
    """Next frame of the stream (sending an update first when there is one); None when it is exhausted."""
    try:
        return next(stream) if update is None else stream.send(update)
    except StopIteration:
        return None


def create_app(pipe: Any, images: dict[str, np.ndarray] | None = None, settings: DemoSettings | None = None):
    """The demo app around a loaded pipeline (anything with `.config` and `.stream(...)` like ARDragPipeline)."""
    settings = settings or DemoSettings()
    state = DemoState(pipe, bundled_images() if images is None else images, settings)
    app = FastAPI(title="ardrag demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.demo = state
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    config = pipe.config
    limits = config.limits()

    @app.get("/")
    async def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/info")
    async def info() -> dict:
        return {
            "mode": config.mode,
            "width": config.width,
            "height": config.height,
            "fps": config.fps,
            "max_frames": config.max_frames,
            "max_tracks": config.max_tracks,
            "default_frames": min(17, config.max_frames),
            "images": state.bundled,
        }

    @app.get("/api/image/{key}")
    async def image(key: str) -> Response:
        if key not in state.images:
            return JSONResponse({"error": f"no image {key!r}"}, status_code=404)
        ok, buf = cv2.imencode(".png", cv2.cvtColor(state.images[key], cv2.COLOR_RGB2BGR))
        return Response(buf.tobytes(), media_type="image/png")

    @app.post("/api/upload")
    async def upload(request: Request) -> JSONResponse:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > settings.max_upload_bytes:
            too_large = f"the upload is too large; the limit is {_mb(settings.max_upload_bytes)}"
            return JSONResponse({"error": too_large}, status_code=413)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > settings.max_upload_bytes:
                too_large = f"the upload is too large; the limit is {_mb(settings.max_upload_bytes)}"
                return JSONResponse({"error": too_large}, status_code=413)
        try:
            img = await asyncio.to_thread(decode_upload, bytes(data), settings)
        except ValueError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        key = state.add_upload(img)
        return JSONResponse({"id": key, "width": img.shape[1], "height": img.shape[0]})

    @app.get("/api/clip/{key}")
    async def clip(key: str) -> Response:
        key = key.removesuffix(".mp4")
        if key not in state.clips:
            return JSONResponse({"error": f"no clip {key!r} (clips are kept in memory)"}, status_code=404)
        headers = {"Content-Disposition": f'attachment; filename="ardrag-{key}.mp4"'}
        return Response(state.clips[key], media_type="video/mp4", headers=headers)

    @app.websocket("/ws")
    async def ws_endpoint(ws: WebSocket) -> None:
        await ws.accept()
        send_lock = asyncio.Lock()
        gen: _Generation | None = None

        async def send(msg: dict) -> None:
            async with send_lock:
                try:
                    await ws.send_json(msg)
                except Exception as e:  # the page closed: uvicorn and starlette raise several kinds
                    raise WebSocketDisconnect() from e

        async def error(message: str) -> None:
            await send({"type": "error", "message": message})

        try:
            while True:
                try:
                    msg = await ws.receive_json()
                except ValueError:
                    await error("messages must be JSON objects")
                    continue
                kind = msg.get("type") if isinstance(msg, dict) else None
                running = gen is not None and gen.task is not None and not gen.task.done()
                if kind == "generate":
                    if running:
                        await error("a video is already being generated on this page: press Stop first")
                        continue
                    try:
                        gen, request = _parse_generate(msg, state, limits)
                    except TrajectoryError as e:
                        await error(str(e))
                        continue
                    gen.task = asyncio.create_task(_run(state, gen, request, send, error))
                elif kind == "update":
                    if not running:
                        await error("nothing is playing: press Generate to start a video")
                    elif config.mode != "autoregressive":
                        await error("this checkpoint is bidirectional: it cannot take drags while it plays")
                    else:
                        try:  # validate now so a bad drag is reported at once; applied at the next frame
                            paths_to_tracks(
                                msg.get("paths"), gen.frames, gen.image.shape[1], gen.image.shape[0], limits
                            )
                        except TrajectoryError as e:
                            await error(str(e))
                            continue
                        with gen.lock:
                            gen.update = msg["paths"]
                        await send({"type": "update_queued"})
                elif kind == "stop":
                    if running:
                        gen.stop.set()
                else:
                    await error(f"unknown message type {kind!r}; expected generate, update or stop")
        except WebSocketDisconnect:
            if gen is not None:
                gen.stop.set()

    return app


def _parse_generate(msg: dict, state: DemoState, limits) -> tuple[_Generation, dict]:
    """Check a generate request; TrajectoryError (one line) when anything is wrong."""
    key = msg.get("image")
    if not isinstance(key, str) or key not in state.images:
        raise TrajectoryError("pick an image first (or upload one)")
    image = state.images[key]
    frames = msg.get("frames")
    tracks = paths_to_tracks(msg.get("paths"), frames, image.shape[1], image.shape[0], limits)
    prompt = msg.get("prompt", "")
    if not isinstance(prompt, str) or len(prompt) > state.settings.max_prompt_chars:
        raise TrajectoryError(
            f"the prompt must be text of at most {state.settings.max_prompt_chars} characters"
        )
    seed = msg.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise TrajectoryError(f"the seed must be a non-negative integer, got {seed!r}")
    return _Generation(image=image, frames=frames), {"tracks": tracks, "prompt": prompt, "seed": seed}


async def _run(state: DemoState, gen: _Generation, request: dict, send, error) -> None:
    """Generate one video on a worker thread and relay its events to the page as they happen."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    frames: list[np.ndarray] = []

    def emit(*event) -> None:
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the event loop is gone (server shutting down)
            pass

    worker = threading.Thread(target=_worker, args=(state, gen, request, frames, emit), daemon=True)
    worker.start()
    failed = False
    try:
        while (event := await events.get())[0] != "end":
            kind = event[0]
            if kind == "frame":
                _, index, gen_ms, frame = event
                png = await asyncio.to_thread(png_base64, frame)
                await send(
                    {"type": "frame", "index": index, "total": gen.frames, "gen_ms": gen_ms, "png": png}
                )
            elif kind == "error":
                failed = True
                await error(event[1])
            else:  # queued, started, update_ok
                await send(event[1])
        clip = ""
        if frames:
            data = await asyncio.to_thread(encode_mp4, np.stack(frames), state.pipe.config.fps)
            clip = f"/api/clip/{state.add_clip(data)}.mp4"
        stopped = gen.stop.is_set()
        await send(
            {"type": "done", "frames": len(frames), "stopped": stopped, "failed": failed, "clip": clip}
        )
    except WebSocketDisconnect:  # the page went away: nothing to tell
        pass
    finally:  # whatever ended this task (a closed page, cancellation), the worker stops at the next frame
        gen.stop.set()


def _worker(state: DemoState, gen: _Generation, request: dict, frames: list, emit) -> None:
    """Own the model lock and the stream from first frame to close; drags are sent between frames."""
    pipe, limits = state.pipe, state.pipe.config.limits()
    h, w = gen.image.shape[:2]
    if not state.model_lock.acquire(blocking=False):
        emit("queued", {"type": "queued"})
        state.model_lock.acquire()
    try:
        if gen.stop.is_set():
            return
        emit("started", {"type": "started", "frames": gen.frames})
        stream = pipe.stream(gen.image, request["tracks"], prompt=request["prompt"], seed=request["seed"])
        try:
            update = None
            while len(frames) < gen.frames and not gen.stop.is_set():
                t0 = time.perf_counter()
                frame = _advance(stream, update)
                if frame is None:
                    break
                frames.append(frame)
                emit("frame", len(frames) - 1, round((time.perf_counter() - t0) * 1000, 2), frame)
                with gen.lock:
                    paths, gen.update = gen.update, None
                update = None
                if paths is not None:  # resampled over the frames still to come
                    update = {"tracks": paths_to_tracks(paths, gen.frames, w, h, limits, start=len(frames))}
                    emit("update_ok", {"type": "update_ok", "frames_shown": len(frames)})
        finally:
            stream.close()
    except Exception as e:  # a model error ends this video, not the server
        log.exception("generation failed")
        emit("error", f"generation failed: {type(e).__name__}: {e}".splitlines()[0])
    finally:
        state.model_lock.release()
        emit("end")
