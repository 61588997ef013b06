"""
The relay of git's output with splice(2) (gitserve.http.relay), on a real
pipe and a real socket pair: what reaches the peer is the pipe's bytes as
whole HTTP chunks, a full socket pauses the relay mid-chunk and the channel
with it, the pipe's end hands it back, and a response that must not be
relayed declines.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyChannel
from zope.interface.verify import verifyObject

from gitserve.core.direct import bytesWaiting
from gitserve.http.relay import BATCH_DELAY, MIN_BATCH, RELAY_PIPE_SIZE, PipeRelay
from gitserve.http.smart import SmartResponse
from gitserve.interfaces import IOutputPipe, IPipeOutput
from tests.fakes import FakeOutputPipe, tcpPair


class Connection:
    """A response on a real tcp.Server over one end of a socket pair, and its peer."""

    def __init__(self, chunked: bool = True, buffer: int = 0) -> None:
        ours, self.peer = tcpPair(buffer)
        ours.setblocking(False)
        self.ours = ours
        self.reactor = MemoryReactorClock()
        self.channel = HTTPChannel()
        self.channel.site = Site(Resource())  # type: ignore[attr-defined]
        self.server = tcp.Server(ours, self.channel, ("127.0.0.1", 1), None, 1, self.reactor)
        self.channel.makeConnection(self.server)
        self.request = Request(self.channel)
        self.request.chunked = chunked
        self.readPipe, self.writePipe = os.pipe()
        os.set_blocking(self.readPipe, False)
        self.pipe = FakeOutputPipe(self.readPipe)

    def relay(self) -> PipeRelay:
        relay = PipeRelay(self.request, self.pipe, self.reactor)
        self.request.registerProducer(relay, True)
        return relay

    def received(self) -> bytes:
        self.peer.setblocking(False)
        data = b""
        while True:
            try:
                piece = self.peer.recv(1024 * 1024)
            except BlockingIOError:
                return data
            if not piece:
                return data
            data += piece

    def close(self) -> None:
        for fd in (self.readPipe, self.writePipe):
            try:
                os.close(fd)
            except OSError:
                pass
        self.peer.close()
        self.ours.close()


@pytest.fixture
def connection() -> Iterator[Connection]:
    made = Connection()
    yield made
    made.close()


def dechunk(data: bytes) -> tuple[list[int], bytes]:
    """The chunk sizes and the payload of a chunked stream (no last chunk expected)."""
    sizes, payload = [], b""
    while data:
        line, _, data = data.partition(b"\r\n")
        size = int(line, 16)
        sizes.append(size)
        payload += data[:size]
        assert data[size : size + 2] == b"\r\n", "a chunk is not followed by its CRLF"
        data = data[size + 2 :]
    return sizes, payload


def test_fakeOutputPipeIsAnOutputPipe() -> None:
    """The fake pipe the tests hand to the relay provides what the core hands it."""
    readEnd, writeEnd = os.pipe()
    assert verifyObject(IOutputPipe, FakeOutputPipe(readEnd))
    os.close(readEnd)
    os.close(writeEnd)


def test_aFullBatchGoesAtOnceAsOneChunk(connection: Connection) -> None:
    """A pipe holding a batch goes to the socket at once as one chunk: size line, bytes, CRLF."""
    relay = connection.relay()
    os.write(connection.writePipe, b"x" * MIN_BATCH)
    relay.resumeProducing()
    assert connection.received() == b"%x\r\n" % MIN_BATCH + b"x" * MIN_BATCH + b"\r\n"


def test_whatThePipeHoldsGoesAsOneChunkAfterABatchDelay(connection: Connection) -> None:
    """Less than a batch waits a moment for more, then goes as one chunk all the same."""
    os.write(connection.writePipe, b"x" * 5000)
    relay = connection.relay()
    relay.resumeProducing()
    assert connection.received() == b""
    assert relay not in connection.reactor.readers
    os.write(connection.writePipe, b"y" * 1000)
    connection.reactor.advance(BATCH_DELAY)
    assert connection.received() == b"1770\r\n" + b"x" * 5000 + b"y" * 1000 + b"\r\n"
    assert connection.pipe.movedBytes == 6000
    assert connection.request.sentLength == 6000
    # Nothing left: the relay waits for the pipe to be readable again.
    assert relay in connection.reactor.readers


def test_notChunkedGoesAsIs() -> None:
    """An HTTP/1.0 answer (delimited by the close) is relayed without framing."""
    connection = Connection(chunked=False)
    try:
        os.write(connection.writePipe, b"pack")
        connection.relay().resumeProducing()
        connection.reactor.advance(BATCH_DELAY)
        assert connection.received() == b"pack"
    finally:
        connection.close()


def test_waitsForTwistedsBufferFirst(connection: Connection) -> None:
    """Bytes Twisted still holds (the head) go first; the relay waits, paused, until then."""
    connection.server.write(b"HEAD")
    os.write(connection.writePipe, b"pack")
    relay = connection.relay()
    relay.resumeProducing()
    connection.reactor.advance(BATCH_DELAY)
    assert relay.paused and connection.server.producerPaused
    assert connection.received() == b""
    connection.server.doWrite()
    assert not relay.paused
    assert connection.received() == b"HEAD4\r\npack\r\n"


def test_fullSocketPausesMidChunkAndResumesTheSameChunk() -> None:
    """A full socket pauses the relay inside a chunk; no new size line starts before it ends."""
    connection = Connection(buffer=4096)
    try:
        relay = connection.relay()
        first = os.urandom(RELAY_PIPE_SIZE // 2)
        os.write(connection.writePipe, first)
        relay.resumeProducing()
        assert relay.paused, "half a MiB fitted small socket buffers"
        assert connection.server.producerPaused
        assert relay not in connection.reactor.readers
        # git writes more meanwhile: it must wait for the next chunk.
        second = os.urandom(30 * 1024)
        os.write(connection.writePipe, second)
        stream = b""
        while relay.paused:
            stream += connection.received()
            connection.server.doWrite()
        stream += connection.received()
        while bytesWaiting(connection.readPipe) or relay.paused:
            if relay in connection.reactor.readers:
                relay.doRead()
            connection.reactor.advance(BATCH_DELAY)
            stream += connection.received()
            connection.server.doWrite()
        stream += connection.received()
        sizes, payload = dechunk(stream)
        assert sizes == [len(first), len(second)]
        assert payload == first + second
        assert connection.pipe.movedBytes == len(first) + len(second)
    finally:
        connection.close()


def test_thePipesEndHandsItBack(connection: Connection) -> None:
    """Readable with nothing in it: git closed the pipe; the relay stops and gives it back."""
    relay = connection.relay()
    relay.resumeProducing()
    os.close(connection.writePipe)
    relay.doRead()
    assert connection.pipe.endCalled
    assert relay not in connection.reactor.readers
    relay.resumeProducing()
    assert relay not in connection.reactor.readers


def test_aHangupHandsItBack(connection: Connection) -> None:
    """The reactor reporting the pipe's hangup is its end too."""
    from twisted.internet.error import ConnectionDone

    relay = connection.relay()
    relay.connectionLost(Failure(ConnectionDone()))
    assert connection.pipe.endCalled


def test_aBrokenConnectionIsAborted(connection: Connection) -> None:
    """The peer gone: the relay stops and aborts the connection, whose loss ends the child."""
    relay = connection.relay()
    # Closed with unread data and no linger: a reset, so the next send fails.
    connection.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.peer.close()
    os.write(connection.writePipe, b"pack" * 1000)
    relay.resumeProducing()
    connection.reactor.advance(BATCH_DELAY)
    assert relay.stopped
    connection.reactor.advance(0)
    assert connection.server.disconnected
    assert not connection.pipe.endCalled


def test_stoppedRelaysNothing(connection: Connection) -> None:
    """Once stopped (the client left), the relay neither reads nor sends."""
    relay = connection.relay()
    relay.stopProducing()
    os.write(connection.writePipe, b"pack")
    relay.resumeProducing()
    connection.reactor.advance(BATCH_DELAY)
    assert connection.received() == b""
    assert relay not in connection.reactor.readers


def _startedResponse(
    request: Request, pipeReactor: MemoryReactorClock | None = None, record: bool = False
) -> SmartResponse:
    response = SmartResponse(request, b"application/x-git-upload-pack-result", b"", pipeReactor)
    if record:
        response.record = bytearray()
    response.write(b"0008NAK\n")
    return response


def test_smartResponseIsAPipeOutput() -> None:
    """SmartResponse offers the core the relay seam."""
    assert verifyObject(
        IPipeOutput, SmartResponse(Request(DummyChannel()), b"application/x-git-result")
    )


def test_relayedOnAPlainSocket(connection: Connection) -> None:
    """A started response on a plain socket takes the pipe."""
    response = _startedResponse(connection.request, connection.reactor)
    assert isinstance(response.relayPipe(connection.pipe), PipeRelay)


def test_declinedWhenSwitchedOff(connection: Connection) -> None:
    """--no-splice (no reactor to watch pipes): git's output keeps coming through write."""
    assert _startedResponse(connection.request).relayPipe(connection.pipe) is None


def test_declinedWhenKeepingACopy(connection: Connection) -> None:
    """An answer being recorded (an advertisement to cache) must see every byte."""
    response = _startedResponse(connection.request, connection.reactor, record=True)
    assert response.relayPipe(connection.pipe) is None


def test_declinedOnAnotherTransport(connection: Connection) -> None:
    """TLS, a PROXY-protocol wrapper, anything but a plain socket: no relay."""
    channel = DummyChannel()
    channel.transport = StringTransport()  # type: ignore[assignment]
    response = _startedResponse(Request(channel), connection.reactor)
    assert response.relayPipe(connection.pipe) is None


def test_declinedOnceTheClientLeft(connection: Connection) -> None:
    """A response whose client went away relays nothing."""
    response = _startedResponse(connection.request, connection.reactor)
    connection.request.connectionLost(Failure(ConnectionError("gone")))
    assert response.relayPipe(connection.pipe) is None
