"""
Pack cache answers sent with C{sendfile(2)}: the kernel copies them from the
page cache to the socket, and no byte of a pack passes through Python.

Every reader of the cache whose client is on a plain TCP or UNIX socket
(see L{gitserve.twistedinternals.sendfileDescriptor}) is one of these: a
hit, a follower, and the lead's own client. L{SendfileReader} sends the
answer as a bare stream into a door's output (git://, whose protocol is the
answer itself); L{gitserve.http.packhit.HTTPSendfileReader} frames it as an
HTTP response. Where the socket is not ours to write (TLS, SSH's encrypted
channel), L{gitserve.core.packcache.CacheReader} writes into the output
instead.

How bytes reach the socket in order with what Twisted writes, and how a
full socket pauses the transport (so the door's stall timeout drops a client
that stops reading), is L{gitserve.core.direct}'s business.
"""

from __future__ import annotations

import errno

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from gitserve.core.direct import DirectSender, FileRange
from gitserve.core.operations import GitOperation
from gitserve.core.packcache import HEADER_SIZE, IPackReader, Source, logServed
from gitserve.core.process import GitOutcome
from gitserve.interfaces import IGitOutput

# The most bytes one chunk (and one sendfile(2) call) covers, and the most
# sent per reactor turn by one reader.
SENDFILE_CHUNK = 4 * 1024 * 1024
SENDFILE_PER_TURN = 4 * SENDFILE_CHUNK

# A reader keeping up with git sends once this much is waiting, or after
# BATCH_DELAY seconds: each batch costs every reader a timer, a turn and
# three system calls, so in a storm of 16 readers fewer, larger batches are
# CPU saved, while a client that gets a pack 20 ms later sees no difference.
MIN_BATCH = 2 * 1024 * 1024
BATCH_DELAY = 0.02


@implementer(IPushProducer, IPackReader)
class SendfileReader:
    """
    One client's copy of a cached or in-flight answer, sent with sendfile(2)
    on C{transport}'s socket as a bare stream; C{output} (the door's) has
    this reader as its producer while it sends, and is told of the bytes
    that went out around it (L{_sentDirectly}).

    Nothing is sent until the answer has its first byte, so a git that fails
    first still gets the answer a git child's failure gets.

    Subclasses frame the answer (L{gitserve.http.packhit.HTTPSendfileReader}):
    L{_begin}, L{_sentDirectly}, L{_answer} and L{_watchClient}.

    @ivar offset: bytes of the answer queued for sending so far.
    """

    def __init__(
        self,
        source: Source,
        output: IGitOutput,
        transport: object,
        operation: GitOperation,
        bytesIn: int,
        quiet: bool,
        clock: IReactorTime,
    ) -> None:
        self.source = source
        self.output = output
        self.transport = transport
        self.operation = operation
        self.bytesIn = bytesIn
        self.quiet = quiet
        self.clock = clock
        self.offset = 0
        self.sent = 0
        self.paused = False
        self.began = clock.seconds()
        self.done: Deferred[GitOutcome] = Deferred()
        self._started = False
        self._chunked = False
        self._sender = DirectSender(transport, self._counted)
        self._call: IDelayedCall | None = None
        self._ended = False

    # The flight's side -------------------------------------------------------

    def start(self) -> None:
        self.source.attach(self)
        self._watchClient()
        self._schedule()

    def _watchClient(self) -> None:
        """Arrange for L{_clientLeft} when the client goes: the door's output stops its producer."""

    def dataAvailable(self, data: bytes | None, at: int) -> None:
        if getattr(self.source, "broken", False):
            # Not in the file: this reader cannot send it. Its client sees a
            # broken transfer and retries.
            self.fail(Failure(OSError(errno.ENOSPC, "pack cache file could not be written")))
            return
        # git writes 64 KiB at a time: sending each piece as it comes costs
        # three system calls per piece per reader; waiting a moment for a
        # larger range costs nothing the client would see.
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

    def _begin(self) -> bool:
        """
        The answer has its first byte: become the output's producer.

        @return: whether each range goes out as an HTTP chunk.
        """
        self.output.registerProducer(self, True)
        return False

    def _produce(self) -> None:
        self._call = None
        if self._ended or self.paused:
            return
        if not self._started:
            if self.source.size == 0:
                if self.source.finished:
                    self._end(self.source.outcome)
                return
            self._started = True
            self._chunked = self._begin()
        turn = 0
        while turn < SENDFILE_PER_TURN:
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
                turn += length
            try:
                if not self._sender.send():
                    return
            except OSError as e:
                self.fail(Failure(e))
                return
        self._schedule()

    def _counted(self, count: int) -> None:
        self.sent += count
        self._sentDirectly(count)

    def _sentDirectly(self, count: int) -> None:
        """
        C{count} bytes went out behind the output's back: an empty write
        tells it the client is reading (the door's idle timer starts over).
        """
        self.output.write(b"")

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
        if answer:
            self._answer(outcome)
        self.done.callback(outcome)

    @property
    def complete(self) -> bool:
        """Whether the whole answer went out."""
        return self.sent == self.source.size and not self._sender.pending

    def _answer(self, outcome: GitOutcome) -> None:
        """
        The reader ended with its client there: the output no longer has it
        as producer, and the door answers from the outcome, as it does for a
        git child's.
        """
        if self._started:
            self.output.unregisterProducer()
