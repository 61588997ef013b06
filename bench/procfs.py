"""
Reading a server's memory, CPU and open files from C{/proc} (Linux only).

Every function tolerates a process that exits while it is read: a worker
reaped mid-sample counts as zero rather than failing a benchmark run.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return ""


def _statFields(pid: int) -> list[str]:
    # The command name is parenthesised and may contain spaces: split after it.
    stat = _read(f"/proc/{pid}/stat")
    return stat[stat.rfind(")") + 2 :].split() if stat else []


def childPids(parent: int) -> list[int]:
    """The pids whose parent is C{parent}."""
    children = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _statFields(int(entry.name))
            if fields and int(fields[1]) == parent:
                children.append(int(entry.name))
    return children


def processName(pid: int) -> str:
    """The command name (C{comm}) of C{pid}, or an empty string if it is gone."""
    return _read(f"/proc/{pid}/comm").strip()


def cpuSeconds(pids: Iterable[int]) -> float:
    """User plus system CPU seconds of C{pids} themselves, without their children."""
    total = 0
    for pid in pids:
        fields = _statFields(pid)
        if fields:
            # utime and stime are fields 14 and 15 of stat(5); fields[0] is field 3.
            total += int(fields[11]) + int(fields[12])
    return total / _TICKS


def cpuSecondsWithChildren(pids: Iterable[int]) -> float:
    """
    User plus system CPU seconds of C{pids} and of the children they have
    reaped (cutime and cstime): a server's own work and its git's.
    """
    total = 0
    for pid in pids:
        fields = _statFields(pid)
        if fields:
            # utime, stime, cutime, cstime are fields 14 to 17 of stat(5).
            total += sum(int(f) for f in fields[11:15])
    return total / _TICKS


def _statusKiB(pid: int, key: str) -> int:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def residentKiB(pid: int) -> int:
    """C{VmRSS} of C{pid}."""
    return _statusKiB(pid, "VmRSS")


def peakResidentKiB(pid: int) -> int:
    """C{VmHWM}: the highest C{VmRSS} since start or since L{resetPeakResident}."""
    return _statusKiB(pid, "VmHWM")


def resetPeakResident(pid: int) -> bool:
    """
    Reset C{VmHWM} of C{pid} to its current RSS (clear_refs(5) value 5), so a
    later L{peakResidentKiB} is the peak of one workload, sampled by the kernel
    itself rather than by polling that may miss a spike.

    @return: whether the kernel allowed it.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def proportionalSetKiB(pid: int) -> int:
    """C{Pss} of C{pid}: its resident pages, each shared page divided among its sharers."""
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def writtenFiles(pid: int) -> dict[str, int]:
    """
    Regular files C{pid} holds open for writing, with their sizes; unlinked
    temporary files (C{tempfile.TemporaryFile}) are found too, since their
    descriptors still are.
    """
    found: dict[str, int] = {}
    fdDir = f"/proc/{pid}/fd"
    try:
        descriptors = os.listdir(fdDir)
    except OSError:
        return found
    for fd in descriptors:
        try:
            target = os.readlink(f"{fdDir}/{fd}")
            if not target.startswith("/"):
                continue  # sockets, pipes, anon inodes
            flags = 0
            for line in _read(f"/proc/{pid}/fdinfo/{fd}").splitlines():
                if line.startswith("flags:"):
                    flags = int(line.split()[1], 8)
            if flags & os.O_ACCMODE == os.O_RDONLY:
                continue
            status = os.stat(f"{fdDir}/{fd}")
        except OSError:
            continue
        if status.st_mode & 0o170000 == 0o100000:
            found[target] = status.st_size
    return found


def largestFileUnder(directory: Path, ignore: Iterable[str] = ()) -> tuple[str, int]:
    """The largest file below C{directory} but not in C{ignore}, and its size, or C{("", 0)}."""
    best = ("", 0)
    for parent, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(parent, name)
            if path in ignore:
                continue
            try:
                size = os.stat(path).st_size
            except OSError:
                continue
            if size > best[1]:
                best = (path, size)
    return best


@dataclass
class SampleResult:
    """
    What a L{Sampler} saw.

    @ivar peakKiB: the highest memory reading.
    @ivar cpuSeconds: CPU seconds of the server processes over the sampled span.
    @ivar largestTempFile: the largest file the server wrote (path, bytes).
    """

    peakKiB: int = 0
    cpuSeconds: float = 0.0
    largestTempFile: tuple[str, int] = ("", 0)
    samples: int = 0
    errors: list[str] = field(default_factory=list)


class Sampler:
    """
    Poll a server's memory (and, optionally, the files it writes) on a thread
    while a workload runs; use as a context manager.

    @param memory: returns the server's memory in KiB now.
    @param pids: returns the server's own pids now (for CPU and open files).
    @param watchFiles: also track the largest regular file the server holds
        open for writing, and the largest file in C{tmpDir}.
    @param ignore: paths that are not temporary files (the server's own log).
    """

    def __init__(
        self,
        memory: Callable[[], int],
        pids: Callable[[], list[int]],
        interval: float = 0.02,
        watchFiles: bool = False,
        tmpDir: Path | None = None,
        ignore: set[str] | None = None,
    ) -> None:
        self._ignore = ignore or set()
        self._memory = memory
        self._pids = pids
        self._interval = interval
        self._watchFiles = watchFiles
        self._tmpDir = tmpDir
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._cpuByPid: dict[int, float] = {}
        self._cpuStart: dict[int, float] = {}
        self.result = SampleResult()

    def __enter__(self) -> Sampler:
        for pid in self._pids():
            self._cpuStart[pid] = cpuSeconds([pid])
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.result.cpuSeconds = sum(
            used - self._cpuStart.get(pid, 0.0) for pid, used in self._cpuByPid.items()
        )

    def _sample(self) -> None:
        result = self.result
        pids = self._pids()
        result.peakKiB = max(result.peakKiB, self._memory())
        for pid in pids:
            used = cpuSeconds([pid])
            if used:
                self._cpuByPid[pid] = used
        if self._watchFiles:
            for pid in pids:
                for path, size in writtenFiles(pid).items():
                    if size > result.largestTempFile[1] and path not in self._ignore:
                        result.largestTempFile = (path, size)
            if self._tmpDir is not None:
                path, size = largestFileUnder(self._tmpDir, self._ignore)
                if size > result.largestTempFile[1]:
                    result.largestTempFile = (path, size)
        result.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._sample()
            except Exception as error:  # keep sampling; report at the end
                self.result.errors.append(repr(error))
