"""
git's output spliced to the socket (gitserve.http.relay), end to end with
the real daemon: used on plain TCP, not over TLS, not with --no-splice (a
pack cache lead's goes into its file instead, gitserve.core.pipefile); and
with it on, a slow reader pauses git with flat memory, a client that leaves
ends git, and a git killed mid-pack aborts the connection. The rest of the
end-to-end suite runs with it on as well.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest

from gitserve.core.packcache import FLIGHT_PIPE_SIZE
from gitserve.core.process import MAX_SHORT_ANSWER
from gitserve.twistedinternals import PIPE_READ_SIZE
from tests.conftest import (
    SPLICING,
    Daemon,
    GitClient,
    bigRepository,
    spliceOn,
    startDaemon,
    startUploadPack,
)
from tests.test_e2e_smart import uploadPackRequest
from tests.test_packcache_e2e import daemonHome, settle, settleDaemon

MiB = 1024 * 1024

# The operation line of an upload-pack of big.git, and what of it was relayed.
FETCH_LINE = re.compile(
    r"git git-upload-pack repo=big\.git .*bytes_out=(\d+) .*transport=http"
    r"(?: relayed=(\d+))?$"
)


def fetchLines(daemon: Daemon, expected: int = 1, timeout: float = 15.0) -> list[tuple[int, int]]:
    """
    (bytes_out, relayed) of each big.git fetch that sent a pack (not the
    ls-refs of a v2 clone), once C{expected} are logged.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = [FETCH_LINE.search(line.rstrip("\n")) for line in daemon.lines]
        matches = [(int(m[1]), int(m[2] or 0)) for m in found if m and int(m[1]) > MiB]
        if len(matches) >= expected or time.monotonic() > deadline:
            return matches
        time.sleep(0.05)


def readUntilClosed(sock: socket.socket, timeout: float = 60.0) -> bytes:
    """Everything the daemon sends until it closes (or resets) the connection."""
    sock.settimeout(timeout)
    data = bytearray()
    while True:
        try:
            piece = sock.recv(MiB)
        except ConnectionResetError:
            return bytes(data)
        if not piece:
            return bytes(data)
        data += piece


@pytest.fixture
def big(git: GitClient, root: Path, tmp_path: Path) -> str:
    """root/big.git with 24 MB of incompressible data; its commit."""
    return bigRepository(git, root, tmp_path / "big", 24)


@spliceOn
def test_cloneOnPlainTcpIsSpliced(git: GitClient, root: Path, big: str, serve, tmp_path) -> None:
    """On plain TCP all but the answer's first bytes are relayed; the clone is whole."""
    daemon = serve(root)
    git.run("clone", "-q", "--bare", daemon.url("big.git"), str(tmp_path / "clone.git"))
    git.run("fsck", "--full", cwd=tmp_path / "clone.git")
    [(bytesOut, relayed)] = fetchLines(daemon)
    assert bytesOut > 24 * MiB
    # What came through outReceived: the short answer, and at most the one
    # read that took it past MAX_SHORT_ANSWER.
    assert bytesOut - MAX_SHORT_ANSWER - PIPE_READ_SIZE <= relayed <= bytesOut


def test_noSpliceWritesEverythingThroughTwisted(
    git: GitClient, root: Path, big: str, serve, tmp_path: Path
) -> None:
    """--no-splice: the same clone, nothing relayed."""
    daemon = serve(root, "--no-splice")
    git.run("clone", "-q", "--bare", daemon.url("big.git"), str(tmp_path / "clone.git"))
    git.run("fsck", "--full", cwd=tmp_path / "clone.git")
    [(bytesOut, relayed)] = fetchLines(daemon)
    assert bytesOut > 24 * MiB and relayed == 0


def test_tlsFallsBack(
    git: GitClient, root: Path, big: str, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Over TLS the socket carries records, not git's bytes: nothing relayed, the clone is whole."""
    from tests.certs import makeSelfSigned

    key, cert = makeSelfSigned(tmp_path)
    daemon = startDaemon(root, listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
    daemons.append(daemon)
    url = f"https://localhost:{daemon.port}/big.git"
    git.run(
        "clone", "-q", "--bare", url, str(tmp_path / "clone.git"), env={"GIT_SSL_CAINFO": str(cert)}
    )
    git.run("fsck", "--full", cwd=tmp_path / "clone.git")
    [(bytesOut, relayed)] = fetchLines(daemon)
    assert bytesOut > 24 * MiB and relayed == 0


@pytest.mark.parametrize("splice", [pytest.param(True, marks=spliceOn), False], ids=["on", "off"])
def test_packCacheLeadIsSplicedIntoItsFile(
    git: GitClient, root: Path, big: str, tmp_path: Path, daemons: list[Daemon], splice: bool
) -> None:
    """
    A cache lead's git output goes from its pipe into the flight's file with
    splice(2), all but its first bytes; the clones are whole, and so is the
    entry kept from the second ask, which the third is served from (its
    checksum covers every byte at its offset). --no-splice: nothing relayed.
    """
    settle(root)
    home = daemonHome(tmp_path)
    args = ["--pack-cache", str(tmp_path / "cache")] + ([] if splice else ["--no-splice"])
    daemon = startDaemon(root, *args, home=home)
    daemons.append(daemon)
    settleDaemon(home)
    for ask in range(3):
        clone = tmp_path / f"clone{ask}.git"
        git.run("clone", "-q", "--bare", daemon.url("big.git"), str(clone))
        git.run("fsck", "--full", cwd=clone)
    assert daemon.waitForLog("cache=hit"), daemon.log
    leads = [
        FETCH_LINE.search(line.rstrip("\n"))
        for line in daemon.lines
        if "repo=big.git" in line and "cache=lead" in line
    ]
    assert len(leads) == 2, daemon.log
    for lead in leads:
        assert lead is not None
        bytesOut, relayed = int(lead[1]), int(lead[2] or 0)
        assert bytesOut > 24 * MiB
        if splice:
            # What came through write: the short answer, and at most the one
            # read (a flight's pipe holds FLIGHT_PIPE_SIZE) that took it past.
            assert bytesOut - MAX_SHORT_ANSWER - FLIGHT_PIPE_SIZE <= relayed <= bytesOut
        else:
            assert relayed == 0


def test_slowReaderPausesGitWithFlatMemory(root: Path, big: str, serve) -> None:
    """A client that stops reading pauses the relay and git: RSS flat, git waits, all arrives."""
    daemon = serve(root)
    baseline = daemon.rss()
    sock = startUploadPack(daemon, uploadPackRequest([big]))
    received = sock.recv(MiB)
    peak = baseline
    for _ in range(12):
        time.sleep(0.25)
        peak = max(peak, daemon.rss())
    assert peak - baseline < 16 * MiB, (baseline, peak)
    assert daemon.children(), "git finished although nobody read its pack"
    received += readUntilClosedOrEnded(sock)
    sock.close()
    assert received.endswith(b"0\r\n\r\n")
    [(bytesOut, relayed)] = fetchLines(daemon)
    assert bytesOut > 24 * MiB and (relayed > 20 * MiB) == SPLICING


def readUntilClosedOrEnded(sock: socket.socket) -> bytes:
    """The rest of a chunked answer on a kept-alive connection: up to its last chunk."""
    sock.settimeout(60)
    data = bytearray()
    while not data.endswith(b"0\r\n\r\n"):
        piece = sock.recv(MiB)
        if not piece:
            break
        data += piece
    return bytes(data)


def packUnderWay(daemon: Daemon, big: str) -> socket.socket:
    """A fetch of big.git whose pack is being relayed: 2 MiB of it read."""
    sock = startUploadPack(daemon, uploadPackRequest([big]))
    got = 0
    while got < 2 * MiB:
        got += len(sock.recv(MiB))
    return sock


def test_clientLeavingMidPackEndsGit(root: Path, big: str, serve) -> None:
    """A client that goes away while the pack is relayed ends its git; nothing is left."""
    daemon = serve(root)
    sock = packUnderWay(daemon, big)
    sock.close()
    assert not daemon.settledChildren(), "upload-pack outlived its client"
    [(_, relayed)] = fetchLines(daemon)
    assert (relayed > 0) == SPLICING


def test_gitKilledMidPackAbortsTheConnection(root: Path, big: str, serve) -> None:
    """git dying while its pack is relayed: the client sees a cut connection, no last chunk."""
    daemon = serve(root)
    sock = packUnderWay(daemon, big)
    for pid in daemon.startedChildren():
        os.kill(pid, signal.SIGKILL)
    rest = readUntilClosed(sock)
    sock.close()
    assert not rest.endswith(b"0\r\n\r\n"), "a cut-off pack was ended as complete"
    [(bytesOut, relayed)] = fetchLines(daemon)
    assert (relayed > 0) == SPLICING and bytesOut < 24 * MiB
