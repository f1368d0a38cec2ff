"""Reading a run's TensorBoard scalars back (RECIPE.md files, the reward curve, tests): one merge rule."""

from __future__ import annotations

from pathlib import Path


def read_run_scalars(run_dir: str | Path, prefix: str = "") -> tuple[dict[str, dict[int, float]], float]:
    """({tag: {step: value}}, wall seconds) over every events file below `run_dir`, tags starting with `prefix`.

    Files are read oldest first and later events for the same step win (a resumed run rewrites the steps after its
    checkpoint). Wall seconds: the sum over files of the span between their first and last scalar event, so pauses
    between resumed segments are not counted.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    merged: dict[str, dict[int, float]] = {}
    wall = 0.0
    for f in sorted(Path(run_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        times = []
        for tag in acc.Tags().get("scalars", []):
            events = acc.Scalars(tag)
            times += [e.wall_time for e in events]
            if tag.startswith(prefix):
                merged.setdefault(tag, {}).update({int(e.step): float(e.value) for e in events})
        if times:
            wall += max(times) - min(times)
    return merged, wall
