"""
Where a long-running daemon's Python memory goes: a soak starts one daemon
under C{tracemalloc} with this module as the prelude of its command, and asks
it for snapshots with SIGUSR2 (at the start of the run and at its end), then
compares them.

Kept out of gitserve itself: tracing costs the daemon time and memory, and
it is a question a soak asks, not something a server should answer.
"""

from __future__ import annotations

import os
import signal
import time
import tracemalloc
from pathlib import Path
from types import FrameType

# The environment variable naming the directory the daemon writes snapshots to.
DIRECTORY = "GITSERVE_TRACEMALLOC_DIR"

# Frames kept per allocation: enough to see who called the allocator.
FRAMES = 8

# What C{python -c} runs before twistd in a traced daemon.
PRELUDE = "import bench.memorytrace; bench.memorytrace.install(); "


def install() -> None:
    """
    On SIGUSR2, dump a snapshot to the next numbered file; tracing starts at
    the first one, so the daemon starts at full speed (tracing every
    allocation of twistd's imports takes a loaded machine past the soak's
    start timeout) and what is traced is exactly what was allocated since.
    """
    directory = Path(os.environ[DIRECTORY])
    taken = [0]

    def dump(signum: int, frame: FrameType | None) -> None:
        if not tracemalloc.is_tracing():
            tracemalloc.start(FRAMES)
        taken[0] += 1
        target = directory / f"snapshot-{taken[0]}"
        partial = target.with_suffix(".partial")
        tracemalloc.take_snapshot().dump(str(partial))
        # A reader waiting for the file never sees half of one.
        partial.rename(target)

    signal.signal(signal.SIGUSR2, dump)


def request(pid: int, directory: Path, number: int, timeout: float = 60) -> tracemalloc.Snapshot:
    """Ask the traced daemon C{pid} for its C{number}th snapshot and load it."""
    os.kill(pid, signal.SIGUSR2)
    target = directory / f"snapshot-{number}"
    deadline = time.monotonic() + timeout
    while not target.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no tracemalloc snapshot from {pid}")
        time.sleep(0.2)
    return tracemalloc.Snapshot.load(str(target))


def growth(start: tracemalloc.Snapshot, end: tracemalloc.Snapshot, top: int = 15) -> list[str]:
    """
    The allocations that changed most between two snapshots (by size, up or
    down; Python's free lists and caches show as a first step, a leak as a
    steady growth), by the allocating line,
    each with the call path that led there (tracemalloc's own frames and the
    importer's are filtered out: they are the tracer, not the daemon).
    """
    noise = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
        tracemalloc.Filter(False, "<unknown>"),
    ]
    start, end = start.filter_traces(noise), end.filter_traces(noise)
    total = sum(stat.size_diff for stat in end.compare_to(start, "filename"))
    lines = [f"traced Python memory grew {total / 2**10:+.1f} KiB; largest changes:"]
    for stat in end.compare_to(start, "traceback")[:top]:
        lines.append(
            f"  {stat.size_diff / 2**10:+9.1f} KiB {stat.count_diff:+7d} blocks"
            f"  (now {stat.size / 2**10:.1f} KiB)"
        )
        for frame in list(stat.traceback)[-4:]:
            lines.append(f"      {frame.filename}:{frame.lineno}")
    return lines
