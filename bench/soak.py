"""
Soak: a mixed load of clones, fetches, ls-remotes and pushes against one
gitserve on loopback, for a bounded time and a bounded number of operations;
or through HAProxy against N replicas serving one root, with a rolling
restart (SIGTERM, drain, start again) every few minutes.

    PYTHONPATH=. python bench/soak.py --duration 600 --workers 4
    PYTHONPATH=. python bench/soak.py --duration 3600 --workers 4 --replicas 3 --restart-every 300
    PYTHONPATH=. python bench/soak.py --duration 1200 --replicas 3 --restart-every 300 --tracemalloc

It prints the operations done by kind, the failures (the goal is 0) with the
first few messages, and each daemon's RSS and open descriptors after warm-up
and at the end (they must not grow). With replicas, replica 0 is never
restarted, so its figures span the whole run; the others are restarted in
turn, and each of their runs is reported. A progress line every minute gives
the long-lived daemon's RSS, so a growth shows its shape (a step while caches
fill, or a slope). With --tracemalloc that daemon runs under tracemalloc
(slower, and its RSS includes the tracer's own) and the Python allocations
that grew between the start and the end are printed, by where they were made.
Exit status 1 when anything failed or a daemon's descriptors or children grew.

Not a test: pytest does not collect bench/ (testpaths is tests/).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import memorytrace  # noqa: E402
from tests.conftest import Daemon, GitClient, freePort, startDaemon  # noqa: E402
from tests.loadbalancer import LoadBalancer, Replica, balance  # noqa: E402

# How a worker's time is shared between operations (weights).
MIX = {
    "clone-v2": 3,
    "clone-v0": 1,
    "fetch": 4,
    "ls-remote": 2,
    "push-branch": 3,
    "push-shared": 2,
}

# A push to the shared branch retries (fetch, rebase) this often before it
# counts as a failure: losing races is expected, losing forever is not.
SHARED_RETRIES = 25


class Soak:
    """The shared state of one soak run: counters, failures, the deadline."""

    def __init__(self, url: str, git: GitClient, base: Path, deadline: float, maxOps: int):
        self.url = url
        self.git = git
        self.base = base
        self.deadline = deadline
        self.maxOps = maxOps
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.messages: list[str] = []
        self.lock = threading.Lock()

    def running(self) -> bool:
        with self.lock:
            total = sum(self.done.values()) + sum(self.failed.values())
        return time.monotonic() < self.deadline and total < self.maxOps

    def record(self, kind: str, ok: bool, message: str = "") -> None:
        with self.lock:
            if ok:
                self.done[kind] += 1
            else:
                self.failed[kind] += 1
                if len(self.messages) < 10:
                    self.messages.append(f"{kind}: {message.strip()[-500:]}")

    def load(self, workers: int, watched: Daemon, tracer: Tracer) -> float:
        """
        C{workers} clients until the deadline or the operation limit, with
        progress lines (and a midway snapshot) about C{watched}; returns the
        seconds the load ran.
        """
        began = time.monotonic()
        stop = threading.Event()
        threading.Thread(
            target=progress, args=(self, began, 60, stop, watched), daemon=True
        ).start()
        half = (self.deadline - began) / 2
        halfway = threading.Thread(target=tracer.midway, args=(watched, half, stop), daemon=True)
        halfway.start()
        threads = [
            threading.Thread(target=self.worker, args=(i,), daemon=True) for i in range(workers)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stop.set()
        halfway.join()
        return time.monotonic() - began

    def worker(self, index: int) -> None:
        rng = random.Random(index)
        home = self.base / f"worker{index}"
        home.mkdir()
        clone = home / "clone"
        self.git.run("clone", "-q", self.url, str(clone))
        kinds = list(MIX)
        weights = [MIX[k] for k in kinds]
        n = 0
        while self.running():
            kind = rng.choices(kinds, weights)[0]
            n += 1
            try:
                ok, message = getattr(self, kind.replace("-", "_"))(home, clone, index, n)
            except Exception as e:  # a hung git (timeout) is a failure too
                ok, message = False, repr(e)
            self.record(kind, ok, message)

    def _run(self, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
        result = self.git.run(*args, cwd=cwd, check=False, env=env, timeout=300)
        return result.returncode == 0, result.stderr

    def clone_v2(self, home: Path, clone: Path, index: int, n: int) -> tuple[bool, str]:
        target = home / f"c{n}"
        ok, message = self._run("-c", "protocol.version=2", "clone", "-q", self.url, str(target))
        if ok:
            ok, message = self._run("fsck", "--connectivity-only", cwd=target)
        shutil.rmtree(target, ignore_errors=True)
        return ok, message

    def clone_v0(self, home: Path, clone: Path, index: int, n: int) -> tuple[bool, str]:
        target = home / f"c{n}"
        ok, message = self._run("-c", "protocol.version=0", "clone", "-q", self.url, str(target))
        shutil.rmtree(target, ignore_errors=True)
        return ok, message

    def fetch(self, home: Path, clone: Path, index: int, n: int) -> tuple[bool, str]:
        return self._run("fetch", "-q", "origin", cwd=clone)

    def ls_remote(self, home: Path, clone: Path, index: int, n: int) -> tuple[bool, str]:
        return self._run("ls-remote", self.url)

    def push_branch(self, home: Path, clone: Path, index: int, n: int) -> tuple[bool, str]:
        # Each worker's branch only moves forward (no force push): a
        # stateless (v0/v1) clone that saw the old tip may still ask for it,
        # as git allows for any commit reachable from a ref.
        branch = f"worker{index}"
        if not self._run("checkout", "-q", branch, cwd=clone)[0]:
            self._run("checkout", "-q", "-b", branch, cwd=clone)
        self.git.commit(clone, f"w{index}/f{n % 50}.txt", f"{index} {n} {os.urandom(8).hex()}\n")
        return self._run("push", "-q", "origin", f"HEAD:refs/heads/{branch}", cwd=clone)

    def push_shared(self, home: Path, clone: Path, index: int, n: int) -> tuple[bool, str]:
        message = ""
        ok, message = self._run("fetch", "-q", "origin", "main", cwd=clone)
        if not ok:
            return ok, message
        self._run("checkout", "-q", "-B", "shared", "FETCH_HEAD", cwd=clone)
        self.git.commit(clone, f"shared/w{index}.txt", f"{index} {n}\n")
        for _ in range(SHARED_RETRIES):
            ok, message = self._run("push", "-q", "origin", "HEAD:main", cwd=clone)
            if ok:
                return True, ""
            ok, message = self._run("pull", "-q", "--rebase", "origin", "main", cwd=clone)
            if not ok:
                return False, message
        return False, "never got in: " + message


def snapshot(daemon: Daemon, settle: float = 30) -> tuple[int, int, int]:
    """RSS (bytes), open descriptors and children, once git children settled."""
    daemon.settledChildren(settle)
    return daemon.rss(), daemon.openFds(), len(daemon.children())


def setUp(git: GitClient, base: Path) -> Path:
    """A served root holding project.git: 200 small commits and a 2 MB blob."""
    work = base / "seed"
    git.run("init", "-q", str(work))
    (work / "blob.bin").write_bytes(random.Random(0).randbytes(2 * 1024 * 1024))
    git.run("add", "blob.bin", cwd=work)
    for i in range(200):
        (work / f"file{i % 20}.txt").write_text(f"line {i}\n" * (i % 7 + 1))
        git.run("add", ".", cwd=work)
        git.run("commit", "-q", "-m", f"seed {i}", cwd=work)
    root = base / "srv"
    git.bare(root / "project.git", http__receivepack="true")
    git.run("push", "-q", str(root / "project.git"), "main", cwd=work)
    return root


class RollingRestarts:
    """
    Restarts replicas 1..N-1 in turn, one every C{every} seconds, while the
    load runs; replica 0 stays up the whole run. Each run of a restarted
    replica is measured just before it stops.
    """

    def __init__(self, replicas: list[Replica], balancer: LoadBalancer, every: float) -> None:
        self.replicas = replicas
        self.balancer = balancer
        self.every = every
        self.stopping = threading.Event()
        self.runs: list[tuple[int, tuple[int, int, int], tuple[int, int, int], int | None]] = []
        self.starts: dict[int, tuple[int, int, int]] = {}
        self.restarts = 0

    def run(self) -> None:
        turn = 0
        candidates = list(range(1, len(self.replicas))) or [0]
        while not self.stopping.wait(self.every):
            index = candidates[turn % len(candidates)]
            turn += 1
            replica = self.replicas[index]
            assert replica.daemon is not None
            end = snapshot(replica.daemon, settle=5)
            began = time.monotonic()
            code = replica.stop()
            self.runs.append((index, self.starts[index], end, code))
            replica.start()
            self.balancer.waitHealthy()
            assert replica.daemon is not None
            self.starts[index] = snapshot(replica.daemon, settle=0)
            self.restarts += 1
            print(
                f"[{time.strftime('%H:%M:%S')}] restarted replica {index} "
                f"(exit {code}, back in {time.monotonic() - began:.1f} s)",
                flush=True,
            )


def progress(
    soak: Soak, began: float, every: float, stop: threading.Event, watched: Daemon
) -> None:
    """A line now and then, so a long run shows how far it got and how C{watched} grows."""
    while not stop.wait(every):
        with soak.lock:
            done, failed = sum(soak.done.values()), sum(soak.failed.values())
        print(
            f"[{time.strftime('%H:%M:%S')}] {time.monotonic() - began:.0f} s: "
            f"{done} operations, {failed} failed; RSS {watched.rss() / 2**20:.1f} MiB",
            flush=True,
        )


class Tracer:
    """The long-lived daemon's tracemalloc snapshots, when the soak asks for them."""

    def __init__(self, base: Path, enabled: bool) -> None:
        self.directory = base / "tracemalloc"
        self.enabled = enabled
        self.taken: list[memorytrace.tracemalloc.Snapshot] = []

    @property
    def prelude(self) -> str:
        return memorytrace.PRELUDE if self.enabled else ""

    @property
    def env(self) -> dict[str, str]:
        if not self.enabled:
            return {}
        self.directory.mkdir(exist_ok=True)
        # The tracer is imported from this checkout by the daemon.
        checkout = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(filter(None, [checkout, os.environ.get("PYTHONPATH")]))
        return {memorytrace.DIRECTORY: str(self.directory), "PYTHONPATH": path}

    def snapshot(self, daemon: Daemon) -> None:
        if self.enabled:
            self.taken.append(memorytrace.request(daemon.pid, self.directory, len(self.taken) + 1))

    def midway(self, daemon: Daemon, after: float, stop: threading.Event) -> None:
        """
        A snapshot half way through too: a leak grows in both halves of the
        run, caches and free lists filling up only in the first.
        """
        if self.enabled and not stop.wait(after):
            self.snapshot(daemon)

    def report(self) -> None:
        if len(self.taken) == 3:
            start, middle, end = self.taken
            print("first half of the run:")
            print("\n".join(memorytrace.growth(start, middle)))
            print("second half of the run:")
            print("\n".join(memorytrace.growth(middle, end)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients")
    parser.add_argument("--max-ops", type=int, default=100_000, help="stop after this many")
    parser.add_argument(
        "--replicas", type=int, default=0, help="run N replicas behind HAProxy (0: one daemon)"
    )
    parser.add_argument(
        "--restart-every", type=float, default=0, help="with --replicas: restart one every S s"
    )
    parser.add_argument(
        "--tracemalloc",
        action="store_true",
        help="trace the long-lived daemon's Python allocations and print what grew",
    )
    args = parser.parse_args()
    if args.replicas:
        return mainReplicas(args)

    base = Path(tempfile.mkdtemp(prefix="gitserve-soak-"))
    try:
        git = GitClient(base / "home")
        root = setUp(git, base)
        tracer = Tracer(base, args.tracemalloc)
        daemon = startDaemon(root, prelude=tracer.prelude, env=tracer.env)
        try:
            # Warm-up: the first clone and push build caches and the
            # reactor's child-signal pipe; growth is measured from here.
            url = daemon.url("project.git")
            soak = Soak(url, git, base, time.monotonic() + args.duration, args.max_ops)
            warm = base / "warm"
            warm.mkdir()
            soak.clone_v2(warm, warm, 0, 0)
            soak.push_branch(warm, base / "seed", 99, 0)
            startRss, startFds, startChildren = snapshot(daemon)
            tracer.snapshot(daemon)
            elapsed = soak.load(args.workers, daemon, tracer)
            endRss, endFds, endChildren = snapshot(daemon)
            tracer.snapshot(daemon)
            fsck = git.run("fsck", "--full", cwd=root / "project.git", check=False)
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    total = sum(soak.done.values())
    failures = sum(soak.failed.values())
    print(f"soak: {args.workers} workers, {elapsed:.0f} s, loopback")
    print(f"operations: {total} ({total / elapsed:.1f}/s)")
    for kind in MIX:
        print(f"  {kind:12} {soak.done[kind]:6} ok  {soak.failed[kind]:4} failed")
    print(f"failures: {failures}")
    for message in soak.messages:
        print(f"  {message}")
    print(f"server RSS: start {startRss / 2**20:.1f} MiB, end {endRss / 2**20:.1f} MiB")
    print(f"server open fds: start {startFds}, end {endFds}")
    print(f"git children: start {startChildren}, end {endChildren}")
    tracer.report()
    print(f"fsck after: {'clean' if fsck.returncode == 0 else fsck.stderr.strip()}")
    bad = failures or endFds > startFds or endChildren or fsck.returncode
    return 1 if bad else 0


def measure(replicas: list[Replica], tracer: Tracer) -> dict[int, tuple[int, int, int]]:
    """Every replica's figures (see L{snapshot}), and the long-lived one's tracemalloc snapshot."""
    figures = {}
    for index, replica in enumerate(replicas):
        assert replica.daemon is not None
        figures[index] = snapshot(replica.daemon)
    assert replicas[0].daemon is not None
    tracer.snapshot(replicas[0].daemon)
    return figures


def mainReplicas(args: argparse.Namespace) -> int:
    """The soak through HAProxy against C{args.replicas} replicas of one root."""
    base = Path(tempfile.mkdtemp(prefix="gitserve-soak-"))
    restarts: RollingRestarts | None = None
    try:
        git = GitClient(base / "home")
        root = setUp(git, base)
        tracer = Tracer(base, args.tracemalloc)
        replicas = [Replica(root, freePort(), ()) for _ in range(args.replicas)]
        # Replica 0 is never restarted: the one whose memory spans the run.
        replicas[0].prelude, replicas[0].env = tracer.prelude, tracer.env
        balancer, replicas = balance(replicas)
        try:
            soak = Soak(
                balancer.url("project.git"),
                git,
                base,
                time.monotonic() + args.duration,
                args.max_ops,
            )
            warm = base / "warm"
            warm.mkdir()
            for _ in replicas:
                soak.clone_v2(warm, warm, 0, 0)
                soak.push_branch(warm, base / "seed", 99, 0)
            starts = measure(replicas, tracer)
            restarter = None
            if args.restart_every > 0:
                restarts = RollingRestarts(replicas, balancer, args.restart_every)
                restarts.starts = dict(starts)
                restarter = threading.Thread(target=restarts.run, daemon=True)
                restarter.start()
            assert replicas[0].daemon is not None
            elapsed = soak.load(args.workers, replicas[0].daemon, tracer)
            if restarts is not None and restarter is not None:
                restarts.stopping.set()
                restarter.join()
            ends = measure(replicas, tracer)
            fsck = git.run("fsck", "--full", cwd=root / "project.git", check=False)
        finally:
            for replica in replicas:
                replica.stop()
            balancerLog = balancer.haproxyLog()
            balancer.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)

    total = sum(soak.done.values())
    failures = sum(soak.failed.values())
    print(
        f"soak: {args.workers} workers, {elapsed:.0f} s, HAProxy + {args.replicas} replicas, "
        f"{restarts.restarts if restarts else 0} rolling restarts"
    )
    print(f"operations: {total} ({total / elapsed:.1f}/s)")
    for kind in MIX:
        print(f"  {kind:12} {soak.done[kind]:6} ok  {soak.failed[kind]:4} failed")
    print(f"failures: {failures}")
    for message in soak.messages:
        print(f"  {message}")
    # HAProxy logs only what went wrong (option dontlog-normal).
    errors = [
        line for line in balancerLog.splitlines() if " HTTP/1" in line and " /-/health " not in line
    ]
    if errors:
        print("HAProxy's unusual requests (last 20):")
        for entry in errors[-20:]:
            print(f"  {entry}")
    grew = False

    def line(label: str, start: tuple[int, int, int], end: tuple[int, int, int]) -> None:
        print(
            f"  {label}: RSS {start[0] / 2**20:.1f} -> {end[0] / 2**20:.1f} MiB, "
            f"fds {start[1]} -> {end[1]}, git children {start[2]} -> {end[2]}"
        )

    print("replicas (start of run -> end of run):")
    for index, start, end, code in restarts.runs if restarts else []:
        line(f"replica {index} (a run ended by restart, exit {code})", start, end)
    finalStarts = restarts.starts if restarts else starts
    for index in range(args.replicas):
        line(
            f"replica {index} (last run{', whole soak' if index == 0 else ''})",
            finalStarts[index],
            ends[index],
        )
        grew = grew or ends[index][1] > finalStarts[index][1] or ends[index][2] > 0
    tracer.report()
    print(f"fsck after: {'clean' if fsck.returncode == 0 else fsck.stderr.strip()}")
    return 1 if failures or grew or fsck.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
