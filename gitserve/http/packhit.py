"""
Pack cache answers sent with C{sendfile(2)}: the kernel copies them from the
page cache to the socket, and no byte of a pack passes through Python.

Every reader of the cache on a plain TCP or UNIX connection (see
L{gitserve.twistedinternals.sendfileDescriptor}) is one of these: a hit, a
follower, and the lead's own client. A hit's length is known, so it goes with
C{Content-Length}; a flight still growing goes chunked, each chunk's size
line and closing CRLF sent on the socket around the sendfile'd range. Over
TLS, or wherever the socket is not ours to write, the core's
L{gitserve.core.packcache.CacheReader} writes into the response instead.

How bytes reach the socket in order with what Twisted writes, and how a
full socket pauses the channel, is L{gitserve.http.direct}'s business.
"""

from __future__ import annotations

import errno
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request
from zope.interface import implementer

from gitserve.core.operations import GitOperation
from gitserve.core.packcache import (
    HEADER_SIZE,
    EntrySource,
    IPackReader,
    Source,
    logServed,
)
from gitserve.core.process import GitOutcome
from gitserve.http.channel import connectionOf, isAnswerable
from gitserve.http.direct import BATCH_DELAY, MIN_BATCH, DirectSender, FileRange
from gitserve.http.headers import startGitResponse
from gitserve.twistedinternals import sendfileDescriptor

log = Logger()

# The most bytes one chunk (and one sendfile(2) call) covers, and the most
# sent per reactor turn by one reader.
SENDFILE_CHUNK = 4 * 1024 * 1024
SENDFILE_PER_TURN = 4 * SENDFILE_CHUNK


def canSendfile(request: Request) -> bool:
    """Whether cache answers for C{request} can go out with C{sendfile(2)}."""
    return sendfileDescriptor(getattr(request.channel, "transport", None)) is not None


@implementer(IPushProducer, IPackReader)
class SendfileReader:
    """
    One client's copy of a cached or in-flight answer, sent with sendfile(2).

    Nothing is sent until the answer has its first byte, so a git that fails
    first still gets the error answer a git child's failure gets
    (C{answerUnstarted}: L{gitserve.http.smart.SmartResponse.answer}).

    @ivar offset: bytes of the answer queued for sending so far.
    """

    def __init__(
        self,
        request: Request,
        source: Source,
        contentType: bytes,
        answerUnstarted: Callable[[GitOutcome], object],
        operation: GitOperation,
        bytesIn: int,
        quiet: bool,
        clock: IReactorTime,
    ) -> None:
        self.request = request
        self.source = source
        self.contentType = contentType
        self.answerUnstarted = answerUnstarted
        self.operation = operation
        self.bytesIn = bytesIn
        self.quiet = quiet
        self.clock = clock
        self.offset = 0
        self.sent = 0
        self.paused = False
        self.began = clock.seconds()
        self.done: Deferred[GitOutcome] = Deferred()
        self.transport = request.channel.transport  # type: ignore[attr-defined]
        self._started = False
        self._chunked = False
        self._sender = DirectSender(self.transport, self._counted)
        self._call: IDelayedCall | None = None
        self._ended = False

    # The flight's side -------------------------------------------------------

    def start(self) -> None:
        self.source.attach(self)
        self.request.notifyFinish().addErrback(lambda _: self._clientLeft())
        self._schedule()

    def dataAvailable(self, data: bytes, at: int) -> None:
        if getattr(self.source, "broken", False):
            # Not in the file: this reader cannot send it. Its client sees a
            # broken transfer and retries.
            self.fail(Failure(OSError(errno.ENOSPC, "pack cache file could not be written")))
            return
        # In batches (see gitserve.http.direct.MIN_BATCH).
        if self.source.size - self.offset >= MIN_BATCH or not self._started:
            self._schedule()
        else:
            self._schedule(BATCH_DELAY)

    def sourceFinished(self) -> None:
        self._schedule()

    # IPushProducer -------------------------------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def resumeProducing(self) -> None:
        self.paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self._clientLeft()

    def terminate(self) -> None:
        """IGitJob: a shutdown ends this reader."""
        self.fail(Failure(ConnectionAbortedError("shutting down")))

    # Sending ---------------------------------------------------------------------

    def _schedule(self, delay: float = 0) -> None:
        if self._ended or self.paused:
            return
        if self._call is None:
            self._call = self.clock.callLater(delay, self._produce)
        elif delay == 0 and self._call.getTime() > self.clock.seconds():
            self._call.reset(0)

    def _startResponse(self) -> None:
        """The head, once the answer has a byte: Content-Length when its size is final."""
        self._started = True
        startGitResponse(self.request, self.contentType)
        if isinstance(self.source, EntrySource):
            self.request.setHeader(b"Content-Length", b"%d" % self.source.size)
        self.request.registerProducer(self, True)
        self.request.write(b"")
        self._chunked = bool(getattr(self.request, "chunked", False))

    def _produce(self) -> None:
        self._call = None
        if self._ended or self.paused:
            return
        if not self._started:
            if self.source.size == 0:
                if self.source.finished:
                    self._end(self.source.outcome)
                return
            self._startResponse()
        turn = self.sent
        while self.sent - turn < SENDFILE_PER_TURN:
            if not self._sender.pending:
                available = self.source.size - self.offset
                if available <= 0:
                    if self.source.finished:
                        self._end(self.source.outcome)
                    return
                length = min(available, SENDFILE_CHUNK)
                self._sender.queue(
                    FileRange(self.source.fd, HEADER_SIZE + self.offset, length), self._chunked
                )
                self.offset += length
            try:
                if not self._sender.send():
                    return
            except OSError as e:
                self.fail(Failure(e))
                return
        self._schedule()

    def _counted(self, length: int) -> None:
        """C{length} bytes of the answer went out."""
        self.sent += length
        # What Request.write would have counted, for the access log.
        self.request.sentLength += length

    # The end -----------------------------------------------------------------------

    def fail(self, failure: Failure) -> None:
        self._end(GitOutcome(None, self.sent, False, failure, "the shared answer failed"))

    def _clientLeft(self) -> None:
        failure = Failure(ConnectionAbortedError("the client went away"))
        self._end(GitOutcome(None, self.sent, False, failure, ""), answer=False)

    def _end(self, outcome: GitOutcome | None, answer: bool = True) -> None:
        if self._ended:
            return
        self._ended = True
        if self._call is not None:
            self._call.cancel()
            self._call = None
        assert outcome is not None
        outcome = GitOutcome(
            outcome.exitCode,
            self.sent,
            outcome.completeRefusal,
            outcome.failure,
            outcome.message,
        )
        self.source.detach(self)
        # Logged before the answer ends, as a git child's line is: a client
        # (or a test) that has the whole answer finds the line already there.
        if not self.quiet:
            logServed(self.operation, outcome, self.clock.seconds() - self.began, self.bytesIn)
        if answer and isAnswerable(self.request):
            self._answer(outcome)
        self.done.callback(outcome)

    def _answer(self, outcome: GitOutcome) -> None:
        """Finish, abort, or (nothing sent yet) answer as a git child's failure is answered."""
        if not self._started:
            self.answerUnstarted(outcome)
            return
        self.request.unregisterProducer()
        complete = self.sent == self.source.size and not self._sender.pending
        if (outcome.succeeded or outcome.completeRefusal) and complete:
            self.request.finish()
        else:
            if outcome.failure is not None:
                log.info("pack cache answer cut off: {e}", e=outcome.failure.getErrorMessage())
            # The answer began: only a broken connection says it is incomplete.
            connectionOf(self.request.channel).abortConnection()
