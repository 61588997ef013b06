"""
The push body's splice (gitserve.http.inbound) on a real loopback socket
and a real pipe, with the reactor played by hand on a memory clock: chunks
reach the pipe and the body's counts, Twisted's decoder reads on where the
splice stopped, wakeups are batched with SO_RCVLOWAT (and a size line half
there waits for its next byte, not for the bytes already there), and a full
pipe holds the body until half of it is free.
"""

from __future__ import annotations

import fcntl
import os
import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.process import ProcessWriter
from twisted.internet.testing import MemoryReactorClock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gitserve.http.body import RequestBody
from gitserve.http.channel import GitChannel, GitRequest, GitSite
from gitserve.http.inbound import (
    BATCH,
    BATCH_DELAY,
    MAX_ROOM_WAIT,
    InboundSplice,
    spliceInbound,
)
from tests.fakes import CLIENT, tcpPair

HEAD = (
    b"POST /push.git/git-receive-pack HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/x-git-receive-pack-request\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


class _Holding(Resource):
    """Keeps each request unanswered, as a push being streamed is."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[GitRequest] = []

    def render_POST(self, request: GitRequest) -> object:
        self.requests.append(request)
        return NOT_DONE_YET


class Pushing:
    """
    A GitChannel on our end of a real TCP connection, its POST's body
    streamed into a real pipe's writer (git's stdin), spliced.
    """

    def __init__(self, pipeSize: int = 1024 * 1024, limit: int = 1 << 30) -> None:
        self.clock = MemoryReactorClock()
        resource = _Holding()
        site = GitSite(resource, reactor=self.clock)
        ours, self.peer = tcpPair()
        ours.setblocking(False)
        self.channel: GitChannel = site.buildProtocol(CLIENT)
        self.server = tcp.Server(ours, self.channel, ("127.0.0.1", 1), None, 1, self.clock)
        self.channel.makeConnection(self.server)
        self.peer.sendall(HEAD)
        self.read()
        [request] = resource.requests
        assert request.body is not None
        self.body: RequestBody = request.body
        self.body.setLimit(limit)
        self.readEnd, writeEnd = os.pipe()
        os.set_blocking(self.readEnd, False)
        fcntl.fcntl(writeEnd, fcntl.F_SETPIPE_SZ, pipeSize)
        self.stdin = ProcessWriter(self.clock, type("Git", (), {})(), 0, writeEnd)
        self.done = self.body.streamTo(self.stdin)
        splice = spliceInbound(
            self.channel, self.body, type("Process", (), {"pipes": {0: self.stdin}})(), self.clock
        )
        assert isinstance(splice, InboundSplice)
        self.splice = splice

    def read(self) -> None:
        """The reactor found the socket readable."""
        assert self.server.doRead() is None

    def fromPipe(self) -> bytes:
        """What git would read from its stdin now."""
        data = b""
        while True:
            try:
                piece = os.read(self.readEnd, 1 << 20)
            except BlockingIOError:
                return data
            data += piece

    def mark(self) -> int:
        return self.server.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)

    def reading(self) -> bool:
        return self.server in self.clock.readers

    def close(self) -> None:
        self.peer.close()
        self.server.socket.close()
        os.close(self.readEnd)
        os.close(self.stdin.fd)


@pytest.fixture
def pushing() -> Iterator[Pushing]:
    made = Pushing()
    yield made
    made.close()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def test_chunksGoToThePipeAndAreCounted(pushing: Pushing) -> None:
    """git's 8 KiB chunks: their bytes, and only those, in git's pipe; the body counts them."""
    payload = os.urandom(5 * 8192 + 100)
    pieces = [payload[i : i + 8192] for i in range(0, len(payload), 8192)]
    pushing.peer.sendall(b"".join(chunk(piece) for piece in pieces))
    pushing.read()
    assert pushing.fromPipe() == payload
    assert pushing.body.received == pushing.body.spliced == len(payload)


def test_twistedReadsOnWhereTheSpliceStopped(pushing: Pushing) -> None:
    """The last chunk is left to Twisted, whose decoder ends the body where the splice left it."""
    pushing.peer.sendall(chunk(b"a" * 3000) + chunk(b"b" * 10) + b"0\r\n\r\n")
    ended: list[int] = []
    pushing.done.addCallback(ended.append)
    pushing.read()
    assert pushing.body.spliced == 3010 and not ended
    pushing.read()
    assert ended == [3010] and pushing.body.complete
    assert pushing.fromPipe() == b"a" * 3000 + b"b" * 10


def test_aChunkArrivingInPiecesIsSplicedAsItComes(pushing: Pushing) -> None:
    """Half a chunk is moved; the decoder is told how much of it is still to come."""
    data = os.urandom(20000)
    pushing.peer.sendall(b"%x\r\n" % len(data) + data[:7000])
    pushing.read()
    assert pushing.splice.position.chunkLeft() == 13000
    pushing.peer.sendall(data[7000:] + b"\r\n")
    pushing.read()
    assert pushing.fromPipe() == data
    assert pushing.splice.position.beforeSizeLine() == b"\r\n"


def test_anEmptySocketBatchesTheNextWakeup(pushing: Pushing) -> None:
    """Everything moved: woken again at BATCH bytes, or BATCH_DELAY later by any."""
    pushing.peer.sendall(b"2000\r\n" + b"x" * 8192)
    pushing.read()
    assert pushing.mark() == BATCH
    pushing.clock.advance(BATCH_DELAY)
    assert pushing.mark() == 1


def test_halfASizeLineWaitsForItsNextByte(pushing: Pushing) -> None:
    """
    A chunk's CRLF and part of the next size line: after the batch, woken
    by one byte more than is there (not by the bytes there, again and again).
    """
    pushing.peer.sendall(chunk(b"x" * 8192) + b"1f")
    pushing.read()
    assert pushing.body.spliced == 8192
    pushing.clock.advance(BATCH_DELAY)
    assert pushing.mark() == len(b"\r\n1f") + 1
    pushing.peer.sendall(b"40\r\n" + b"y" * 0x1F40 + b"\r\n")
    pushing.read()
    assert pushing.body.spliced == 8192 + 0x1F40
    assert pushing.fromPipe() == b"x" * 8192 + b"y" * 0x1F40


def test_aFullPipeHoldsTheBodyUntilHalfOfItIsFree() -> None:
    """
    git's pipe full: the connection is not read while more than half the
    pipe is still full, looked at after 1 ms, then 2, 4 ... up to 16; once
    git has read enough, reading goes on, and everything arrives.
    """
    pushing = Pushing(pipeSize=4096)
    try:
        payload = os.urandom(64 * 1024)
        pushing.peer.sendall(chunk(payload))
        pushing.read()
        assert not pushing.reading()
        for waited in (BATCH_DELAY, 2 * BATCH_DELAY, 4 * BATCH_DELAY):
            pushing.clock.advance(waited)
            assert not pushing.reading(), f"resumed with the pipe full after {waited}s more"
        got = pushing.fromPipe()
        pushing.clock.advance(8 * BATCH_DELAY)
        assert pushing.reading()
        while len(got) < len(payload):
            pushing.read()
            got += pushing.fromPipe()
            pushing.clock.advance(MAX_ROOM_WAIT)
        assert got == payload
        assert pushing.body.spliced == len(payload)
    finally:
        pushing.close()


def test_aChunkPastTheCapIsLeftToTwistedToRefuse() -> None:
    """The body's cap leaves no room for the next chunk: Twisted reads its size line and refuses."""
    pushing = Pushing(limit=10000)
    try:
        failures: list[object] = []
        pushing.done.addErrback(failures.append)
        pushing.peer.sendall(chunk(b"a" * 8000) + chunk(b"b" * 8000))
        pushing.read()
        assert pushing.body.spliced == 8000 and not failures
        pushing.read()
        assert pushing.body.overLimit and failures
        assert pushing.fromPipe() == b"a" * 8000
    finally:
        pushing.close()


@pytest.mark.parametrize(
    "sent",
    [b"", b"2000\r\n" + b"x" * 8192 + b"\r\n1f"],
    ids=["before-the-body", "inside-a-size-line"],
)
def test_theClientClosingIsSeen(pushing: Pushing, sent: bytes) -> None:
    """
    The client closes, before a byte of the body or inside a size line: the
    read that follows reports the end (Twisted's, which ends the request),
    rather than the splice waiting on for the rest of the size line.
    """
    pushing.peer.sendall(sent)
    if sent:
        pushing.read()
        pushing.clock.advance(BATCH_DELAY)
    pushing.peer.shutdown(socket.SHUT_WR)
    for _ in range(3):
        why = pushing.server.doRead()
        if why is not None:
            break
        pushing.clock.advance(BATCH_DELAY)
    assert why is not None, "the end of the connection was not seen"
