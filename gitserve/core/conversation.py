"""
Protocol v2 upload-pack over a full-duplex door (SSH, git://), answered one
request at a time as HTTP answers it, so that its fetches go through the
pack cache.

Over SSH and git:// one git child usually talks with the client for the
whole conversation, which leaves the cache nothing to share: no whole
request and answer it could key. Protocol v2 is spoken the same way on every
transport: the capability advertisement, then requests (C{ls-refs},
C{fetch}, ...) each ended by a flush packet and answered whole, until a
flush where a request would start (or EOF) ends it. So with the pack cache
on, a v2 upload-pack conversation is carried out as over HTTP: C{git
upload-pack --stateless-rpc --advertise-refs} for the advertisement, then one
C{--stateless-rpc} child (or a cache reader) per request, their answers one
after the other on the stream. v0/v1 negotiation is stateful (its stateless
form is another protocol, with other capabilities), so it keeps its one
child.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProducer, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from gitserve.core.errors import InvalidRequest, Refusal, TooLarge
from gitserve.core.operations import GitCore, GitOperation
from gitserve.core.packcache import IPackReader, Lookup, Source
from gitserve.core.pktline import ProtocolError, errorLine, parseLength
from gitserve.core.policy import Service
from gitserve.core.process import GitOutcome, GitProcessProtocol
from gitserve.core.sendfile import SendfileReader
from gitserve.interfaces import IGitOutput, IStdinSource
from gitserve.twistedinternals import sendfileDescriptor

# The most a request may hold: http.maxRequestBuffer's default, the cap the
# same request has over HTTP.
MAX_REQUEST = 10 * 1024 * 1024


class DuplexJob(Protocol):
    """What a full-duplex door runs: a git child, or a conversation of them."""

    done: Deferred[GitOutcome]

    def streamStdin(self, source: IStdinSource) -> None:
        """The client's stream, from now on."""


def startConversation(
    core: GitCore, operation: GitOperation, output: IGitOutput, plainTransport: object = None
) -> Deferred[DuplexJob]:
    """
    What a full-duplex door starts for C{operation}: with the pack cache on,
    a protocol v2 fetch is a L{CachedConversation}; anything else is one git
    child talking with the client, as before.

    @param plainTransport: the door's socket when cache answers may go out
        on it with sendfile(2) (git://); L{None} otherwise (SSH).

    @return: fires once the first child has a job slot (cancel it to give
        up the place), or fails with L{gitserve.core.errors.Busy}.
    """
    if (
        core.packCache is None
        or operation.service is not Service.UPLOAD_PACK
        or operation.protocolVersion < 2
    ):
        return core.start(operation, output)  # type: ignore[return-value]
    return CachedConversation(core, operation, output, plainTransport).advertise()


def _requestEnd(buffer: bytearray) -> int | None:
    """
    Where the first request in C{buffer} ends (after its flush packet), or
    L{None} while it is incomplete.

    @raise ProtocolError: a packet length git would not send.
    """
    at = 0
    while len(buffer) - at >= 4:
        length = parseLength(bytes(buffer[at : at + 4]))
        if length == 0:
            return at + 4
        if length < 4:
            at += 4
            continue
        if len(buffer) - at < length:
            return None
        at += length
    return None


@implementer(IGitOutput)
class CachedConversation:
    """
    One protocol v2 upload-pack conversation, request by request.

    It is the consumer of the client's stream: requests are taken one at a
    time, once the answer before is whole (git's client sends none before),
    and a client that sends more than L{MAX_REQUEST} meanwhile is paused
    (L{gitserve.core.duplex.DuplexStdin} stops reading it). Each answer is
    written into the door's output by its own child or cache reader, which
    registers as the output's producer for as long as it writes.

    @ivar done: fires with how the conversation ended, as a git child's
        outcome: the client's flush or EOF after whole answers is success;
        the first answer that failed ends it with that answer's outcome.
    """

    def __init__(
        self,
        core: GitCore,
        operation: GitOperation,
        output: IGitOutput,
        plainTransport: object = None,
    ) -> None:
        self.core = core
        self.plainTransport = plainTransport
        # Each request is a stateless one, as over HTTP.
        self.operation = replace(operation, statelessRpc=True)
        self.output = output
        self.done: Deferred[GitOutcome] = Deferred()
        self.bytesOut = 0
        self._buffer = bytearray()
        self._client: IPushProducer | None = None
        self._answering = True
        self._pending: Deferred[object] | None = None
        self._eof = False
        self._ended = False

    # The advertisement ---------------------------------------------------------

    def advertise(self) -> Deferred[DuplexJob]:
        """Start git's capability advertisement; fires with this conversation."""
        advertisement = replace(self.operation, advertise=True)

        def started(protocol: GitProcessProtocol) -> DuplexJob:
            protocol.closeStdin()
            protocol.done.addCallback(self._answered)
            return self

        return self.core.start(advertisement, self.output).addCallback(started)

    # The client's stream -----------------------------------------------------

    def streamStdin(self, source: IStdinSource) -> None:
        """Read the client's requests from C{source} (the door's stream)."""
        source.streamTo(self).addCallbacks(self._clientEnded, self._clientLeft)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._client = producer  # type: ignore[assignment]

    def unregisterProducer(self) -> None:
        self._client = None

    def write(self, data: bytes) -> None:
        self._buffer += data
        if not self._answering:
            self._next()
        elif len(self._buffer) > MAX_REQUEST and self._client is not None:
            self._client.pauseProducing()

    def _clientEnded(self, received: int) -> None:
        self._eof = True
        if not self._answering:
            self._next()

    def _clientLeft(self, failure: Failure) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._end(GitOutcome(None, self.bytesOut, False, failure, ""))

    # Requests and answers --------------------------------------------------------

    def _next(self) -> None:
        """Answer the next whole request, end on a flush or EOF, or wait for more."""
        if self._ended:
            return
        try:
            end = _requestEnd(self._buffer)
        except ProtocolError as e:
            self._refused(InvalidRequest(f"protocol error: {e}"))
            return
        if end is None:
            if len(self._buffer) > MAX_REQUEST:
                self._refused(TooLarge(f"a request exceeds the limit of {MAX_REQUEST} bytes"))
            elif self._eof:
                if self._buffer:
                    self._refused(InvalidRequest("the request ended inside a packet"))
                else:
                    self._end(GitOutcome(0, self.bytesOut, False, None, ""))
            elif self._client is not None:
                self._client.resumeProducing()
            return
        body = bytes(self._buffer[:end])
        del self._buffer[:end]
        if end == 4:
            # A flush where a request would begin: the client is done.
            self._end(GitOutcome(0, self.bytesOut, False, None, ""))
            return
        self._answering = True
        self._serve(body)

    def _serve(self, body: bytes) -> None:
        cache = self.core.packCache
        assert cache is not None

        def start(lookup: Lookup) -> Deferred[GitProcessProtocol | IPackReader]:
            return cache.start(self.core, lookup, self.output, makeReader)

        def running(job: GitProcessProtocol | IPackReader) -> None:
            self._pending = None
            job.done.addCallback(self._answered)

        def failed(failure: Failure) -> None:
            self._pending = None
            if not self._ended:
                self._refused(failure.value if failure.check(Refusal) else None, failure)

        makeReader = None
        if sendfileDescriptor(self.plainTransport) is not None:

            def makeReader(
                source: Source, operation: GitOperation, bytesIn: int, quiet: bool
            ) -> IPackReader:
                return SendfileReader(
                    source,
                    self.output,
                    self.plainTransport,
                    operation,
                    bytesIn,
                    quiet,
                    self.core.clock,
                )

        pending = cache.lookup(self.operation, body).addCallback(start)
        self._pending = pending  # type: ignore[assignment]
        pending.addCallbacks(running, failed)

    def _answered(self, outcome: GitOutcome) -> GitOutcome:
        if not outcome.started and outcome.failure is not None and outcome.failure.check(Refusal):
            # Refused before a byte of this answer (the cache's flight found
            # no job slot): the client is still at a packet boundary.
            self._refused(outcome.failure.value, outcome.failure)
            return outcome
        self.bytesOut += outcome.bytesOut
        if not outcome.succeeded:
            self._end(replace(outcome, bytesOut=self.bytesOut))
        else:
            self._answering = False
            self._next()
        return outcome

    def _refused(self, refusal: Refusal | None, failure: Failure | None = None) -> None:
        """
        End with what the client is told: a refusal's words as an C{ERR}
        packet, or, for a server failure, a broken connection.

        A refusal comes between two answers (a request that is bad, or that
        found no job slot), where the stream is at a packet boundary: git
        reads an C{ERR} packet there and shows C{remote error: <message>},
        so the client is told why rather than cut off, and what it was
        answered before stays whole (the door closes, it does not abort).
        """
        message = refusal.message if refusal is not None else "git could not be started"
        if refusal is not None:
            line = errorLine(message)
            self.output.write(line)
            self.bytesOut += len(line)
        self._end(
            GitOutcome(
                None, self.bytesOut, refusal is not None, failure or Failure(refusal), message
            )
        )

    def _end(self, outcome: GitOutcome) -> None:
        if self._ended:
            return
        self._ended = True
        if self._client is not None:
            # Whatever the client still sends is not read.
            self._client.stopProducing()
        self.done.callback(outcome)
