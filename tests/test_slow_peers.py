"""
Slow and dead peers: headers that trickle, a body that trickles, a reader
that stops. Each is cut off by the daemon's header deadline or idle/stall
timers, its git child is ended, and no descriptor or process is left; and
hundreds of idle connections do not keep a normal clone from working.

The timers are scaled down through the daemon's own options (seconds instead
of minutes), and each trickle is slower than the timer that must catch it.
"""

from __future__ import annotations

import os
import resource
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import Daemon, GitClient, daemonCommand
from tests.rawhttp import (
    RECEIVE_PACK_REQUEST,
    connect,
    pushCommands,
    readAll,
    request,
    startFetch,
    startPush,
)

IDLE = 1.0
HEADERS = 2.0
TIMER_OPTIONS = ("--idle-timeout", str(int(IDLE)), "--header-timeout", str(int(HEADERS)))


def _hasTimers() -> bool:
    import subprocess

    result = subprocess.run(
        daemonCommand("--help"),
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        timeout=60,
    )
    return "--idle-timeout" in result.stdout and "--header-timeout" in result.stdout


pytestmark = pytest.mark.skipif(
    not _hasTimers(),
    reason="this build has no --idle-timeout/--header-timeout (issue 4's timers)",
)


@pytest.fixture
def big(git: GitClient, root: Path, tmp_path: Path) -> str:
    """project.git holding 8 MB of incompressible data; returns its head."""
    work = tmp_path / "work"
    git.run("init", "-q", str(work))
    (work / "big.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    git.run("add", "big.bin", cwd=work)
    git.run("commit", "-q", "-m", "big", cwd=work)
    git.bare(root / "project.git", http__receivepack="true")
    git.run("push", "-q", str(root / "project.git"), "main", cwd=work)
    return git.output("rev-parse", "HEAD", cwd=work)


@pytest.fixture
def daemon(root: Path, big: str, serve, git: GitClient) -> Daemon:
    """The daemon with its timers scaled to seconds, warmed by one ls-remote."""
    started = serve(root, *TIMER_OPTIONS)
    git.run("ls-remote", started.url("project.git"))
    started.settledChildren()
    return started


def closedWithin(sock: socket.socket, seconds: float) -> float | None:
    """How long until the server closed C{sock} (reading and dropping data), or None."""
    began = time.monotonic()
    sock.settimeout(0.2)
    while time.monotonic() - began < seconds:
        try:
            if not sock.recv(1 << 20):
                return time.monotonic() - began
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - began
    return None


def trickle(sock: socket.socket, data: bytes, interval: float, limit: float) -> bool:
    """Send C{data} a byte every C{interval}; False as soon as the server hung up."""
    deadline = time.monotonic() + limit
    for byte in data:
        if time.monotonic() > deadline:
            return True
        try:
            sock.send(bytes([byte]))
        except OSError:
            return False
        time.sleep(interval)
        sock.setblocking(False)
        try:
            if sock.recv(65536) == b"":
                return False
        except BlockingIOError:
            pass
        except OSError:
            return False
        finally:
            sock.setblocking(True)
    return True


def assertClean(daemon: Daemon, fdsBefore: int) -> None:
    assert not daemon.settledChildren(), "a git child outlived its connection"
    deadline = time.monotonic() + 5
    while daemon.openFds() > fdsBefore and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.openFds() <= fdsBefore


def test_tricklingHeadersAreCut(daemon: Daemon) -> None:
    """Headers sent a byte at a time, each within the idle timeout, hit the header deadline."""
    fdsBefore = daemon.openFds()
    head = request("GET", "/project.git/info/refs?service=git-upload-pack") * 3
    with connect(daemon.host, daemon.port) as sock:
        began = time.monotonic()
        stillOpen = trickle(sock, head, IDLE / 3, HEADERS + 5)
        elapsed = time.monotonic() - began
    assert not stillOpen, "the server kept reading trickled headers"
    assert elapsed < HEADERS + 2
    assertClean(daemon, fdsBefore)


def test_silentHeadersAreCut(daemon: Daemon) -> None:
    """A connection that sends part of its headers and then nothing is dropped."""
    fdsBefore = daemon.openFds()
    with connect(daemon.host, daemon.port) as sock:
        sock.sendall(b"GET /project.git/info/refs?service=git-upload-pack HTTP/1.1\r\nHo")
        assert closedWithin(sock, HEADERS + 3) is not None
    assertClean(daemon, fdsBefore)


def test_tricklingPushBodyIsCutAndItsChildEnded(daemon: Daemon, big: str) -> None:
    """A push body trickled a byte at a time is cut (by the idle timer, or the body rate)."""
    fdsBefore = daemon.openFds()
    first = pushCommands(big, "1" * 40, "refs/heads/slow")[:10]
    headers = {"Content-Type": RECEIVE_PACK_REQUEST, "Content-Length": "100000"}
    with startPush(daemon.host, daemon.port, first, headers) as sock:
        assert daemon.startedChildren(5), "receive-pack did not start"
        # A byte every half idle-timeout: the idle timer never fires, only
        # the minimum body rate can catch it.
        stillOpen = trickle(sock, b"x" * 100, IDLE / 2, 20)
    assert not stillOpen, "the server kept waiting on a trickled body"
    assertClean(daemon, fdsBefore)


def test_pushUnderShortTimersLands(daemon: Daemon, git: GitClient, tmp_path: Path) -> None:
    """The timers cut slow peers only: a normal push of a few MB lands under them."""
    clone = tmp_path / "pusher"
    git.run("clone", "-q", daemon.url("project.git"), str(clone))
    (clone / "more.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    git.run("add", "more.bin", cwd=clone)
    git.run("commit", "-q", "-m", "more", cwd=clone)
    git.run("push", "-q", "origin", "main", cwd=clone)
    assert git.output("ls-remote", daemon.url("project.git"), "main").split()[0] == git.output(
        "rev-parse", "HEAD", cwd=clone
    )


def test_readerThatStopsIsCutAndItsChildEnded(daemon: Daemon, big: str) -> None:
    """A clone that stops reading after 1 MB is dropped by the stall timer; git is ended."""
    fdsBefore = daemon.openFds()
    sock = startFetch(daemon.host, daemon.port, big, 1024 * 1024)
    try:
        assert daemon.children(), "upload-pack already finished: the pack is too small"
        # Stop reading. git fills the pipes and the socket buffers, the
        # daemon pauses it, and the stall timer must end the exchange.
        deadline = time.monotonic() + IDLE + 10
        while daemon.children() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not daemon.children(), "upload-pack kept running for a reader that stopped"
        assert closedWithin(sock, 10) is not None
    finally:
        sock.close()
    assertClean(daemon, fdsBefore)


def test_dumbDownloadThatStopsIsCut(daemon: Daemon, root: Path) -> None:
    """A dumb download (sendfile(2) on plain TCP) whose client stops reading is dropped."""
    content = os.urandom(32 * 1024 * 1024)
    name = "pack-" + "f" * 40 + ".pack"
    (root / "project.git" / "objects" / "pack" / name).write_bytes(content)
    fdsBefore = daemon.openFds()
    with connect(daemon.host, daemon.port) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.sendall(
            b"GET /project.git/objects/pack/%s HTTP/1.1\r\nHost: x\r\n\r\n" % name.encode()
        )
        received = sock.recv(64 * 1024)
        assert received.startswith(b"HTTP/1.1 200")
        # Stop reading: the socket fills, the channel pauses, the stall timer runs.
        assert daemon.waitForLog("client read nothing", timeout=IDLE + 10)
        received += readAll(sock)
    assert len(received) < len(content), "the whole file went to a reader that stopped"
    assertClean(daemon, fdsBefore)


def test_manyIdleConnectionsDoNotBlockAClone(
    daemon: Daemon, git: GitClient, tmp_path: Path
) -> None:
    """500 idle (and half-open) connections: a normal clone still works meanwhile."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    fdsBefore = daemon.openFds()
    idle = []
    try:
        for i in range(500):
            sock = connect(daemon.host, daemon.port)
            if i % 2:
                sock.sendall(b"GET /project.git/info/refs HTTP/1.1\r\n")
            idle.append(sock)
        clone = tmp_path / "clone"
        began = time.monotonic()
        git.run("clone", "-q", daemon.url("project.git"), str(clone), timeout=60)
        assert (clone / "big.bin").stat().st_size == 8 * 1024 * 1024
        assert time.monotonic() - began < 30
    finally:
        for sock in idle:
            sock.close()
    assertClean(daemon, fdsBefore)
