"""
A chunked push body spliced from the socket into git's stdin
(gitserve.http.inbound), end to end with the real daemon: used for git's
own chunked pushes on plain TCP; not with --no-splice, not for a gzip body,
a Content-Length body or TLS; right with any chunking a client may send
(size lines split across reads, extensions, one-byte chunks); and with it
on, the body's cap, a client that leaves and a client that stalls or
trickles end the push as they do without it.
"""

from __future__ import annotations

import gzip
import re
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import SPLICING, Daemon, GitClient, freePort, spliceOn, startDaemon
from tests.rawhttp import (
    LAST_CHUNK,
    RECEIVE_PACK_REQUEST,
    endlessPack,
    pushCommands,
    streamUntilAnswered,
)
from tests.test_push_e2e import randomCommit, rawRequest, receivePackRequest
from tests.test_push_stream import chunked
from tests.test_slow_peers import closedWithin, trickle

MiB = 1024 * 1024

# The operation line of a push over HTTP, and what of its body was spliced.
PUSH_LINE = re.compile(
    r"git git-receive-pack repo=push\.git .*bytes_in=(\d+) .*transport=http"
    r"(?: relayed=\d+)?(?: spliced_in=(\d+))?$"
)

PUSH_HEAD = (
    b"POST /push.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: " + RECEIVE_PACK_REQUEST.encode() + b"\r\n"
    b"Transfer-Encoding: chunked\r\n"
)


def pushLine(daemon: Daemon, timeout: float = 15.0) -> tuple[int, int]:
    """
    (bytes_in, spliced_in) of the push logged, once it is; not git's probe
    before a chunked push (a lone flush packet, 4 bytes).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = [PUSH_LINE.search(line.rstrip("\n")) for line in daemon.lines]
        matches = [(int(m[1]), int(m[2] or 0)) for m in found if m and int(m[1]) > 4]
        if matches or time.monotonic() > deadline:
            assert len(matches) == 1, daemon.log
            return matches[0]
        time.sleep(0.05)


@pytest.fixture
def bare(git: GitClient, root: Path) -> Path:
    """root/push.git, empty."""
    return git.bare(root / "push.git")


def assertLanded(git: GitClient, bare: Path, head: str) -> None:
    assert git.output("--git-dir", str(bare), "rev-parse", "refs/heads/main") == head
    git.run("--git-dir", str(bare), "fsck", "--no-dangling", "--no-progress")


def gitPush(git: GitClient, daemon: Daemon, work: Path, postBuffer: str = "1m", **env: str) -> None:
    git.run(
        "-c", f"http.postBuffer={postBuffer}", "push", "-q", daemon.url("push.git"), "main",
        cwd=work, env=env or None, timeout=300,
    )  # fmt: skip


def pushRequest(git: GitClient, tmp_path: Path, megabytes: int) -> tuple[str, bytes]:
    """A push request creating main with C{megabytes} of new data: (the new head, the body)."""
    work = tmp_path / "work"
    head = randomCommit(git, work, megabytes)
    return head, receivePackRequest(git, work, "refs/heads/main")


@spliceOn
def test_chunkedPushIsSpliced(git: GitClient, root: Path, bare: Path, serve, tmp_path) -> None:
    """git's own chunked push: all but its first bytes go by splice(2); it lands whole."""
    daemon = serve(root, "--anonymous-push")
    head = randomCommit(git, tmp_path / "work", 24)
    gitPush(git, daemon, tmp_path / "work")
    assertLanded(git, bare, head)
    bytesIn, spliced = pushLine(daemon)
    assert bytesIn > 24 * MiB
    # Through Twisted: what arrived before git started, and size lines
    # split across reads.
    assert bytesIn - MiB <= spliced <= bytesIn


@pytest.mark.parametrize(
    ("options", "postBuffer"),
    [
        # Everything through Twisted, by choice.
        pytest.param(("--no-splice",), "1m", id="no-splice"),
        # A body that fits http.postBuffer comes with a Content-Length.
        pytest.param((), "64m", id="content-length"),
    ],
)
def test_pushIsReadByTwisted(
    git: GitClient,
    root: Path,
    bare: Path,
    serve,
    tmp_path,
    options: tuple[str, ...],
    postBuffer: str,
) -> None:
    """With --no-splice, or framed by a Content-Length: the same push, nothing spliced."""
    daemon = serve(root, "--anonymous-push", *options)
    head = randomCommit(git, tmp_path / "work", 4)
    gitPush(git, daemon, tmp_path / "work", postBuffer=postBuffer)
    assertLanded(git, bare, head)
    bytesIn, spliced = pushLine(daemon)
    assert bytesIn > 4 * MiB and spliced == 0


def test_gzipPushIsInflatedNotSpliced(
    git: GitClient, root: Path, bare: Path, serve, tmp_path
) -> None:
    """A gzip body must be inflated: chunked on plain TCP, still nothing spliced."""
    daemon = serve(root, "--anonymous-push")
    head, body = pushRequest(git, tmp_path, 4)
    answer = rawRequest(
        daemon,
        PUSH_HEAD + b"Content-Encoding: gzip\r\nConnection: close\r\n\r\n",
        chunked(gzip.compress(body), 30000),
    )
    assert b"ok refs/heads/main" in answer, answer[:300]
    assertLanded(git, bare, head)
    assert pushLine(daemon) == (len(body), 0)


def test_tlsPushIsNotSpliced(
    git: GitClient, root: Path, bare: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Over TLS the socket carries records, not the body: nothing spliced, the push lands."""
    from tests.certs import makeSelfSigned

    key, cert = makeSelfSigned(tmp_path)
    daemon = startDaemon(
        root,
        "--anonymous-push",
        listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}",
    )
    daemons.append(daemon)
    work = tmp_path / "work"
    head = randomCommit(git, work, 4)
    url = f"https://localhost:{daemon.port}/push.git"
    git.run(
        "-c", "http.postBuffer=1m", "push", "-q", url, "main",
        cwd=work, env={"GIT_SSL_CAINFO": str(cert)},
    )  # fmt: skip
    assertLanded(git, bare, head)
    bytesIn, spliced = pushLine(daemon)
    assert bytesIn > 4 * MiB and spliced == 0


def test_proxyProtocolPushIsNotSpliced(
    git: GitClient, root: Path, bare: Path, tmp_path: Path, daemons: list[Daemon]
) -> None:
    """Behind a haproxy: listener the transport is the PROXY protocol's wrapper: nothing spliced."""
    daemon = startDaemon(
        root, "--anonymous-push", listen=f"haproxy:tcp:{freePort()}:interface=127.0.0.1"
    )
    daemons.append(daemon)
    head, body = pushRequest(git, tmp_path, 4)
    answer = rawRequest(
        daemon,
        b"PROXY TCP4 192.0.2.1 127.0.0.1 40000 80\r\n" + PUSH_HEAD + b"Connection: close\r\n\r\n",
        chunked(body, 8192),
    )
    assert b"ok refs/heads/main" in answer, answer[:300]
    assertLanded(git, bare, head)
    assert pushLine(daemon) == (len(body), 0)


def oddChunks(body: bytes) -> bytes:
    """
    C{body} chunked as no git does: sizes from one byte to 100 KB, upper
    and lower case hex, leading zeros, and an extension now and then.
    """
    sizes = [1, 7, 8192, 100_000, 3, 65536, 4095, 30_000]
    pieces = []
    offset = 0
    for index in range(len(body)):
        if offset >= len(body):
            break
        size = sizes[index % len(sizes)]
        data = body[offset : offset + size]
        offset += size
        line = b"%X" % len(data) if index % 3 else b"00%x" % len(data)
        if index % 5 == 4:
            line += b";name=value"
        pieces.append(line + b"\r\n" + data + b"\r\n")
    return b"".join(pieces) + LAST_CHUNK


def sendInPieces(sock: socket.socket, data: bytes, piece: int) -> None:
    """
    Send C{data} in segments of C{piece} bytes, a pause now and then, so
    that size lines are cut between the daemon's reads.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for index, offset in enumerate(range(0, len(data), piece)):
        sock.sendall(data[offset : offset + piece])
        if index % 4 == 0:
            time.sleep(0.002)


def test_anyChunkingLands(git: GitClient, root: Path, bare: Path, serve, tmp_path) -> None:
    """Size lines split across reads, extensions, tiny chunks: the push lands byte for byte."""
    daemon = serve(root, "--anonymous-push")
    head, body = pushRequest(git, tmp_path, 3)
    with socket.create_connection((daemon.host, daemon.port), timeout=30) as sock:
        sock.sendall(PUSH_HEAD + b"Connection: close\r\n\r\n")
        # Prime-sized segments cut size lines at every offset in turn.
        sendInPieces(sock, oddChunks(body), 4093)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    assert b"ok refs/heads/main" in answer, answer[:300]
    assertLanded(git, bare, head)
    bytesIn, spliced = pushLine(daemon)
    assert bytesIn == len(body)
    if SPLICING:
        assert spliced > len(body) // 2


def test_bodyPastTheCapIsRefused(git: GitClient, root: Path, bare: Path, serve) -> None:
    """Chunks each under the cap, together past it: 413 at the cap, and the daemon serves on."""
    daemon = serve(root, "--anonymous-push", "--max-push-size", "4m")
    commands = pushCommands("0" * 40, "1" * 40, "refs/heads/main")
    pack = endlessPack(objectSize=64 * MiB)
    outcome = streamUntilAnswered(
        daemon.host,
        daemon.port,
        PUSH_HEAD + b"\r\n",
        iter([commands, *(next(pack) for _ in range(1000))]),
    )
    assert outcome.response.status == 413, outcome.response
    assert b"exceeds the limit" in outcome.response.body
    # What it read is bounded by the cap (plus what was in flight).
    assert outcome.sent < 4 * MiB + 8 * MiB
    bytesIn, spliced = pushLine(daemon)
    # (Counting the piece that went past it, which git never got.)
    assert bytesIn <= 4 * MiB + 256 * 1024
    if SPLICING:
        assert spliced > MiB
    git.run("ls-remote", daemon.url("push.git"))
    assert not daemon.settledChildren()
    assert list((bare / "refs" / "heads").iterdir()) == []


def startBody(daemon: Daemon, git: GitClient, tmp_path: Path, sent: int) -> socket.socket:
    """A push whose body stops C{sent} bytes into its one big chunk, once git reads it."""
    _, body = pushRequest(git, tmp_path, 8)
    sock = socket.create_connection((daemon.host, daemon.port), timeout=30)
    sock.sendall(PUSH_HEAD + b"\r\n" + b"%x\r\n" % len(body) + body[:sent])
    assert daemon.startedChildren(5), "receive-pack did not start"
    return sock


def test_clientLeavingMidBodyEndsGit(
    git: GitClient, root: Path, bare: Path, serve, tmp_path
) -> None:
    """The client goes mid-chunk: git is ended, nothing lands, the daemon serves on."""
    daemon = serve(root, "--anonymous-push")
    sock = startBody(daemon, git, tmp_path, 4 * MiB)
    time.sleep(0.5)
    sock.close()
    assert not daemon.settledChildren(), "receive-pack outlived its client"
    assert list((bare / "refs" / "heads").iterdir()) == []
    assert not list((bare / "objects").glob("incoming-*"))
    git.run("ls-remote", daemon.url("push.git"))


@pytest.mark.parametrize("how", ["stalled", "trickled"])
def test_slowBodyMidChunkIsCut(
    git: GitClient, root: Path, bare: Path, serve, tmp_path, how: str
) -> None:
    """
    A chunked body that stops, or trickles a byte at a time, in the middle
    of a chunk is cut by the idle timer or the body rate, and git is ended.
    """
    daemon = serve(root, "--anonymous-push", "--idle-timeout", "1")
    sock = startBody(daemon, git, tmp_path, 2 * MiB)
    with sock:
        if how == "stalled":
            assert closedWithin(sock, 10) is not None, "the server kept waiting on a silent body"
        else:
            assert not trickle(sock, b"x" * 100, 0.5, 20), "the server kept a trickled body"
    assert not daemon.settledChildren(), "receive-pack outlived its connection"
    assert list((bare / "refs" / "heads").iterdir()) == []


def cpuTicks(daemon: Daemon) -> int:
    """The daemon's user and system CPU so far, in clock ticks."""
    fields = Path(f"/proc/{daemon.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_waitingForASizeLineCostsNothing(
    git: GitClient, root: Path, bare: Path, serve, tmp_path
) -> None:
    """
    A chunk's CRLF and half its next size line, then a pause: the daemon
    waits for the rest without spinning (it is woken by more bytes, not by
    the ones it has), and the push lands once they come.
    """
    daemon = serve(root, "--anonymous-push")
    head, body = pushRequest(git, tmp_path, 2)
    half = len(body) // 2
    with socket.create_connection((daemon.host, daemon.port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(PUSH_HEAD + b"Connection: close\r\n\r\n")
        sock.sendall(b"%x\r\n%s\r\n%x" % (half, body[:half], len(body) - half))
        assert daemon.startedChildren(5), "receive-pack did not start"
        time.sleep(0.3)
        before = cpuTicks(daemon)
        time.sleep(1.0)
        idle = cpuTicks(daemon) - before
        sock.sendall(b"\r\n" + body[half:] + b"\r\n" + LAST_CHUNK)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    # A daemon polling its socket all along would spend the whole second.
    assert idle <= 10, f"{idle} ticks of CPU in a second of waiting"
    assert b"ok refs/heads/main" in answer, answer[:300]
    assertLanded(git, bare, head)
    assert pushLine(daemon)[0] == len(body)


def test_connectionServesOnAfterASplicedPush(
    git: GitClient, root: Path, bare: Path, serve, tmp_path
) -> None:
    """After a spliced push, the same connection answers its next request at once."""
    daemon = serve(root, "--anonymous-push")
    head, body = pushRequest(git, tmp_path, 4)
    with socket.create_connection((daemon.host, daemon.port), timeout=30) as sock:
        sock.sendall(PUSH_HEAD + b"\r\n" + chunked(body, 8192))
        answer = b""
        while b"0\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        assert b"ok refs/heads/main" in answer, answer[:300]
        sock.sendall(b"GET /-/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        began = time.monotonic()
        health = b""
        while piece := sock.recv(65536):
            health += piece
        elapsed = time.monotonic() - began
    assert health.startswith(b"HTTP/1.1 200"), health[:200]
    assert elapsed < 1.0
    assertLanded(git, bare, head)
    bytesIn, spliced = pushLine(daemon)
    assert bytesIn == len(body)
    if SPLICING:
        assert spliced > len(body) // 2
