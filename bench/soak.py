"""
Soak: a mixed load of clones, fetches, ls-remotes and pushes against one
gitserve on loopback, for a bounded time and a bounded number of operations.

    PYTHONPATH=. python bench/soak.py --duration 600 --workers 4

It prints the operations done by kind, the failures (the goal is 0) with the
first few messages, and the daemon's RSS and open descriptors after warm-up
and at the end (they must not grow). Exit status 1 when anything failed or
the daemon's descriptors or children grew.

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

from tests.conftest import Daemon, GitClient, startDaemon  # noqa: E402

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

    def __init__(self, daemon: Daemon, git: GitClient, base: Path, deadline: float, maxOps: int):
        self.daemon = daemon
        self.git = git
        self.base = base
        self.deadline = deadline
        self.maxOps = maxOps
        self.done: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.messages: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.daemon.url("project.git")

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


def snapshot(daemon: Daemon) -> tuple[int, int, int]:
    """RSS (bytes), open descriptors and children, once git children settled."""
    daemon.settledChildren(30)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients")
    parser.add_argument("--max-ops", type=int, default=100_000, help="stop after this many")
    args = parser.parse_args()

    base = Path(tempfile.mkdtemp(prefix="gitserve-soak-"))
    try:
        git = GitClient(base / "home")
        root = setUp(git, base)
        daemon = startDaemon(root)
        try:
            # Warm-up: the first clone and push build caches and the
            # reactor's child-signal pipe; growth is measured from here.
            soak = Soak(daemon, git, base, time.monotonic() + args.duration, args.max_ops)
            warm = base / "warm"
            warm.mkdir()
            soak.clone_v2(warm, warm, 0, 0)
            soak.push_branch(warm, base / "seed", 99, 0)
            startRss, startFds, startChildren = snapshot(daemon)
            began = time.monotonic()
            threads = [
                threading.Thread(target=soak.worker, args=(i,), daemon=True)
                for i in range(args.workers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            elapsed = time.monotonic() - began
            endRss, endFds, endChildren = snapshot(daemon)
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
    print(f"fsck after: {'clean' if fsck.returncode == 0 else fsck.stderr.strip()}")
    bad = failures or endFds > startFds or endChildren or fsck.returncode
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
