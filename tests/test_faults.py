"""
Faults: clients that die mid-clone and mid-push, and a daemon SIGKILLed
mid-push and started again. Afterwards the repository is whole (fsck), each
ref holds its old or its new value, no lock or quarantine is left, no git
child or descriptor leaks, and the next push succeeds.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient
from tests.rawhttp import startFetch, startPush

BLOB_SIZE = 6 * 1024 * 1024


def leftovers(repo: Path) -> list[Path]:
    """Lock files, quarantine directories and temporary packs under C{repo}."""
    return [
        p
        for p in repo.rglob("*")
        if p.name.endswith(".lock")
        or p.name.startswith(("tmp_objdir", "incoming-", "tmp_pack_", "tmp_idx_", "tmp_obj_"))
    ]


def settledLeftovers(repo: Path, timeout: float = 15.0, locksOnly: bool = False) -> list[Path]:
    """Leftovers once git had time to clean up after itself (it may still be exiting)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = [p for p in leftovers(repo) if p.name.endswith(".lock") or not locksOnly]
        except FileNotFoundError:
            # git removed a directory while the walk was inside it: it is
            # still cleaning up, so look again.
            found = [repo]
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie waiting for its reaper."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


def settledGitOn(repo: Path, timeout: float = 15.0) -> list[int]:
    """
    Pids of git processes still working on C{repo} once none is left, or
    those alive after C{timeout}. A receive-pack orphaned by a killed daemon
    has its whole pack when the body arrived before the kill: it goes on to
    update the refs, as it would after any client's last byte.
    """
    deadline = time.monotonic() + timeout
    while True:
        working = []
        for entry in Path("/proc").iterdir():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.fsencode(repo) in argv and alive(int(entry.name)):
                working.append(int(entry.name))
        if not working or time.monotonic() > deadline:
            return working
        time.sleep(0.05)


def fsckClean(git: GitClient, repo: Path) -> None:
    result = git.run("fsck", "--full", "--strict", cwd=repo, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def hardClose(sock: socket.socket) -> None:
    """Close like a killed process on a full buffer: RST, no goodbye."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.fixture
def big(git: GitClient, root: Path, tmp_path: Path) -> Path:
    """A worktree whose pushed history holds a few MB of incompressible data."""
    work = tmp_path / "work"
    git.run("init", "-q", str(work))
    (work / "big.bin").write_bytes(os.urandom(BLOB_SIZE))
    git.run("add", "big.bin", cwd=work)
    git.run("commit", "-q", "-m", "big", cwd=work)
    git.bare(root / "project.git", http__receivepack="true")
    git.run("push", "-q", str(root / "project.git"), "main", cwd=work)
    return work


def warmedFds(git: GitClient, daemon: Daemon) -> int:
    """
    The daemon's open descriptors after one git child came and went: the
    reactor opens its child-signal pipe at the first spawn, once.
    """
    git.run("ls-remote", daemon.url("project.git"))
    daemon.settledChildren()
    return daemon.openFds()


def nextPushWorks(git: GitClient, daemon: Daemon, work: Path, root: Path) -> None:
    """A real push through the daemon lands after the fault."""
    git.run("fetch", "-q", daemon.url("project.git"), "main", cwd=work)
    git.run("reset", "-q", "--hard", "FETCH_HEAD", cwd=work)
    new = git.commit(work, f"after-{os.urandom(3).hex()}.txt", "after the fault\n")
    git.run("push", "-q", daemon.url("project.git"), "HEAD:main", cwd=work)
    assert git.output("rev-parse", "main", cwd=root / "project.git") == new


@pytest.mark.parametrize("abrupt", [False, True], ids=["close", "reset"])
def test_clientGoneMidClone(git: GitClient, root: Path, big: Path, serve, abrupt: bool) -> None:
    """A client that reads 64 KB of a pack and dies ends its git; no child or fd is left."""
    daemon = serve(root)
    fdsBefore = warmedFds(git, daemon)
    head = git.output("rev-parse", "HEAD", cwd=big)
    for _ in range(3):
        sock = startFetch(daemon.host, daemon.port, head, 64 * 1024)
        if abrupt:
            hardClose(sock)
        else:
            sock.close()
    assert not daemon.settledChildren(), "upload-pack outlived its client"
    assert daemon.settledFds(fdsBefore) <= fdsBefore
    fsckClean(git, root / "project.git")
    clone = root.parent / "clone"
    git.run("clone", "-q", daemon.url("project.git"), str(clone))
    assert (clone / "big.bin").stat().st_size == BLOB_SIZE


def test_realCloneKilled(git: GitClient, root: Path, big: Path, serve) -> None:
    """A git clone SIGKILLed while its pack streams leaves the server clean."""
    daemon = serve(root)
    fdsBefore = warmedFds(git, daemon)
    clone = root.parent / "killed-clone"
    process = subprocess.Popen(
        ["git", "clone", "-q", daemon.url("project.git"), str(clone)],
        env={**git.env, "GIT_TRACE_PACKET": ""},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while not daemon.children() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not daemon.settledChildren()
    assert daemon.settledFds(fdsBefore) <= fdsBefore
    fsckClean(git, root / "project.git")
    git.run("clone", "-q", daemon.url("project.git"), str(root.parent / "clone-after"))


def bigPushBody(git: GitClient, work: Path, ref: str = "refs/heads/main") -> tuple[str, bytes]:
    """A commit holding another few MB, and the push body that would land it."""
    old = git.output("rev-parse", "HEAD", cwd=work)
    (work / "big2.bin").write_bytes(os.urandom(BLOB_SIZE))
    git.run("add", "big2.bin", cwd=work)
    git.run("commit", "-q", "-m", "big2", cwd=work)
    new = git.output("rev-parse", "HEAD", cwd=work)
    git.run("reset", "-q", "--hard", old, cwd=work)
    return new, git.pushBody(work, old, new, ref)


@pytest.mark.parametrize("abrupt", [False, True], ids=["close", "reset"])
def test_clientGoneMidPush(git: GitClient, root: Path, big: Path, serve, abrupt: bool) -> None:
    """A pusher that dies halfway leaves main as it was, no quarantine, no lock, no child."""
    daemon = serve(root)
    repo = root / "project.git"
    old = git.output("rev-parse", "main", cwd=repo)
    new, body = bigPushBody(git, big)
    fdsBefore = warmedFds(git, daemon)
    sock = startPush(daemon.host, daemon.port, body[: len(body) // 2])
    assert daemon.startedChildren(), "receive-pack never started"
    if abrupt:
        hardClose(sock)
    else:
        sock.close()
    assert not daemon.settledChildren(), "receive-pack outlived its client"
    assert settledLeftovers(repo) == []
    assert git.output("rev-parse", "main", cwd=repo) == old
    assert daemon.settledFds(fdsBefore) <= fdsBefore
    fsckClean(git, repo)
    nextPushWorks(git, daemon, big, root)
    assert git.run("cat-file", "-e", new, cwd=repo, check=False).returncode != 0


def test_daemonKilledMidPushThenRestarted(git: GitClient, root: Path, big: Path, serve) -> None:
    """SIGKILL the daemon while a push streams in: after a restart all is clean and pushable."""
    daemon = serve(root)
    repo = root / "project.git"
    old = git.output("rev-parse", "main", cwd=repo)
    _, body = bigPushBody(git, big)
    sock = startPush(daemon.host, daemon.port, body[: len(body) // 2])
    assert daemon.startedChildren(), "receive-pack never started"
    daemon.process.send_signal(signal.SIGKILL)
    daemon.process.wait()
    sock.close()
    # git, orphaned, sees its stdin end and cleans up after itself.
    assert settledGitOn(repo) == [], "orphaned git kept running"
    # No lock survives; a quarantine may (git >= 2.38 leaves it when a
    # signal, here SIGPIPE from the dead daemon's pipes, kills receive-pack).
    assert [p for p in leftovers(repo) if p.name.endswith(".lock")] == []
    assert git.output("rev-parse", "main", cwd=repo) == old
    fsckClean(git, repo)
    restarted = serve(root)
    ageQuarantines(repo)
    fresh = repo / "objects" / "tmp_objdir-incoming-fresh"
    fresh.mkdir()
    nextPushWorks(git, restarted, big, root)
    # The restarted daemon's next push swept what the dead one left, and
    # nothing young enough to belong to a live push.
    deadline = time.monotonic() + 10
    while leftovers(repo) != [fresh] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert leftovers(repo) == [fresh]
    fsckClean(git, repo)


def ageQuarantines(repo: Path, seconds: float = 3600) -> None:
    """Make every quarantine look untouched for C{seconds}, as after a long while."""
    then = time.time() - seconds
    for quarantine in (repo / "objects").glob("tmp_objdir-incoming-*"):
        for path in [quarantine, *quarantine.rglob("*")]:
            os.utime(path, (then, then), follow_symlinks=False)


def test_daemonKilledAtRandomPointsOfMultiRefPushes(
    git: GitClient, root: Path, big: Path, serve
) -> None:
    """Killed at any moment of a 5-ref push, each ref is afterwards old or new, never torn."""
    repo = root / "project.git"
    rng = random.Random(6)
    branches = [f"b{i}" for i in range(5)]
    for branch in branches:
        git.run("push", "-q", str(repo), f"main:refs/heads/{branch}", cwd=big)
    for attempt in range(4):
        daemon = serve(root)
        before = {b: git.output("rev-parse", b, cwd=repo) for b in branches}
        git.run("fetch", "-q", str(repo), *[f"+{b}:refs/remotes/r/{b}" for b in branches], cwd=big)
        after = {}
        for branch in branches:
            git.run("checkout", "-q", "-B", branch, f"refs/remotes/r/{branch}", cwd=big)
            (big / f"{branch}.bin").write_bytes(os.urandom(256 * 1024))
            git.run("add", ".", cwd=big)
            git.run("commit", "-q", "-m", f"{branch} {attempt}", cwd=big)
            after[branch] = git.output("rev-parse", "HEAD", cwd=big)
        push = subprocess.Popen(
            ["git", "push", "-q", daemon.url("project.git"), *branches],
            cwd=big,
            env=git.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.05, 0.6))
        daemon.process.send_signal(signal.SIGKILL)
        daemon.process.wait()
        push.wait(timeout=60)
        assert settledGitOn(repo) == []
        assert settledLeftovers(repo, locksOnly=True) == []
        for branch in branches:
            value = git.output("rev-parse", branch, cwd=repo)
            assert value in (before[branch], after[branch]), (attempt, branch)
        fsckClean(git, repo)
    git.run("checkout", "-q", "main", cwd=big)
    ageQuarantines(repo)
    nextPushWorks(git, serve(root), big, root)
    assert settledLeftovers(repo) == []
