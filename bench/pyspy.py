"""
Where gitserve spends its time during a workload, sampled with py-spy.

C{python bench/run.py --servers gitserve --only info-refs --profile} records
one py-spy profile of the twistd process per workload into C{bench/.work/} and
prints the functions with the most samples, by own time and inclusive time.
py-spy is not a dependency of gitserve: C{pip install py-spy} when needed.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

from bench.servers import MissingDependency

RATE = 200


class Profiler:
    """
    A py-spy recording of one process over a C{with} block.

    Non-blocking sampling: py-spy does not stop the server to read its stack,
    so the profile does not slow down the workload it explains.
    """

    def __init__(self, pid: int, output: Path) -> None:
        if shutil.which("py-spy") is None:
            raise MissingDependency("py-spy is missing: pip install py-spy")
        self.pid = pid
        self.output = output
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> Profiler:
        self.output.unlink(missing_ok=True)
        self._process = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(self.pid),
                "--rate",
                str(RATE),
                "--nonblocking",
                "--format",
                "raw",
                "--output",
                str(self.output),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._process is not None
        # SIGINT makes py-spy write what it recorded and exit.
        self._process.send_signal(signal.SIGINT)
        try:
            _, errors = self._process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            _, errors = self._process.communicate()
        if not self.output.exists():
            raise RuntimeError(f"py-spy wrote no profile: {errors.decode(errors='replace')}")


def summarize(profile: Path, top: int = 15) -> str:
    """
    The functions with the most samples in a raw (collapsed-stack) py-spy
    profile: by own samples (where the CPU was) and by inclusive samples (which
    calls it was for), as percentages of all samples.
    """
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_shorten(frame) for frame in stack.split(";")]
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    if not total:
        return f"{profile}: no samples (the server was idle)"
    lines = [f"{profile}: {total} samples at {RATE}/s = {total / RATE:.1f} s of busy CPU"]
    for title, counter in (("own", own), ("inclusive", inclusive)):
        lines.append(f"  top by {title} samples:")
        lines += [
            f"    {100 * samples / total:5.1f}%  {frame}"
            for frame, samples in counter.most_common(top)
        ]
    return "\n".join(lines)


def _shorten(frame: str) -> str:
    # "function (/long/path/to/module.py:123)" -> "function (module.py:123)"
    name, _, where = frame.partition(" (")
    if "/" in where:
        where = where.rsplit("/", 1)[1]
    return f"{name} ({where}" if where else name
