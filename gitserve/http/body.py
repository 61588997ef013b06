"""
Request bodies as streams: inflated on the fly, capped, and paced by whoever
consumes them.

Twisted Web spools a whole body to a temporary file before a resource sees
it. gitserve dispatches POSTs as soon as their headers arrive (see
L{gitserve.http.channel.GitRequest}) and reads the body through a L{RequestBody}
instead: a push goes to git's stdin while it arrives, and a body past its cap
is refused after the cap, not after the whole upload.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from gitserve.core.errors import InvalidRequest, Refusal, TooLarge
from gitserve.interfaces import IStdinSource

# Inflate in bounded steps: a gzip bomb yields at most this much per step, so
# the cap is checked before memory grows.
INFLATE_STEP = 64 * 1024


class BodyLost(Exception):
    """The client went away before the body was complete."""


class Identity:
    """The decoder for a body sent as is: pieces come out as they went in."""

    def __init__(self) -> None:
        self._pieces: deque[bytes] = deque()

    def feed(self, data: bytes) -> None:
        """Queue C{data} for L{step}."""
        if data:
            self._pieces.append(data)

    def step(self) -> bytes:
        """The next piece, C{b""} when nothing is left."""
        return self._pieces.popleft() if self._pieces else b""

    @property
    def drained(self) -> bool:
        """Whether everything fed has come out of L{step}."""
        return not self._pieces

    def finish(self) -> None:
        """The body ended; an identity body cannot end badly."""


class Inflater:
    """
    Incremental gzip decoding for C{Content-Encoding: gzip} and C{x-gzip}.

    Input is inflated one bounded L{step} at a time, on demand, never all at
    once: 64 KiB off the wire can inflate to 64 MiB, so the consumer's pace
    and the body's cap are checked between steps, with the still-compressed
    rest waiting here.
    """

    def __init__(self) -> None:
        # 16 + MAX_WBITS: expect a gzip header and trailer, as git sends.
        self._decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
        self._input = b""
        # The last step filled its buffer: zlib may hold more output even
        # when all input is consumed.
        self._more = False

    def feed(self, data: bytes) -> None:
        """Add compressed bytes to inflate."""
        self._input = self._input + data if self._input else data

    def step(self) -> bytes:
        """
        The next inflated piece, at most L{INFLATE_STEP} bytes, C{b""} when
        what was fed is used up.

        @raise InvalidRequest: the bytes are not gzip.
        """
        if not self._input and not self._more:
            return b""
        data, self._input = self._input, b""
        try:
            piece = self._decompressor.decompress(data, INFLATE_STEP)
        except zlib.error as e:
            raise InvalidRequest(f"Request body is not valid gzip: {e}") from e
        self._input = self._decompressor.unconsumed_tail
        self._more = len(piece) == INFLATE_STEP
        return piece

    @property
    def drained(self) -> bool:
        """Whether everything fed has been inflated and handed out."""
        return not self._input and not self._more

    def finish(self) -> None:
        """
        @raise InvalidRequest: the gzip stream ended early.
        """
        if not self._decompressor.eof:
            raise InvalidRequest("Request body ends inside its gzip stream")


def decoderFor(contentEncoding: bytes | None) -> Identity | Inflater:
    """
    The decoder for a C{Content-Encoding}.

    @raise InvalidRequest: an encoding git never sends.
    """
    if contentEncoding is None or contentEncoding.strip().lower() in (b"", b"identity"):
        return Identity()
    if contentEncoding.strip().lower() in (b"gzip", b"x-gzip"):
        return Inflater()
    raise InvalidRequest("Unsupported Content-Encoding")


@implementer(IConsumer)
class _Collector:
    """A consumer that keeps what it is given; the body's limit bounds it."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.chunks.append(data)


@implementer(IPushProducer, IStdinSource)
class RequestBody:
    """
    The body of one request, delivered to one consumer, with back-pressure.

    Until a consumer is attached, the network is paused and what already
    arrived waits here, still encoded (at most one read's worth). Then either
    L{readAll} collects the body (upload-pack negotiation, capped) or
    L{streamTo} writes it into a consumer such as a child's stdin. Whenever
    that consumer pauses this producer, delivery stops between two bounded
    pieces and the network is paused until it resumes: what is held here is
    never more than one network read (plus one inflation step).

    Its cap is set once the request is routed (L{setLimit}); a chunked body
    announcing a chunk past it is refused as soon as the chunk's size line
    arrives (L{chunkAnnounced}), not after the chunk.
    """

    def __init__(
        self,
        network: IPushProducer,
        contentEncoding: bytes | None,
        onFirstRead: Callable[[], None] | None = None,
    ) -> None:
        """
        @param network: the connection, paused and resumed for back-pressure.
        @param onFirstRead: called once, when a consumer first asks for the
            body (the place to answer C{Expect: 100-continue}).
        """
        self._network = network
        self._onFirstRead = onFirstRead
        self._limit: int | None = None
        self._largestChunk = 0
        self._overLimit = False
        self._consumer: IConsumer | None = None
        self._done: Deferred[int] | None = None
        self._received = 0
        # Of _received, what was moved to the consumer directly.
        self.spliced = 0
        self._complete = False
        self._failure: Failure | None = None
        self._pausedByConsumer = False
        self._networkPaused = False
        self._discarding = False
        self._discarded = 0
        self._discardLimit = 0
        self._onDiscardExceeded: Callable[[], None] | None = None
        self._decoder: Identity | Inflater = Identity()
        self._pauseNetwork()
        try:
            self._decoder = decoderFor(contentEncoding)
        except Refusal:
            self._failure = Failure()

    @property
    def complete(self) -> bool:
        """Whether the client sent the whole body."""
        return self._complete

    @property
    def overLimit(self) -> bool:
        """Whether the body was refused for passing its cap."""
        return self._overLimit

    def setLimit(self, limit: int) -> None:
        """Cap the body at C{limit} (inflated) bytes, from now on."""
        self._limit = limit
        self._checkChunk(self._largestChunk)

    def chunkAnnounced(self, size: int) -> None:
        """A chunked body's next chunk will be C{size} bytes (still encoded)."""
        self._largestChunk = max(self._largestChunk, size)
        self._checkChunk(size)

    def _checkChunk(self, size: int) -> None:
        # As a Content-Length past the cap is refused before reading: one
        # chunk larger than the whole body may be is refused before it comes.
        if self._limit is not None and size > self._limit and not self._overLimit:
            self._refuseOverLimit()

    def _refuseOverLimit(self) -> None:
        self._overLimit = True
        self._fail(Failure(TooLarge(f"Request body exceeds the limit of {self._limit} bytes")))

    @property
    def received(self) -> int:
        """Bytes of body (after inflation) delivered so far."""
        return self._received

    # Moved past this object (see gitserve.http.inbound) --------------------

    @property
    def inflated(self) -> bool:
        """Whether the body arrives compressed, to be inflated here."""
        return isinstance(self._decoder, Inflater)

    def takesDirectly(self) -> bool:
        """
        Whether the body's next bytes may go from the socket to the
        consumer without passing through here: it reads on (a consumer
        that keeps up, nothing refused or being dropped), the bytes need
        no decoding, and nothing that came before them is still held.
        """
        return (
            self._consumer is not None
            and not self._networkPaused
            and not self._pausedByConsumer
            and not self._discarding
            and not self._complete
            and self._failure is None
            and isinstance(self._decoder, Identity)
            and self._decoder.drained
        )

    def room(self) -> int | None:
        """How many more bytes the body's cap lets in; L{None}: no cap."""
        return None if self._limit is None else self._limit - self._received

    def movedDirectly(self, count: int) -> None:
        """C{count} bytes reached the consumer without passing through here."""
        self._received += count
        self.spliced += count

    def _pauseNetwork(self) -> None:
        if not self._networkPaused:
            self._networkPaused = True
            self._network.pauseProducing()

    def _resumeNetwork(self) -> None:
        if self._networkPaused:
            self._networkPaused = False
            self._network.resumeProducing()

    def holdsNetwork(self) -> bool:
        """
        Whether this body wants the network paused right now (no consumer
        yet, or a consumer that is backed up): the channel asks, so that its
        own resuming, when its writes drain, does not undo the body's pause.
        Once the client sent it all, the connection's pace is the channel's
        business again (pipelined requests), whatever the consumer does.
        """
        return self._networkPaused and not self._complete

    # Fed by the request -------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """A piece of the body as it came off the wire (still encoded)."""
        if self._discarding:
            self._discarded += len(data)
            if self._discarded > self._discardLimit and self._onDiscardExceeded is not None:
                exceeded, self._onDiscardExceeded = self._onDiscardExceeded, None
                exceeded()
            return
        if self._failure is not None:
            return
        self._decoder.feed(data)
        self._deliver()

    def allReceived(self) -> None:
        """The client finished sending."""
        self._complete = True
        if self._failure is not None or self._discarding:
            return
        self._deliver()

    def connectionLost(self) -> None:
        """The client went away."""
        if not self._complete:
            self._fail(Failure(BodyLost("client disconnected during the request body")))

    def _deliver(self) -> None:
        """
        Hand the consumer what has arrived, one bounded piece at a time,
        while it keeps accepting; then read on, or finish, or stay paused.
        """
        while self._consumer is not None and not self._pausedByConsumer:
            try:
                piece = self._decoder.step()
            except Refusal:
                self._fail(Failure())
                return
            if not piece:
                break
            self._received += len(piece)
            if self._limit is not None and self._received > self._limit:
                self._refuseOverLimit()
                return
            self._consumer.write(piece)
        if self._consumer is None or self._pausedByConsumer or not self._decoder.drained:
            self._pauseNetwork()
        elif self._complete:
            try:
                self._decoder.finish()
            except Refusal:
                self._fail(Failure())
                return
            self._finish()
        else:
            self._resumeNetwork()

    # Used by the resource -----------------------------------------------

    def readAll(self) -> Deferred[bytes]:
        """The whole body, once it has arrived; fails past the limit."""
        collector = _Collector()
        return self.streamTo(collector).addCallback(lambda _: b"".join(collector.chunks))

    def streamTo(self, consumer: IConsumer) -> Deferred[int]:
        """
        Write the body into C{consumer} as it arrives; this body registers
        itself as the consumer's (streaming) producer for back-pressure.

        @return: fires when the whole body was written (the consumer is
            unregistered by then), or fails with an L{Refusal} or
            L{BodyLost}.
        """
        self._done = Deferred()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self._done.errback(failure)
            return self._done
        self._consumer = consumer
        consumer.registerProducer(self, True)
        done = self._done
        if self._onFirstRead is not None:
            onFirstRead, self._onFirstRead = self._onFirstRead, None
            onFirstRead()
        self._deliver()
        return done

    def discard(self, limit: int, onExceeded: Callable[[], None]) -> None:
        """
        Read and drop the rest of the body: the request was answered without
        it, and the connection must reach the end of the body to stay in sync.
        Past C{limit} bytes, C{onExceeded} is called (to drop the connection):
        refusing a 5 GB upload must not mean reading 5 GB.
        """
        self._discarding = True
        self._discardLimit = limit
        self._onDiscardExceeded = onExceeded
        self._decoder = Identity()
        self._detach()
        self._resumeNetwork()

    def _detach(self) -> None:
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            consumer.unregisterProducer()

    def _finish(self) -> None:
        self._detach()
        done, self._done = self._done, None
        if done is not None:
            done.callback(self._received)

    def _fail(self, failure: Failure) -> None:
        self._detach()
        self._decoder = Identity()
        # Stop reading first: whoever handles the failure decides whether to
        # discard the rest or to drop the connection, and may do so at once,
        # inside the errback below (pausing after it undid a discard() and
        # left the connection stalled until Twisted's timeout).
        self._pauseNetwork()
        done, self._done = self._done, None
        if done is not None:
            done.errback(failure)
        else:
            self._failure = failure

    # IPushProducer, for the consumer --------------------------------------

    def pauseProducing(self) -> None:
        self._pausedByConsumer = True
        self._pauseNetwork()

    def resumeProducing(self) -> None:
        self._pausedByConsumer = False
        if self._consumer is not None:
            self._deliver()

    def stopProducing(self) -> None:
        """
        The consumer is gone (git closed its stdin): what is left of the
        body is dropped, and whoever answers the request ends it.
        """
        self._detach()
        self._discarding = True
        self._decoder = Identity()
