"""
Pins for every private Twisted API gitserve uses (gitserve.twistedinternals):
each test fails loudly, naming what changed, if a Twisted release moves it.
"""

from __future__ import annotations

import fcntl
import inspect
import os
import socket

from twisted.internet.process import Process, ProcessReader
from twisted.internet.testing import MemoryReactor, MemoryReactorClock, StringTransport
from twisted.web import http
from twisted.web.test.requesthelper import DummyChannel

from gitserve.interfaces import IRelayableProcess
from gitserve.twistedinternals import (
    ChunkedBodyPosition,
    DeferredContinueMixin,
    PipeReadingSpawner,
    _GitProcess,
    _PipeReader,
    enlargeInputPipe,
    enlargeOutputPipe,
    interceptReads,
    readInPiecesOf,
    restoreReads,
    resumeWhenWritable,
    sendfileDescriptor,
    socketOf,
    stdinWriter,
    transportDrained,
    watchChunkSizes,
)

CHUNKED_HEAD = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


def test_processReadsThroughItsReaderFactory() -> None:
    """Process builds its output readers from processReaderFactory, which _GitProcess sets."""
    assert "processReaderFactory" in inspect.getsource(Process.__init__), (
        "Twisted's Process no longer builds readers through processReaderFactory"
    )
    assert _GitProcess.processReaderFactory is _PipeReader
    assert issubclass(_PipeReader, ProcessReader)
    assert "def doRead" in inspect.getsource(ProcessReader)


class _Collecting:
    """A process protocol that keeps what its child wrote."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def childDataReceived(self, name: int, data: bytes) -> None:
        self.pieces.append(data)


def _flightPipe(batchDelay: float) -> tuple[_PipeReader, _Collecting, MemoryReactorClock, int]:
    """A reader of a pipe enlarged as a flight's is; its write end for the test."""
    readEnd, writeEnd = os.pipe()
    collecting = _Collecting()
    reactor = MemoryReactorClock()
    reader = _PipeReader(reactor, collecting, 1, readEnd)
    enlargeOutputPipe(type("FakeProcess", (), {"pipes": {1: reader}})(), 1024 * 1024, batchDelay)
    return reader, collecting, reactor, writeEnd


def test_enlargedOutputPipeIsReadWhole() -> None:
    """A flight's stdout pipe holds a megabyte, read at once; Process keeps readers in pipes."""
    assert "self.pipes" in inspect.getsource(Process.__init__), "Process.pipes is gone"
    reader, collecting, _, writeEnd = _flightPipe(0.0)
    try:
        assert reader.readSize == 1024 * 1024
        assert fcntl.fcntl(reader.fd, fcntl.F_GETPIPE_SZ) == 1024 * 1024
        os.write(writeEnd, b"p" * 300_000)
        reader.doRead()
        assert [len(p) for p in collecting.pieces] == [300_000]
    finally:
        os.close(reader.fd)
        os.close(writeEnd)


def test_enlargedPipeIsReadInBatches() -> None:
    """Once emptied, a flight's pipe is read again after the delay, unless paused meanwhile."""
    assert "stopReading" in inspect.getsource(Process.pauseProducing)
    reader, collecting, reactor, writeEnd = _flightPipe(0.002)
    try:
        os.write(writeEnd, b"p" * 1000)
        reader.doRead()
        assert reader not in reactor.getReaders()
        reactor.advance(0.002)
        assert reader in reactor.getReaders()
        os.write(writeEnd, b"q")
        reader.doRead()
        reader.stopReading()
        reactor.advance(0.002)
        assert reader not in reactor.getReaders(), "a consumer's pause outlasts the batch delay"
        reader.startReading()
        assert reader in reactor.getReaders()
        assert b"".join(collecting.pieces) == b"p" * 1000 + b"q"
    finally:
        os.close(reader.fd)
        os.close(writeEnd)


def test_spawnerRefusesATerminal() -> None:
    """git is never given a pty: the spawner refuses usePTY rather than ignoring it."""
    spawner = PipeReadingSpawner(object())  # type: ignore[arg-type]
    try:
        spawner.spawnProcess(object(), "git", usePTY=True)  # type: ignore[arg-type]
    except ValueError:
        return
    raise AssertionError("usePTY was accepted")


class _RecordingContinue(http.HTTPChannel):
    calls = 0

    def _send100Continue(self) -> None:
        self.calls += 1


def test_allHeadersReceivedCallsSend100Continue() -> None:
    """HTTPChannel answers Expect: 100-continue through _send100Continue (gitserve overrides it)."""
    channel = _RecordingContinue()
    channel.makeConnection(StringTransport())
    channel.dataReceived(
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert channel.calls == 1, "Twisted no longer calls HTTPChannel._send100Continue"


def test_deferredContinueLeavesOrdinaryRequestsToTwisted() -> None:
    """A request that does not answer 100-continue itself gets Twisted's own answer."""

    class Channel(DeferredContinueMixin, http.HTTPChannel):
        pass

    transport = StringTransport()
    channel = Channel()
    channel.makeConnection(transport)
    channel.dataReceived(
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
    )
    assert transport.value().startswith(b"HTTP/1.1 100 Continue")


def test_chunkedBodiesGoThroughTheChunkedDecoder() -> None:
    """After chunked headers the channel's _transferDecoder is a _ChunkedTransferDecoder."""
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(CHUNKED_HEAD)
    decoder = channel._transferDecoder
    assert isinstance(decoder, http._ChunkedTransferDecoder)
    assert decoder.state == "CHUNK_LENGTH"
    assert callable(decoder._dataReceived_CHUNK_LENGTH)
    source = inspect.getsource(http._ChunkedTransferDecoder.dataReceived)
    assert '"_dataReceived_" + self.state' in source, "the decoder no longer dispatches by name"


def test_watchChunkSizesReportsEachSizeBeforeItsChunk() -> None:
    """Every chunk size is reported when its size line is parsed, before the chunk's data."""
    channel = http.HTTPChannel()
    channel.requestFactory = lambda *a: http.Request(DummyChannel())  # type: ignore[assignment]
    channel.makeConnection(StringTransport())
    channel.dataReceived(CHUNKED_HEAD)
    sizes: list[int] = []
    watchChunkSizes(channel, sizes.append)
    channel.dataReceived(b"5\r\nhello\r\n1a;ext=1\r\n")
    assert sizes == [5, 26]
    channel.dataReceived(b"x" * 26 + b"\r\n0\r\n\r\n")
    assert sizes == [5, 26]


def test_watchChunkSizesIgnoresLengthFramedBodies() -> None:
    """A Content-Length body has no chunk sizes: watching it changes nothing."""
    channel = http.HTTPChannel()
    channel.makeConnection(StringTransport())
    channel.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
    watchChunkSizes(channel, lambda size: None)
    assert not isinstance(channel._transferDecoder, http._ChunkedTransferDecoder)


def _plainTcpServer() -> tuple[object, socket.socket]:
    """A real C{tcp.Server} over one end of a socket pair, on a memory reactor."""
    from twisted.internet import tcp
    from twisted.internet.protocol import Protocol

    ours, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    protocol = Protocol()
    server = tcp.Server(ours, protocol, ("127.0.0.1", 1), None, 1, MemoryReactor())
    protocol.makeConnection(server)
    return server, peer


def test_sendfileDescriptorOnlyForAPlainSocketTransport() -> None:
    """A tcp.Server gives its socket (fd and object) for sendfile(2); other transports do not."""
    server, peer = _plainTcpServer()
    assert sendfileDescriptor(server) == server.fileno()  # type: ignore[attr-defined]
    assert socketOf(server).fileno() == server.fileno()  # type: ignore[attr-defined]
    assert sendfileDescriptor(StringTransport()) is None
    peer.close()


def test_enlargedInputPipeAndItsWriterHoldAMegabyte() -> None:
    """
    A push's stdin pipe holds a megabyte, and its writer buffers up to the
    high-water mark given before pausing its producer: Process keeps the
    writer in pipes[0], and a writer's high-water mark is its bufferSize.
    """
    from twisted.internet.abstract import FileDescriptor
    from twisted.internet.process import ProcessWriter

    assert "bufferSize" in inspect.getsource(FileDescriptor._isSendBufferFull)
    readEnd, writeEnd = os.pipe()
    writer = ProcessWriter(MemoryReactor(), type("FakeProcess", (), {})(), 0, writeEnd)
    try:
        enlargeInputPipe(type("FakeProcess", (), {"pipes": {0: writer}})(), 1024 * 1024, 256 * 1024)
        assert fcntl.fcntl(writeEnd, fcntl.F_GETPIPE_SZ) == 1024 * 1024
        assert writer.bufferSize == 256 * 1024
        # A process without a stdin writer (closed already) is left alone.
        enlargeInputPipe(type("FakeProcess", (), {"pipes": {}})(), 1024 * 1024, 256 * 1024)
    finally:
        os.close(readEnd)
        os.close(writeEnd)


def test_readInPiecesOfSetsWhatDoReadAsksFor() -> None:
    """A plain connection's doRead asks recv for bufferSize bytes; others are left alone."""
    from twisted.internet import tcp

    assert "self.bufferSize" in inspect.getsource(tcp.Connection.doRead)
    server, peer = _plainTcpServer()
    readInPiecesOf(server, 256 * 1024)
    assert server.bufferSize == 256 * 1024  # type: ignore[attr-defined]
    other = StringTransport()
    readInPiecesOf(other, 256 * 1024)
    assert not hasattr(other, "bufferSize")
    peer.close()


def test_transportDrainedFollowsTheWriteBuffer() -> None:
    """Written bytes wait in the transport's buffers until doWrite sends them."""
    server, peer = _plainTcpServer()
    assert transportDrained(server)
    server.write(b"head")  # type: ignore[attr-defined]
    assert not transportDrained(server)
    server.doWrite()  # type: ignore[attr-defined]
    assert transportDrained(server)
    assert peer.recv(10) == b"head"
    peer.close()


def test_resumeWhenWritablePausesUntilTheBufferIsEmpty() -> None:
    """resumeWhenWritable pauses the transport's producer; the next doWrite resumes it."""
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    @implementer(IPushProducer)
    class Producer:
        paused = False

        def pauseProducing(self) -> None:
            self.paused = True

        def resumeProducing(self) -> None:
            self.paused = False

        def stopProducing(self) -> None:
            pass

    server, peer = _plainTcpServer()
    producer = Producer()
    server.registerProducer(producer, True)  # type: ignore[attr-defined]
    resumeWhenWritable(server)
    assert producer.paused
    server.doWrite()  # type: ignore[attr-defined]
    assert not producer.paused
    peer.close()


def test_aChildsOutputReaderIsItsPipesEntryOne() -> None:
    """Process keeps each output pipe's reader in pipes under the child's descriptor number."""
    assert "self.pipes[childFD] = reader" in inspect.getsource(Process.__init__), (
        "Twisted's Process no longer keeps its readers in pipes by descriptor"
    )
    assert callable(ProcessReader.startReading) and callable(ProcessReader.stopReading)
    assert IRelayableProcess.implementedBy(_GitProcess)
    process = _GitProcess.__new__(_GitProcess)
    process.pipes = {1: "not a reader"}
    assert process.outputReader() is None


def _chunkedChannel() -> tuple[http.HTTPChannel, list[bytes]]:
    """A channel past a chunked request's head, and what its request is given."""
    received: list[bytes] = []

    class Collecting(http.Request):
        def handleContentChunk(self, data: bytes) -> None:
            received.append(data)

    channel = http.HTTPChannel()
    channel.requestFactory = lambda *a: Collecting(channel)  # type: ignore[assignment]
    channel.makeConnection(StringTransport())
    channel.dataReceived(CHUNKED_HEAD)
    return channel, received


def test_chunkedBodyPositionFollowsTheDecoder() -> None:
    """
    The decoder's states and fields read and moved on: a size line waits in
    CHUNK_LENGTH, then CRLF after a chunk; a chunk's rest is its length in
    BODY; and a position moved on behind its back is where it reads on.
    """
    channel, received = _chunkedChannel()
    position = ChunkedBodyPosition(channel)
    assert position.chunked
    assert position.beforeSizeLine() == b"" and position.chunkLeft() == 0
    channel.dataReceived(b"a\r\n0123")
    assert position.chunkLeft() == 6 and position.beforeSizeLine() is None
    # Four of the chunk's bytes taken elsewhere.
    position.movedTo(2)
    assert position.chunkLeft() == 2
    channel.dataReceived(b"45")
    assert position.beforeSizeLine() == b"\r\n"
    # The CRLF, a size line, and the chunk's first byte taken elsewhere.
    position.movedTo(2)
    assert position.chunkLeft() == 2
    channel.dataReceived(b"67")
    # Then a whole chunk, with the CRLF and size line before it.
    position.movedTo(0)
    assert position.beforeSizeLine() == b"\r\n"
    channel.dataReceived(b"\r\n2\r\nxy\r\n0\r\n\r\n")
    assert b"".join(received) == b"01234567xy"
    assert channel._transferDecoder is None or channel._transferDecoder.state == "FINISHED"


def test_chunkedBodyPositionOffersNothingBuffered() -> None:
    """A size line cut in two is buffered in the decoder: no position is offered."""
    channel, _ = _chunkedChannel()
    position = ChunkedBodyPosition(channel)
    channel.dataReceived(b"1")
    assert position.beforeSizeLine() is None and position.chunkLeft() == 0
    lengthFramed = http.HTTPChannel()
    lengthFramed.makeConnection(StringTransport())
    lengthFramed.dataReceived(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
    assert not ChunkedBodyPosition(lengthFramed).chunked


def test_interceptedReadsGoToTheGivenCallUntilRestored() -> None:
    """The reactor's doRead on a connection is looked up on it: an instance attribute wins."""
    from twisted.internet import posixbase

    assert "selectable.doRead()" in inspect.getsource(posixbase._PollLikeMixin._doReadOrWrite)
    server, peer = _plainTcpServer()
    calls: list[str] = []
    own = interceptReads(server, lambda: calls.append("ours"))
    server.doRead()  # type: ignore[attr-defined]
    assert calls == ["ours"]
    peer.sendall(b"x")
    assert own() is None and server.protocol.transport is server  # type: ignore[attr-defined]
    restoreReads(server)
    assert server.doRead.__func__ is type(server).doRead  # type: ignore[attr-defined]
    peer.close()


def test_stdinWriterIsPipesEntryZero() -> None:
    """A child's stdin writer is Process.pipes[0]; none once it is closed."""
    assert "self.pipes[0]" in inspect.getsource(Process.registerProducer)
    writer = object()
    assert stdinWriter(type("FakeProcess", (), {"pipes": {0: writer}})()) is writer
    assert stdinWriter(type("FakeProcess", (), {"pipes": {}})()) is None
