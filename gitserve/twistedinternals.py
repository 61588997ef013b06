"""
Every use of Twisted's private API, in one place, each pinned by a test in
C{tests/test_twistedinternals.py} that fails loudly if a Twisted release
changes what it relies on.

Each one is here because Twisted has no public way to do the same thing;
where it has one, gitserve uses that instead (its own disconnect flag rather
than C{Request._disconnected}, its own 400/431 answers rather than
C{_respondToBadRequestAndDisconnect}, the request line it read itself rather
than C{HTTPChannel._command}).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, AnyStr

from twisted.internet.interfaces import IProcessProtocol, IProcessTransport, IReactorProcess
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.process import Process, ProcessReader
from zope.interface import implementer

from gitserve.interfaces import IRelayableProcess

if TYPE_CHECKING:
    # Imported where used: the core uses this module too (the pipe, sendfile)
    # and must not load twisted.web.
    from twisted.web import http

# How much of git's output is read at once: a pipe's whole default capacity.
# Twisted's process reader reads 8 KiB, so a 64 MiB pack took 8192 reads, each
# a reactor turn and a wakeup of git blocked on a full pipe.
PIPE_READ_SIZE = 64 * 1024


class _PipeReader(ProcessReader):
    """
    A child's output pipe, read L{PIPE_READ_SIZE} bytes at a time (or as
    much as L{enlargeOutputPipe} made it hold, in batches).

    Private: C{twisted.internet.process.ProcessReader} and its C{doRead}
    contract (return C{CONNECTION_DONE}/C{CONNECTION_LOST} or L{None}), and
    that C{Process.pauseProducing} pauses it with C{stopReading}.
    """

    readSize = PIPE_READ_SIZE
    # After emptying the pipe, wait this long before reading it again (0:
    # read whenever there is anything): see enlargeOutputPipe.
    batchDelay = 0.0
    _batchCall: Any = None
    _paused = False

    def doRead(self) -> object:
        # Twisted's fdesc.readFromFD, with the read size as the only change.
        try:
            output = os.read(self.fd, self.readSize)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return CONNECTION_LOST
        if not output:
            return CONNECTION_DONE
        self.dataReceived(output)
        if self.batchDelay and len(output) < self.readSize and not self._paused:
            # The pipe is empty: let it fill while git writes on.
            ProcessReader.stopReading(self)
            reactor: Any = self.reactor
            self._batchCall = reactor.callLater(self.batchDelay, self._batchDue)
        return None

    def _batchDue(self) -> None:
        self._batchCall = None
        if not self._paused and not self.disconnected:
            ProcessReader.startReading(self)

    def stopReading(self) -> None:
        """Paused by the process's consumer (or by Twisted, as it closes)."""
        self._paused = True
        super().stopReading()

    def startReading(self) -> None:
        self._paused = False
        if self._batchCall is None:
            super().startReading()

    def connectionLost(self, reason: object) -> None:
        if self._batchCall is not None:
            self._batchCall.cancel()
            self._batchCall = None
        super().connectionLost(reason)


def enlargeOutputPipe(process: object, size: int, batchDelay: float) -> None:
    """
    Let a child's stdout pipe hold C{size} bytes (Linux's C{F_SETPIPE_SZ},
    capped by C{/proc/sys/fs/pipe-max-size}), read that much at a time, and
    after emptying it wait C{batchDelay} seconds before reading again.

    For an output that takes whatever git writes at once (a pack cache
    flight, written to a file): git rarely blocks, and the daemon wakes up
    and passes a chunk to its readers every few milliseconds instead of for
    every piece git writes (a read per 30 to 50 KiB otherwise, the daemon
    draining the pipe faster than git fills it). Not for an output that
    buffers what it cannot send yet: it would hold up to C{size} per
    connection. Where the pipe cannot grow, nothing changes.

    Private: C{Process.pipes}, the readers by child descriptor.
    """
    reader = getattr(process, "pipes", {}).get(1)
    if not isinstance(reader, _PipeReader):
        return
    try:
        reader.readSize = fcntl.fcntl(reader.fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        return
    reader.batchDelay = batchDelay


def enlargeInputPipe(process: object, size: int, highWater: int) -> None:
    """
    Let a child's stdin pipe hold C{size} bytes, and its writer buffer up to
    C{highWater} before it pauses the producer feeding it (a push body's
    connection).

    For a push: with git's default 64 KiB pipe and Twisted's 64 KiB writer
    high-water mark, every 64 KiB read from the client paused and resumed
    the connection (11,520 C{epoll_ctl} calls for a 150 MB push); with a
    1 MiB pipe, a writer that takes a whole read, and reads of that size,
    the connection is read on while git indexes. Back-pressure is unchanged
    in kind: past C{highWater} buffered the connection is paused. Where the
    pipe cannot grow, nothing changes.

    Private: C{Process.pipes} (the writer by child descriptor) and the
    writer's C{bufferSize}, its high-water mark.
    """
    writer = stdinWriter(process)
    if writer is None:
        return
    try:
        fcntl.fcntl(writer.fd, fcntl.F_SETPIPE_SZ, size)
    except OSError:
        return
    writer.bufferSize = highWater


def readInPiecesOf(transport: object, size: int) -> None:
    """
    Have a TCP or UNIX connection read up to C{size} bytes per wakeup (64 KiB
    by default): for a push body, a quarter of the reads and wakeups.

    Private: C{tcp.Connection.bufferSize}, the size C{doRead} asks C{recv}
    for. Other transports (TLS) are left as they are.
    """
    if sendfileDescriptor(transport) is not None:
        transport.bufferSize = size  # type: ignore[attr-defined]


@implementer(IRelayableProcess)
class _GitProcess(Process):
    """Private: C{Process.processReaderFactory} picks the reader class."""

    processReaderFactory = _PipeReader

    def outputReader(self) -> ProcessReader | None:
        """
        The reader of the child's standard output (see L{IRelayableProcess}).

        Private: C{Process.pipes}, keyed by the child's descriptor number.
        """
        reader = self.pipes.get(1)
        return reader if isinstance(reader, ProcessReader) else None


@implementer(IReactorProcess)
class PipeReadingSpawner:
    """
    Spawns children on a POSIX reactor as its C{spawnProcess} does, with
    their output read in large pieces (see L{PIPE_READ_SIZE}).
    """

    def __init__(self, reactor: IReactorProcess) -> None:
        self.reactor = reactor

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str] = (),
        env: Mapping[AnyStr, AnyStr] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> IProcessTransport:
        if usePTY:
            raise ValueError("git is never given a terminal")
        return _GitProcess(  # type: ignore[no-any-return]
            self.reactor, executable, args, env, path, processProtocol, uid, gid, childFDs
        )


class DeferredContinueMixin:
    """
    For an C{HTTPChannel}: lets the request answer C{Expect: 100-continue}
    itself, when it first reads the body, instead of Twisted saying it as
    soon as the headers are in, so that a refusal decided from the headers
    reaches the client before it sends a byte of the body.

    Private: C{HTTPChannel._send100Continue}, called from
    C{allHeadersReceived}.
    """

    requests: list[http.Request]

    def _send100Continue(self) -> None:
        request = self.requests[-1]
        if not getattr(request, "answersContinue", False):
            super()._send100Continue()  # type: ignore[misc]


def watchChunkSizes(channel: http.HTTPChannel, onChunkSize: Callable[[int], None]) -> None:
    """
    Call C{onChunkSize} with each chunk size of the chunked request body
    being received on C{channel}, as soon as its size line is parsed, before
    any of the chunk arrives: a size no body may reach is refused at once,
    not waited on.

    Private: C{HTTPChannel._transferDecoder} and
    C{_ChunkedTransferDecoder._dataReceived_CHUNK_LENGTH} setting C{length}.
    """
    from twisted.web import http

    decoder = channel._transferDecoder
    if not isinstance(decoder, http._ChunkedTransferDecoder):
        return
    parseLength = decoder._dataReceived_CHUNK_LENGTH

    def parseAndReport() -> bool:
        parsed = parseLength()
        if parsed and decoder.length:
            onChunkSize(decoder.length)
        return parsed

    # The decoder dispatches on "_dataReceived_" + state through getattr, so
    # an instance attribute takes the method's place.
    decoder._dataReceived_CHUNK_LENGTH = parseAndReport  # type: ignore[method-assign]


class ChunkedBodyPosition:
    """
    Where the chunked request body being received on a channel stands, as
    Twisted's decoder sees it, and that position moved on for bytes taken
    off the socket behind the decoder's back (with splice(2), see
    L{gitserve.http.inbound}). The decoder then reads on from exactly where
    the socket is, so Twisted's own reading stays right at any time.

    Only a position with nothing buffered in the decoder is offered: bytes
    it holds must reach the request through it, before any that follow.

    Private: C{HTTPChannel._transferDecoder}, and
    C{_ChunkedTransferDecoder}'s C{state}, C{length}, C{_buffer} and
    C{_start}: after a size line it is in C{BODY} with the chunk's
    C{length} still to come, and after a chunk's bytes in C{CRLF}.
    """

    def __init__(self, channel: http.HTTPChannel) -> None:
        from twisted.web import http

        # One decoder per request body, so it is looked up once: the lookup
        # of twisted.web.http's members costs more than the rest together.
        decoder = getattr(channel, "_transferDecoder", None)
        self._decoder = decoder if isinstance(decoder, http._ChunkedTransferDecoder) else None

    @property
    def chunked(self) -> bool:
        """Whether the body being received is chunked."""
        return self._decoder is not None

    def chunkLeft(self) -> int:
        """The bytes of the current chunk still to come; 0 when not inside one."""
        decoder = self._decoder
        if decoder is None or decoder.state != "BODY" or decoder._buffer:
            return 0
        return int(decoder.length)

    def beforeSizeLine(self) -> bytes | None:
        """
        What must come before the next chunk's size line (the CRLF that
        ends the previous chunk, or nothing), when the decoder waits for
        one; L{None} when it does not.
        """
        decoder = self._decoder
        if decoder is None or decoder._buffer or decoder._start:
            return None
        return {"CRLF": b"\r\n", "CHUNK_LENGTH": b""}.get(decoder.state)

    def movedTo(self, chunkLeft: int) -> None:
        """
        Whole size lines and chunk bytes were taken off the socket, up to
        C{chunkLeft} bytes before the end of a chunk (0: at its end, its
        CRLF next).
        """
        decoder = self._decoder
        assert decoder is not None and not decoder._buffer
        if chunkLeft:
            decoder.state = "BODY"
            decoder.length = chunkLeft
        else:
            decoder.state = "CRLF"


def interceptReads(transport: object, doRead: Callable[[], object]) -> Callable[[], object]:
    """
    Have the reactor call C{doRead} when C{transport}'s socket is readable,
    instead of the transport's own; L{restoreReads} undoes it.

    @return: the transport's own C{doRead}, for C{doRead} to call for what
        it does not handle itself. The same contract holds for both: read,
        and return L{None} or the reason the connection is lost.

    Private: that the reactor calls C{doRead} as looked up on the
    selectable, so that an instance attribute takes the method's place.
    """
    own: Callable[[], object] = type(transport).doRead.__get__(transport)  # type: ignore[attr-defined]
    transport.doRead = doRead  # type: ignore[attr-defined]
    return own


def restoreReads(transport: object) -> None:
    """The reactor calls C{transport}'s own C{doRead} again (see L{interceptReads})."""
    vars(transport).pop("doRead", None)


def stdinWriter(process: object) -> Any:
    """
    The writer of a child's stdin pipe (a C{FileDescriptor}), L{None} when
    it has none (or it is closed).

    Private: C{Process.pipes}, keyed by the child's descriptor number.
    """
    return getattr(process, "pipes", {}).get(0)


def sendfileDescriptor(transport: object) -> int | None:
    """
    The socket of C{transport} if bytes may be sent on it behind Twisted's
    back with C{sendfile(2)}: a plain TCP or UNIX connection (TLS wraps its
    transport in a protocol, which is not one), else L{None}.

    Private: that C{tcp.Connection} (and C{unix.Server}, a subclass) writes
    to its socket only from its C{dataBuffer}/C{_tempDataBuffer}.
    """
    from twisted.internet import tcp

    if type(transport) not in (tcp.Server, _unixServer()):
        return None
    try:
        return int(transport.fileno())  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def socketOf(transport: object) -> socket.socket:
    """
    The socket object of a transport L{sendfileDescriptor} accepted, to send
    with flags (C{MSG_MORE}) on it.

    Private: C{tcp.Connection.socket}.
    """
    return transport.socket  # type: ignore[attr-defined, no-any-return]


def _unixServer() -> type:
    try:
        from twisted.internet import unix
    except ImportError:  # pragma: no cover (no UNIX sockets on this platform)
        return type(None)
    return unix.Server


def transportDrained(transport: object) -> bool:
    """
    Whether C{transport} has sent everything written to it, so that bytes
    sent directly on its socket now follow them in order.

    Private: C{FileDescriptor.dataBuffer}, C{offset} and C{_tempDataLen}.
    """
    return (
        not transport._tempDataLen  # type: ignore[attr-defined]
        and transport.offset == len(transport.dataBuffer)  # type: ignore[attr-defined]
    )


def resumeWhenWritable(transport: object) -> None:
    """
    Pause C{transport}'s producer (the HTTP channel, which pauses the
    request's producer and starts the channel's stall timer) until the
    socket is writable and the buffer empty, exactly as the transport does
    itself when its buffer fills up.

    Private: C{FileDescriptor.producerPaused} and C{doWrite}'s resuming a
    paused producer once its buffer is empty, even when it sent nothing.
    """
    producer = transport.producer  # type: ignore[attr-defined]
    if producer is not None and not transport.producerPaused:  # type: ignore[attr-defined]
        transport.producerPaused = True  # type: ignore[attr-defined]
        producer.pauseProducing()
    transport.startWriting()  # type: ignore[attr-defined]
