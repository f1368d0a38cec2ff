"""Reading a run's TensorBoard scalars back (RECIPE.md files, the reward curve, the recipe's cost, tests): one merge
rule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def _files(run_dir: str | Path) -> Iterator[dict[str, list]]:
    """Per events file below `run_dir`, oldest first: {tag: scalar events}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for f in sorted(Path(run_dir).rglob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        acc = EventAccumulator(str(f), size_guidance={"scalars": 0})
        acc.Reload()
        yield {tag: acc.Scalars(tag) for tag in acc.Tags().get("scalars", [])}


def read_run_scalars(run_dir: str | Path, prefix: str = "") -> tuple[dict[str, dict[int, float]], float]:
    """({tag: {step: value}}, wall seconds) over every events file below `run_dir`, tags starting with `prefix`.

    Files are read oldest first and later events for the same step win (a resumed run rewrites the steps after its
    checkpoint). Wall seconds: the sum over files of the span between their first and last scalar event, so pauses
    between resumed segments are not counted.
    """
    merged: dict[str, dict[int, float]] = {}
    wall = 0.0
    for scalars in _files(run_dir):
        times = [e.wall_time for events in scalars.values() for e in events]
        for tag, events in scalars.items():
            if tag.startswith(prefix):
                merged.setdefault(tag, {}).update({int(e.step): float(e.value) for e in events})
        if times:
            wall += max(times) - min(times)
    return merged, wall


def step_wall_times(run_dir: str | Path, prefix: str = "") -> dict[int, float]:
    """{step: wall time (s since the epoch) of the last scalar logged at it}, over tags starting with `prefix`; a
    resumed run's later file wins for the steps it logged again (as in `read_run_scalars`)."""
    stamps: dict[int, float] = {}
    for scalars in _files(run_dir):
        here: dict[int, float] = {}
        for tag, events in scalars.items():
            if tag.startswith(prefix):
                for e in events:
                    here[int(e.step)] = max(here.get(int(e.step), 0.0), e.wall_time)
        stamps.update(here)
    return stamps
