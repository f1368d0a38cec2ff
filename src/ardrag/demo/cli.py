"""`ardrag-demo --checkpoint DIR`: serve the drag-and-stream page for an exported pipeline on localhost."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from dataclasses import dataclass

DEMO_EXTRA_HINT = "install the demo's server with: pip install -e '.[demo]' (fastapi, uvicorn, websockets)"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ardrag-demo",
        description="Local web app: draw drags on an image and watch the video stream in, frame by frame.",
    )
    p.add_argument(
        "--checkpoint", required=True, help="exported pipeline folder (transformer/ + ardrag_pipeline.json)"
    )
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: localhost only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted image upload")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer blocks (compiled by a warm-up run before the page is served)",
    )
    return p


def fail(msg: str) -> int:
    print(f"ardrag-demo: error: {msg}", file=sys.stderr)
    return 2


@dataclass
class RunningServer:
    """A uvicorn server on a background thread (tests, benchmarks): `url`, and `stop()` to shut it down."""

    url: str
    server: object
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def start_server(app, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Serve `app` on a background thread; port 0 picks a free port. Returns once the server accepts."""
    import uvicorn

    sock = bind_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="websockets-sansio"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the demo server did not start")
        time.sleep(0.02)
    return RunningServer(f"http://{host}:{sock.getsockname()[1]}", server, thread)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ardrag.pipeline import PipelineConfig  # light: no model code runs

    try:
        PipelineConfig.load(args.checkpoint)
    except (FileNotFoundError, ValueError) as e:
        return fail(str(e))
    if args.max_upload_mb <= 0:
        return fail(f"--max-upload-mb must be positive, got {args.max_upload_mb}")
    try:
        import uvicorn

        from ardrag.demo.app import DemoSettings, create_app
    except ImportError as e:
        return fail(f"{e.name or e} is not installed; {DEMO_EXTRA_HINT}")

    import torch

    from ardrag.pipeline import ARDragPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = ARDragPipeline.from_pretrained(args.checkpoint, device=device)
    if args.compile:
        pipe.config.compile = True
        print(f"ardrag-demo: compiled in a {pipe.warmup(17):.1f} s warm-up run", flush=True)
    settings = DemoSettings(max_upload_bytes=int(args.max_upload_mb * 2**20))
    app = create_app(pipe, settings=settings)
    try:
        sock = bind_socket(args.host, args.port)
    except OSError as e:
        return fail(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}")
    print(f"ardrag-demo: {args.checkpoint} on {device}; open http://{args.host}:{args.port}/", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="websockets-sansio")).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
