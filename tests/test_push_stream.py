"""
Streamed push, with fakes: the body reaches git's stdin while it arrives,
the connection stops being read while git's stdin is backed up, and refusals
are decided from the headers before a body byte is read.
"""

from __future__ import annotations

import gzip
import io
import os
import tracemalloc
from pathlib import Path

import pytest
from twisted.internet.interfaces import IProcessTransport, IReactorProcess
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.testing import MemoryReactor
from zope.interface.verify import verifyObject

from gitserve.core.process import TERM_GRACE
from gitserve.http.body import INFLATE_STEP
from gitserve.twistedinternals import PIPE_READ_SIZE, _PipeReader
from tests.fakes import (
    PIPE_CAPACITY,
    FakeProcessReactor,
    FakeProcessTransport,
    SiteHarness,
    makeRepository,
)

RECEIVE_HEADERS = (
    b"POST /repo.git/git-receive-pack HTTP/1.1\r\n"
    b"Host: example\r\n"
    b"Content-Type: application/x-git-receive-pack-request\r\n"
)


def makeSite(root: Path, config: str, maxPushSize: int | None = None) -> SiteHarness:
    """A site serving repo.git with C{config}, whose git children have real pipe capacity."""
    makeRepository(root / "repo.git", config)
    site = SiteHarness(root, reactor=FakeProcessReactor(pipeCapacity=PIPE_CAPACITY))
    if maxPushSize is not None:
        site.context.maxPushSize = maxPushSize
    return site


@pytest.fixture
def site(tmp_path: Path) -> SiteHarness:
    """A site serving repo.git, which takes anonymous pushes."""
    return makeSite(tmp_path, "[http]\n\treceivepack = true\n")


def chunked(data: bytes, size: int) -> bytes:
    """C{data} in HTTP chunks of C{size} bytes, with the final chunk."""
    out = [
        b"%x\r\n%s\r\n" % (len(data[i : i + size]), data[i : i + size])
        for i in range(0, len(data), size)
    ]
    return b"".join(out) + b"0\r\n\r\n"


def test_fakesProvideInterfaces() -> None:
    """The fakes provide the interfaces the code under test uses them through."""
    verifyObject(IReactorProcess, FakeProcessReactor())
    verifyObject(IProcessTransport, FakeProcessTransport(None, [], {}, "/"))


def drainThrough(site: SiteHarness, pieces: list[bytes]) -> None:
    """
    Feed C{pieces} one by one, letting the child read whenever the server
    stopped reading, as the kernel would; assert the server never reads while
    git's stdin is backed up.
    """
    process = site.child
    for piece in pieces:
        while site.transport.producerState == "paused":
            assert process.unread > 0 or process.producer is None
            process.readStdin()
        site.send(piece)
    process.readStdin()


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_pushStreamsWithBackPressure(site: SiteHarness, framing: str) -> None:
    """A push body reaches git's stdin as it arrives, and git's pace stops the reading."""
    data = os.urandom(1024 * 1024)
    if framing == "chunked":
        headers = RECEIVE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n"
        wire = chunked(data, 16 * 1024)
    else:
        headers = RECEIVE_HEADERS + b"Content-Length: %d\r\n\r\n" % len(data)
        wire = data
    site.send(headers)
    process = site.child
    assert process.args[1:3] == ["receive-pack", "--stateless-rpc"]
    # git is running before a byte of the body was sent, and the server reads.
    assert process.stdin == b""
    assert site.transport.producerState == "producing"

    pieces = [wire[i : i + 8192] for i in range(0, len(wire), 8192)]
    site.send(pieces[0])
    assert len(process.stdin) > 0, "the first piece waits for nothing"
    paused = 0
    for piece in pieces[1:]:
        if site.transport.producerState == "paused":
            paused += 1
            # Backed up: the pipe holds more than its high-water mark, and
            # the server holds nothing beyond it.
            assert process.unread > PIPE_CAPACITY
            process.readStdin()
            assert site.transport.producerState == "producing"
        site.send(piece)
    process.readStdin()
    assert paused > 0, "git's stdin never pushed back"
    assert process.largestUnread <= PIPE_CAPACITY + 16 * 1024 + 8192
    assert bytes(process.stdin) == data
    assert process.stdinClosed

    process.protocol.outReceived(b"0030\x01000eunpack ok\n0019ok refs/heads/main\n00000000")
    process.exit(0)
    response = site.transport.value()
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: application/x-git-receive-pack-result" in response
    assert response.endswith(b"0\r\n\r\n"), "a chunked response, properly ended"


def test_gzipInflatesInBoundedStepsUnderBackPressure(site: SiteHarness) -> None:
    """A gzip body is inflated only as fast as git reads: a bomb never sits in memory."""
    data = b"\0" * (32 * 1024 * 1024)
    compressed = gzip.compress(data)
    assert len(compressed) < 64 * 1024
    site.send(
        RECEIVE_HEADERS + b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(compressed)
    )
    process = site.child
    # The whole compressed body in one read: 32 MiB once inflated.
    site.send(compressed)
    assert site.transport.producerState == "paused"
    assert process.unread <= PIPE_CAPACITY + INFLATE_STEP
    rounds = 0
    while not process.stdinClosed:
        rounds += 1
        assert process.unread <= PIPE_CAPACITY + INFLATE_STEP
        process.readStdin()
    assert rounds > 100
    assert len(process.stdin) == len(data)
    assert bytes(process.stdin) == data


def test_gzipChunkedPush(site: SiteHarness) -> None:
    """A chunked, gzip-encoded push body arrives at git inflated and whole."""
    data = os.urandom(256 * 1024) * 4
    compressed = gzip.compress(data)
    site.send(RECEIVE_HEADERS + b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
    wire = chunked(compressed, 10000)
    drainThrough(site, [wire[i : i + 4096] for i in range(0, len(wire), 4096)])
    assert bytes(site.child.stdin) == data
    assert site.child.stdinClosed


def test_brokenGzipEndsTheChild(site: SiteHarness) -> None:
    """A body that is not gzip ends git and gets 400, never a success."""
    site.send(RECEIVE_HEADERS + b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n")
    site.send(chunked(b"this is not gzip at all", 64))
    process = site.child
    # git first sees its input end (so it can clean up on its own), and gets
    # SIGTERM only if it is still there after the grace.
    assert process.stdinClosed and process.stdin == b""
    assert process.signals == []
    site.reactor.advance(TERM_GRACE)
    assert process.signals == ["TERM"]
    process.exit(143)
    assert site.transport.value().startswith(b"HTTP/1.1 400 ")


def test_declaredSizeAboveLimitRefusedFromHeaders(tmp_path: Path) -> None:
    """A declared Content-Length above --max-push-size gets 413 before any body byte."""
    site = makeSite(tmp_path, "[http]\n\treceivepack = true\n", maxPushSize=1000)
    site.send(RECEIVE_HEADERS + b"Content-Length: 1001\r\n\r\n")
    assert site.reactor.spawned == []
    assert site.transport.value().startswith(b"HTTP/1.1 413 ")
    # The connection is still read, to drop the body and stay in step.
    assert site.transport.producerState == "producing"
    site.send(b"x" * 1001)
    assert not site.transport.disconnecting


def test_disabledServiceRefusedFromHeaders(tmp_path: Path) -> None:
    """http.receivepack=false gets 403 from the headers, and git never starts."""
    site = makeSite(tmp_path, "[http]\n\treceivepack = false\n")
    site.send(RECEIVE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n")
    assert site.reactor.spawned == []
    assert site.transport.value().startswith(b"HTTP/1.1 403 ")


def test_refusalTakesNoContinue(tmp_path: Path) -> None:
    """A refused request with Expect: 100-continue is answered without "100 Continue"."""
    site = makeSite(tmp_path, "[http]\n\treceivepack = false\n")
    site.send(RECEIVE_HEADERS + b"Expect: 100-continue\r\nContent-Length: 10\r\n\r\n")
    response = site.transport.value()
    assert response.startswith(b"HTTP/1.1 403 ")
    assert b"100 Continue" not in response
    # The client sends no body; the connection closes after the answer.
    assert site.transport.disconnecting


def test_continueSentWhenTheBodyIsRead(site: SiteHarness) -> None:
    """An accepted push gets "100 Continue" once git is there to take the body."""
    site.send(RECEIVE_HEADERS + b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n")
    assert site.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    site.send(b"0000")
    assert site.child.stdin == b"0000"


def test_drainingWritesDoNotResumeAPausedBody(site: SiteHarness) -> None:
    """The channel's writes draining does not resume reading a body git is not taking."""
    site.send(RECEIVE_HEADERS + b"Content-Length: %d\r\n\r\n" % (1024 * 1024))
    site.send(b"x" * (PIPE_CAPACITY + 1))
    assert site.transport.producerState == "paused"
    # The transport's write buffer filled and drained (git wrote progress).
    site.channel.pauseProducing()
    site.channel.resumeProducing()
    assert site.transport.producerState == "paused"
    site.child.readStdin()
    assert site.transport.producerState == "producing"


def test_childClosingStdinEndsTheExchange(site: SiteHarness) -> None:
    """git giving up on its stdin mid-body ends in an error, and the rest is dropped."""
    site.send(RECEIVE_HEADERS + b"Content-Length: %d\r\n\r\n" % (200 * 1024))
    site.send(b"x" * (PIPE_CAPACITY + 1))
    process = site.child
    process.protocol.errReceived(b"fatal: the remote end hung up\n")
    process.closeStdinFromChild()
    process.exit(128)
    response = site.transport.value()
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert b"ERR fatal: the remote end hung up" in response
    # The rest of the body is read and dropped, within the discard limit.
    assert site.transport.producerState == "producing"
    site.send(b"x" * (200 * 1024 - PIPE_CAPACITY - 1))
    assert not site.transport.disconnecting


def test_pushLargerThanLimitWhileStreaming(tmp_path: Path) -> None:
    """A chunked push that grows past --max-push-size ends git and gets 413."""
    site = makeSite(tmp_path, "[http]\n\treceivepack = true\n", maxPushSize=10000)
    site.send(RECEIVE_HEADERS + b"Transfer-Encoding: chunked\r\n\r\n")
    site.send(chunked(b"y" * 20000, 4000)[:-5])
    process = site.child
    assert len(process.stdin) <= 10000
    assert process.stdinClosed
    site.reactor.advance(TERM_GRACE)
    assert process.signals == ["TERM"]
    process.exit(143)
    assert site.transport.value().startswith(b"HTTP/1.1 413 ")


def test_uploadPackGzipBombStopsAtTheCap(tmp_path: Path) -> None:
    """A gzip negotiation inflating past its cap is refused, with memory bounded by the cap."""
    site = makeSite(tmp_path, "[http]\n\tmaxRequestBuffer = 1m\n")
    compressed = gzip.compress(b"0" * (16 * 1024 * 1024))
    tracemalloc.start()
    try:
        site.send(
            b"POST /repo.git/git-upload-pack HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-git-upload-pack-request\r\n"
            b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(compressed)
        )
        site.send(compressed)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert site.reactor.spawned == []
    assert site.transport.value().startswith(b"HTTP/1.1 413 ")
    assert peak < 8 * 1024 * 1024, f"peak {peak / 2**20:.1f} MiB while refusing"


def test_gitIsSpawnedWithoutAWorkingDirectory(site: SiteHarness) -> None:
    """git gets the repository as an absolute argument and no chdir, so Twisted can posix_spawn."""
    site.send(RECEIVE_HEADERS + b"Content-Length: 4\r\n\r\n")
    assert site.child.path is None
    assert site.child.args[-1].startswith("/") and site.child.args[-1].endswith("repo.git")


def test_gitOutputIsReadInLargePieces() -> None:
    """git's stdout is read a pipe's capacity at a time, not Twisted's 8 KiB."""

    class Collecting:
        def __init__(self) -> None:
            self.pieces: list[bytes] = []

        def childDataReceived(self, name: int, data: bytes) -> None:
            self.pieces.append(data)

    readEnd, writeEnd = os.pipe()
    try:
        os.write(writeEnd, b"p" * PIPE_READ_SIZE)
        os.close(writeEnd)
        writeEnd = -1
        process = Collecting()
        reader = _PipeReader(MemoryReactor(), process, 1, readEnd)
        assert reader.doRead() is None
        assert [len(p) for p in process.pieces] == [PIPE_READ_SIZE]
        assert reader.doRead() is CONNECTION_DONE
    finally:
        os.close(readEnd)
        if writeEnd >= 0:
            os.close(writeEnd)


@pytest.mark.parametrize("framing", [b"Transfer-Encoding: chunked", b"Content-Length: 500000"])
def test_streamedPostOpensNoSpoolFile(site: SiteHarness, framing: bytes) -> None:
    """A streamed POST gets no temporary file for its body (Twisted spools big ones to one)."""
    site.send(RECEIVE_HEADERS + framing + b"\r\n\r\n")
    [request] = site.channel.requests
    assert isinstance(request.content, io.BytesIO)
    site.send(b"5\r\nhello\r\n" if b"chunked" in framing else b"hello")
    assert request.content.getvalue() == b""
    assert site.child.stdin == b"hello"


def test_completeBodyNoLongerHoldsTheNetwork(site: SiteHarness) -> None:
    """A body that arrived whole while git was backed up leaves the connection to the channel."""
    body = b"x" * (PIPE_CAPACITY + 10)
    site.send(RECEIVE_HEADERS + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    [request] = site.channel.requests
    assert request.body.complete
    assert site.child.unread > PIPE_CAPACITY, "git is still backed up"
    assert not request.body.holdsNetwork()
    site.child.readStdin()
    assert site.child.stdinClosed
    assert bytes(site.child.stdin) == body
