"""
A pack cache hit sent with C{sendfile(2)}: the kernel copies the kept answer
from the page cache to the socket, and no byte of it passes through Python.

Only on a plain TCP or UNIX connection (see
L{gitserve.twistedinternals.sendfileDescriptor}); over TLS, or wherever the
socket is not ours to write, the hit is served by the core's
L{gitserve.core.packcache.CacheReader} like any other reader. The answer's
length is known, so it goes with C{Content-Length}, not chunked: there is no
framing to interleave with the file's bytes.
"""

from __future__ import annotations

import errno
import os

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from gitserve.core.operations import GitOperation
from gitserve.core.packcache import HEADER_SIZE, CacheEntry, PackCache, logServed
from gitserve.core.process import GitOutcome
from gitserve.http.channel import connectionOf, isAnswerable
from gitserve.http.headers import startGitResponse
from gitserve.twistedinternals import resumeWhenWritable, sendfileDescriptor, transportDrained

log = Logger()

# Bytes handed to sendfile(2) per call, and per reactor turn at most.
SENDFILE_CHUNK = 4 * 1024 * 1024
SENDFILE_PER_TURN = 4 * SENDFILE_CHUNK


def canSendfile(request: Request) -> bool:
    """Whether a hit for C{request} can go out with C{sendfile(2)}."""
    return sendfileDescriptor(getattr(request.channel, "transport", None)) is not None


@implementer(IPushProducer)
class SendfileHit:
    """
    Sends one kept answer on the request's socket, paced by the socket: on
    C{EAGAIN} the HTTP channel is paused (as a full buffer pauses it, so the
    channel's stall timeout applies) until the socket drains.
    """

    def __init__(
        self,
        request: Request,
        entry: CacheEntry,
        contentType: bytes,
        cache: PackCache,
        operation: GitOperation,
        bytesIn: int,
        clock: IReactorTime,
    ) -> None:
        self.request = request
        self.entry = entry
        self.contentType = contentType
        self.cache = cache
        self.operation = operation
        self.bytesIn = bytesIn
        self.clock = clock
        self.sent = 0
        self.began = clock.seconds()
        self._paused = False
        self._ended = False
        self._call: IDelayedCall | None = None
        self.transport = request.channel.transport  # type: ignore[attr-defined]

    def start(self) -> None:
        """Write the head, then the answer once the head has left."""
        self.cache.counts["hit"] += 1
        self.cache.touch(self.entry.key)
        startGitResponse(self.request, self.contentType)
        self.request.setHeader(b"Content-Length", b"%d" % self.entry.length)
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.request.registerProducer(self, True)
        # Queues the head in the transport; sendfile waits until it is sent.
        self.request.write(b"")
        self._schedule()

    def _schedule(self) -> None:
        if not self._ended and not self._paused and self._call is None:
            self._call = self.clock.callLater(0, self._produce)

    def _produce(self) -> None:
        self._call = None
        if self._ended or self._paused:
            return
        if not transportDrained(self.transport):
            resumeWhenWritable(self.transport)
            return
        fd = sendfileDescriptor(self.transport)
        if fd is None:
            self._end(Failure(ConnectionError("connection closed")))
            return
        turn = 0
        while self.sent < self.entry.length and turn < SENDFILE_PER_TURN:
            count = min(SENDFILE_CHUNK, self.entry.length - self.sent)
            try:
                n = os.sendfile(fd, self.entry.fd, HEADER_SIZE + self.sent, count)
            except BlockingIOError:
                resumeWhenWritable(self.transport)
                return
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                self._end(Failure(e))
                return
            if n == 0:
                self._end(Failure(OSError(errno.EIO, "pack cache entry shrank")))
                return
            self.sent += n
            turn += n
            # What Request.write would have counted, for the access log.
            self.request.sentLength += n
        if self.sent < self.entry.length:
            self._schedule()
            return
        self._end(None)

    def pauseProducing(self) -> None:
        self._paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        """The client left."""
        self._end(Failure(ConnectionError("the client went away")), answerable=False)

    def _end(self, failure: Failure | None, answerable: bool = True) -> None:
        if self._ended:
            return
        self._ended = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self.entry.close()
        exitCode = 0 if failure is None else None
        outcome = GitOutcome(exitCode, self.sent, False, failure, "")
        logServed(self.operation, outcome, self.clock.seconds() - self.began, self.bytesIn)
        if not answerable or not isAnswerable(self.request):
            return
        self.request.unregisterProducer()
        if failure is None:
            self.request.finish()
        else:
            log.warn("pack cache hit failed: {error}", error=failure.getErrorMessage())
            # Content-Length promised more: only a broken connection says so.
            connectionOf(self.request.channel).abortConnection()
