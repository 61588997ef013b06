"""
Streamed push, with fakes: the body reaches git's stdin while it arrives,
the connection stops being read while git's stdin is backed up, and refusals
are decided from the headers before a body byte is read.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from gitserve.body import INFLATE_STEP
from gitserve.policy import Policy
from gitserve.repository import ConfigCache
from gitserve.service import GitBackend
from gitserve.web import GitServer, GitSite, RootResource
from tests.fakes import PIPE_HIGH_WATER, FakeProcess, FakeProcessReactor, connect

RECEIVE_HEADERS = (
    b"POST /repo.git/git-receive-pack HTTP/1.1\r\n"
    b"Host: example\r\n"
    b"Content-Type: application/x-git-receive-pack-request\r\n"
)


def makeRepository(root: Path, name: str, config: str = "") -> Path:
    """A minimal git directory (what resolution checks for) with C{config}."""
    gitDir = root / name
    (gitDir / "objects").mkdir(parents=True)
    (gitDir / "refs").mkdir()
    (gitDir / "HEAD").write_text("ref: refs/heads/main\n")
    (gitDir / "config").write_text(config)
    return gitDir


class Harness:
    """A real GitSite over fakes: no sockets, no processes."""

    def __init__(self, root: Path, maxPushSize: int = 2 * 1024**3) -> None:
        self.reactor = FakeProcessReactor()
        self.clock = MemoryReactorClock()
        configs = ConfigCache()
        self.server = GitServer(
            root=root.resolve(),
            policy=Policy(configs=configs),
            backend=GitBackend(reactor=self.reactor, gitPath="/usr/bin/git"),
            clock=self.clock,
            configs=configs,
            maxPushSize=maxPushSize,
        )
        self.site = GitSite(RootResource(self.server), reactor=self.clock)
        self.channel, self.transport = connect(self.site)

    @property
    def process(self) -> FakeProcess:
        [process] = self.reactor.processes
        return process

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    """A site serving repo.git, which takes anonymous pushes."""
    makeRepository(tmp_path, "repo.git", "[http]\n\treceivepack = true\n")
    return Harness(tmp_path)


def chunked(data: bytes, size: int) -> bytes:
    """C{data} in HTTP chunks of C{size} bytes, with the final chunk."""
    out = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    ]
    return b"".join(out) + b"0\r\n\r\n"


def test_fakesProvideInterfaces() -> None:
    """The fakes provide the interfaces the code under test uses them through."""
    reactor = FakeProcessReactor()
    verifyObject(IReactorProcess, reactor)
    verifyObject(IProcessTransport, FakeProcess(None, [], {}, None))  # type: ignore[arg-type]


def drainThrough(harness: Harness, pieces: list[bytes]) -> None:
    """
    Feed C{pieces} one by one, letting the child read whenever the server
    stopped reading, as the kernel would; assert the server never reads while
    git's stdin is backed up.
    """
    process = harness.process
    for piece in pieces:
        while harness.transport.producerState == "paused":
            assert process.unread > 0 or process.producer is None
            process.readStdin()
        harness.send(piece)
    process.readStdin()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_pushStreamsWithBackPressure(harness: Harness, framing: str) -> None:
    """A push body reaches git's stdin as it arrives, and git's pace stops the reading."""
    data = os.urandom(1024 * 1024)
    if framing == "chunked":
        headers = RECEIVE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n"
        wire = chunked(data, 16 * 1024)
    else:
        headers = RECEIVE_HEADERS + b"Content-Length: %d\r\n\r\n" % len(data)
        wire = data
    harness.send(headers)
    process = harness.process
    assert process.args[1:3] == ["receive-pack", "--stateless-rpc"]
    # git is running before a byte of the body was sent, and the server reads.
    assert process.stdin == b""
    assert harness.transport.producerState == "producing"

    pieces = [wire[i : i + 8192] for i in range(0, len(wire), 8192)]
    harness.send(pieces[0])
    assert len(process.stdin) > 0, "the first piece waits for nothing"
    paused = 0
    for piece in pieces[1:]:
        if harness.transport.producerState == "paused":
            paused += 1
            # Backed up: the pipe holds more than its high-water mark, and
            # the server holds nothing beyond it.
            assert process.unread > PIPE_HIGH_WATER
            process.readStdin()
            assert harness.transport.producerState == "producing"
        harness.send(piece)
    process.readStdin()
    assert paused > 0, "git's stdin never pushed back"
    assert process.largestUnread <= PIPE_HIGH_WATER + 16 * 1024 + 8192
    assert bytes(process.stdin) == data
    assert process.stdinClosed

    process.output(b"0030\x01000eunpack ok\n0019ok refs/heads/main\n00000000")
    process.exit(0)
    response = harness.transport.value()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/x-git-receive-pack-result" in response
    assert response.endswith(b"0\r\n\r\n"), "a chunked response, properly ended"


def test_gzipInflatesInBoundedStepsUnderBackPressure(harness: Harness) -> None:
    """A gzip body is inflated only as fast as git reads: a bomb never sits in memory."""
    data = b"\0" * (32 * 1024 * 1024)
    compressed = gzip.compress(data)
    assert len(compressed) < 64 * 1024
    harness.send(
        RECEIVE_HEADERS + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(compressed)
    )
    process = harness.process
    # The whole compressed body in one read: 32 MiB once inflated.
    harness.send(compressed)
    assert harness.transport.producerState == "paused"
    assert process.unread <= PIPE_HIGH_WATER + INFLATE_STEP
    rounds = 0
    while not process.stdinClosed:
        rounds += 1
        assert process.unread <= PIPE_HIGH_WATER + INFLATE_STEP
        process.readStdin()
    assert rounds > 100
    assert len(process.stdin) == len(data)
    assert bytes(process.stdin) == data


def test_gzipChunkedPush(harness: Harness) -> None:
    """A chunked, gzip-encoded push body arrives at git inflated and whole."""
    data = os.urandom(256 * 1024) * 4
    compressed = gzip.compress(data)
    harness.send(RECEIVE_HEADERS + b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
    wire = chunked(compressed, 10000)
    drainThrough(harness, [wire[i : i + 4096] for i in range(0, len(wire), 4096)])
    assert bytes(harness.process.stdin) == data
    assert harness.process.stdinClosed


def test_brokenGzipEndsTheChild(harness: Harness) -> None:
    """A body that is not gzip ends git and gets 400, never a success."""
    harness.send(RECEIVE_HEADERS + b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
    harness.send(chunked(b"this is not gzip at all", 64))
    process = harness.process
    assert process.signals == ["TERM"]
    assert not process.stdinClosed or process.stdin == b""
    process.exit(143)
    assert harness.transport.value().startswith(b"HTTP/1.1 400 ")


def test_declaredSizeAboveLimitRefusedFromHeaders(tmp_path: Path) -> None:
    """A declared Content-Length above --max-push-size gets 413 before any body byte."""
    makeRepository(tmp_path, "repo.git", "[http]\n\treceivepack = true\n")
    harness = Harness(tmp_path, maxPushSize=1000)
    harness.send(RECEIVE_HEADERS + b"Content-Length: 1001\r\n\r\n")
    assert harness.reactor.processes == []
    assert harness.transport.value().startswith(b"HTTP/1.1 413 ")
    # The connection is still read, to drop the body and stay in step.
    assert harness.transport.producerState == "producing"
    harness.send(b"x" * 1001)
    assert not harness.transport.disconnecting


def test_disabledServiceRefusedFromHeaders(tmp_path: Path) -> None:
    """http.receivepack=false gets 403 from the headers, and git never starts."""
    makeRepository(tmp_path, "repo.git", "[http]\n\treceivepack = false\n")
    harness = Harness(tmp_path)
    harness.send(RECEIVE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n")
    assert harness.reactor.processes == []
    assert harness.transport.value().startswith(b"HTTP/1.1 403 ")


def test_refusalTakesNoContinue(tmp_path: Path) -> None:
    """A refused request with Expect: 100-continue is answered without "100 Continue"."""
    makeRepository(tmp_path, "repo.git", "[http]\n\treceivepack = false\n")
    harness = Harness(tmp_path)
    harness.send(RECEIVE_HEADERS + b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n")
    response = harness.transport.value()
    assert response.startswith(b"HTTP/1.1 403 ")
    assert b"100 Continue" not in response
    # The client sends no body; the connection closes after the answer.
    assert harness.transport.disconnecting


def test_continueSentWhenTheBodyIsRead(harness: Harness) -> None:
    """An accepted push gets "100 Continue" once git is there to take the body."""
    harness.send(RECEIVE_HEADERS + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert harness.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    harness.send(b"0000")
    assert harness.process.stdin == b"0000"


def test_drainingWritesDoNotResumeAPausedBody(harness: Harness) -> None:
    """The channel's writes draining does not resume reading a body git is not taking."""
    harness.send(RECEIVE_HEADERS + b"Content-Length: %d\r\n\r\n" % (1024 * 1024))
    harness.send(b"x" * (PIPE_HIGH_WATER + 1))
    assert harness.transport.producerState == "paused"
    # The transport's write buffer filled and drained (git wrote progress).
    harness.channel.pauseProducing()
    harness.channel.resumeProducing()
    assert harness.transport.producerState == "paused"
    harness.process.readStdin()
    assert harness.transport.producerState == "producing"


def test_childClosingStdinEndsTheExchange(harness: Harness) -> None:
    """git giving up on its stdin mid-body ends in an error, and the rest is dropped."""
    harness.send(RECEIVE_HEADERS + b"Content-Length: %d\r\n\r\n" % (200 * 1024))
    harness.send(b"x" * (PIPE_HIGH_WATER + 1))
    process = harness.process
    process.error(b"fatal: the remote end hung up\n")
    process.closeStdinFromChild()
    process.exit(128)
    response = harness.transport.value()
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert b"ERR fatal: the remote end hung up" in response
    # The rest of the body is read and dropped, within the discard limit.
    assert harness.transport.producerState == "producing"
    harness.send(b"x" * (200 * 1024 - PIPE_HIGH_WATER - 1))
    assert not harness.transport.disconnecting


def test_pushLargerThanLimitWhileStreaming(tmp_path: Path) -> None:
    """A chunked push that grows past --max-push-size ends git and gets 413."""
    makeRepository(tmp_path, "repo.git", "[http]\n\treceivepack = true\n")
    harness = Harness(tmp_path, maxPushSize=10000)
    harness.send(RECEIVE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n")
    harness.send(chunked(b"y" * 20000, 4000)[:-5])
    process = harness.process
    assert len(process.stdin) <= 10000
    assert process.signals == ["TERM"]
    process.exit(143)
    assert harness.transport.value().startswith(b"HTTP/1.1 413 ")
