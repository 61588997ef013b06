"""
HTTP connections for git: POST bodies streamed as they arrive instead of
spooled, and the limits that keep one slow or hostile client from holding the
daemon: header size and count, a header deadline, a stall timeout, a minimum
body rate, and a cap on a chunked body's announced sizes.

Every deadline here measures time spent waiting on the client, never the
length of a transfer: a clone that takes an hour but keeps moving bytes is
never cut, while a client that stops sending or stops reading is dropped
(and its git child ended, through the request's disconnect handling).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReactorTime, ITransport
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, parse_qs
from twisted.web.server import Request, Site

from gitserve.core.connections import OpenConnections
from gitserve.core.metrics import IMetrics, NullMetrics
from gitserve.http.body import RequestBody
from gitserve.twistedinternals import DeferredContinueMixin, sendfileDescriptor, watchChunkSizes

# A refused request's body is read and dropped up to this much, so the
# connection can carry the answer and stay open; past it, the connection closes.
DISCARD_LIMIT = 1024 * 1024

DEFAULT_HEADER_TIMEOUT = 30.0

# A request body must average at least this many bytes a second over each
# idle-timeout window (Apache's mod_reqtimeout asks for 500): a client that
# trickles a byte at a time keeps resetting the idle timer for ever, while
# its push holds a git child and a job slot. Time the server itself holds the
# body back (git not reading, no job slot yet) never counts against it.
MIN_BODY_RATE = 256
DEFAULT_IDLE_TIMEOUT = 120.0


class IConnectionTransport(ITransport, IPushProducer):
    """
    What gitserve uses of a connection's transport, as a type.

    Twisted types C{HTTPChannel.transport} as a bare L{ITransport}, but every
    transport a channel runs on (TCP, UNIX, TLS) is also the push producer of
    what the client sends, which is paused for back-pressure, and can be
    aborted, which only L{twisted.internet.interfaces.ITCPTransport} declares.
    """

    def abortConnection() -> None:
        """Close at once, dropping whatever is still buffered to send."""


def connectionOf(channel: HTTPChannel) -> IConnectionTransport:
    """
    C{channel}'s transport, as what it is (see L{IConnectionTransport}).

    Only a cast: a channel has its transport from C{makeConnection} on, before
    it reads a byte, so L{None} is not a case to handle.
    """
    return cast(IConnectionTransport, channel.transport)


def isAnswerable(request: Request) -> bool:
    """
    Whether C{request} may still be answered: not answered yet, and its
    client still there. The one test every late answer makes.
    """
    return (
        not request.finished
        and not getattr(request, "answered", False)
        and not getattr(request, "lost", False)
    )


def canSendfile(request: Request) -> bool:
    """
    Whether bytes for C{request} may go to its socket behind Twisted's back
    (C{sendfile(2)}, C{splice(2)}: L{gitserve.core.direct}): its connection
    is a plain TCP or UNIX socket, not TLS nor a C{haproxy:} listener's
    PROXY-protocol wrapper.
    """
    return sendfileDescriptor(getattr(request.channel, "transport", None)) is not None


def _answerAndClose(channel: HTTPChannel, status: bytes, message: str) -> None:
    """
    Answer a request that never reached a L{GitRequest} (its request line or
    headers were refused) and close: a short text the client can show,
    rather than the silent close or empty 400 Twisted gives.
    """
    body = (message + "\n").encode("utf-8")
    connectionOf(channel).write(
        b"HTTP/1.1 %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (status, len(body), body)
    )
    channel.loseConnection()


class GitChannel(DeferredContinueMixin, HTTPChannel):
    """
    An HTTP channel that renders a POST as soon as its headers are in, with
    its body still to come, and that guards the connection.

    Twisted's idle timeout (C{timeOut}) is reset by every byte received and
    covers an idle keep-alive connection and a push body that stops coming,
    but it is switched off while a response is produced, and a client that
    trickles one header byte a minute keeps resetting it. So:

      - C{headerTimeout}: the whole header block must arrive within this
        many seconds of its first byte;
      - C{stallTimeout}: while the client does not read (the transport's
        buffer is full and has paused us), the connection may stay stuck
        this long. Waiting on git (the client caught up, git still working)
        never counts, and neither does a push body the server holds back
        (see L{timeoutConnection});
      - a request body must arrive at L{MIN_BODY_RATE} bytes a second or
        more, measured over windows of C{stallTimeout}, except in windows
        where the server held it back.

    Headers past Twisted's own limits (C{totalHeadersSize}, C{maxHeaders},
    a line longer than C{MAX_LENGTH}) get a 431 (400 for the request line)
    with a message, and a close.
    """

    site: GitSite
    headerTimeout: float | None = None
    stallTimeout: float | None = None
    _headerCall: IDelayedCall | None = None
    _stallCall: IDelayedCall | None = None
    _bodyCall: IDelayedCall | None = None
    _bodyBytes = 0
    _bodyHeld = False
    _awaitingHeaders = True
    # The request being received: its request line, header bytes and count.
    _requestLine = b""
    _headerBytes = 0
    _headerCount = 0
    log = Logger()

    # Receiving the head ------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if not self._requestLine and not line:
            # Before a request line: the blank line Twisted tolerates.
            super().lineReceived(line)
            return
        self._headerBytes += len(line)
        if self._headerBytes > self.totalHeadersSize:
            self._refuseHead(not self._requestLine)
            return
        isRequestLine = not self._requestLine
        if isRequestLine:
            self._requestLine = line
        super().lineReceived(line)
        if isRequestLine and self.requests:
            request = self.requests[-1]
            if isinstance(request, GitRequest) and len(line.split()) == 3:
                command, path, version = line.split()
                request.requestLineReceived(command, path, version)

    def lineLengthExceeded(self, line: bytes) -> None:
        self._refuseHead(not self._requestLine)

    def _refuseHead(self, inRequestLine: bool) -> None:
        if inRequestLine:
            _answerAndClose(self, b"400 Bad Request", "Request line too long")
        else:
            _answerAndClose(
                self, b"431 Request Header Fields Too Large", "Request header fields too large"
            )

    def headerReceived(self, line: bytes) -> bool:
        self._headerCount += 1
        if self._headerCount > self.maxHeaders:
            self._refuseHead(False)
            return False
        # Security: Twisted accepts "Transfer-Encoding: identity" and then
        # ignores it, framing the body by Content-Length (or as empty). A
        # proxy in front may frame the same bytes otherwise, which is how
        # requests are smuggled; git only ever sends "chunked", so anything
        # else is refused here.
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"transfer-encoding" and value.strip().lower() != b"chunked":
            _answerAndClose(self, b"400 Bad Request", "Unsupported Transfer-Encoding")
            return False
        return bool(super().headerReceived(line))

    def allHeadersReceived(self) -> None:
        self._awaitingHeaders = False
        self._cancel("_headerCall")
        self._requestLine = b""
        self._headerBytes = self._headerCount = 0
        request = self.requests[-1]
        super().allHeadersReceived()
        if isinstance(request, GitRequest) and request.body is not None:
            watchChunkSizes(self, request.body.chunkAnnounced)
            request.headersComplete()
            if self.stallTimeout and self._pendingBody() is not None:
                self._startBodyWindow()

    def requestDone(self, request: Any) -> None:
        self._awaitingHeaders = True
        super().requestDone(request)

    # Pacing ------------------------------------------------------------------

    def resumeProducing(self) -> None:
        self._cancel("_stallCall")
        super().resumeProducing()
        # HTTPChannel resumes reading whenever its own writes drain. A body
        # that holds the network paused (git's stdin is backed up) keeps it
        # paused, or a push would be read faster than git takes it.
        body = self._pendingBody()
        if body is not None and body.holdsNetwork():
            connectionOf(self).pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if self._awaitingHeaders and self._headerCall is None and self.headerTimeout:
            self._headerCall = self.callLater(self.headerTimeout, self._headersTooSlow)
        if self._bodyCall is not None:
            self._bodyBytes += len(data)
        super().dataReceived(data)
        body = self._pendingBody()
        if body is not None and body.holdsNetwork():
            self._bodyHeld = True

    def bodyBytesTakenDirectly(self, count: int) -> None:
        """
        C{count} bytes of a request body were taken off the socket without
        passing through L{dataReceived} (see L{gitserve.http.inbound}): they
        count for the idle timeout and the body's rate just the same.
        """
        self.resetTimeout()
        if self._bodyCall is not None:
            self._bodyBytes += count

    def allContentReceived(self) -> None:
        self._cancel("_bodyCall")
        super().allContentReceived()

    def _pendingBody(self) -> Any:
        """The streamed body of the request being received, if unfinished."""
        body = getattr(self.requests[-1], "body", None) if self.requests else None
        return body if body is not None and not body.complete else None

    def _startBodyWindow(self) -> None:
        self._bodyBytes = 0
        self._bodyHeld = False
        self._bodyCall = self.callLater(self.stallTimeout, self._checkBodyRate)

    def _checkBodyRate(self) -> None:
        self._bodyCall = None
        body = self._pendingBody()
        if body is None:
            return
        held = self._bodyHeld or body.holdsNetwork()
        if not held and self._bodyBytes < MIN_BODY_RATE * (self.stallTimeout or 0):
            self._drop(
                f"request body slower than {MIN_BODY_RATE} bytes/s over {{seconds}}s",
                self.stallTimeout,
            )
            return
        self._startBodyWindow()

    def pauseProducing(self) -> None:
        if self.stallTimeout and self._stallCall is None:
            self._stallCall = self.callLater(self.stallTimeout, self._clientStalled)
        super().pauseProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel("_headerCall")
        self._cancel("_stallCall")
        self._cancel("_bodyCall")
        super().connectionLost(reason)
        self.site.channelClosed(self)

    def timeoutConnection(self) -> None:
        """
        Twisted's idle timeout fired. A request whose body the server itself
        stopped reading (waiting for a job slot, or for git to catch up) is
        not an idle client: wait on, and time the client again from now.
        """
        for request in self.requests:
            body = getattr(request, "body", None)
            if body is not None and not body.complete and body.holdsNetwork():
                self.setTimeout(self.timeOut)
                return
        super().timeoutConnection()

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        if call is not None:
            setattr(self, name, None)
            if call.active():
                call.cancel()

    def _headersTooSlow(self) -> None:
        self._headerCall = None
        self._drop("headers not complete after {seconds}s", self.headerTimeout)

    def _clientStalled(self) -> None:
        self._stallCall = None
        self._drop("client read nothing for {seconds}s", self.stallTimeout)

    def _drop(self, why: str, seconds: float | None) -> None:
        self.log.info(
            "dropping {peer}: " + why, peer=str(connectionOf(self).getPeer()), seconds=seconds
        )
        # Abort rather than close: a close would wait for the very buffer the
        # client does not read, and the request's disconnect handling ends
        # its git child.
        connectionOf(self).abortConnection()


class GitRequest(Request):
    """
    A request that is rendered as soon as its headers arrive, when it is a
    POST, and whose body is then read through L{body} as a stream.

    It owns its body and everything about its own progress; the channel only
    tells it what arrived.

    @ivar body: the streamed body of a POST, L{None} for other methods.
    @ivar answersContinue: whether this request answers
        C{Expect: 100-continue} itself, once its body is first read.
    @ivar answered: L{finish} was called (the response may still wait for
        the rest of the body to be dropped).
    @ivar lost: the client went away.
    """

    body: RequestBody | None = None
    answersContinue = False
    answered = False
    lost = False
    _continueSent = False
    _finishPending = False
    _requestLine: tuple[bytes, bytes, bytes] | None = None
    # Set once authentication has decided (see HTTPContext.userFor); the
    # access log shows the user.
    authenticatedUser: str | None = None
    userDecided = False

    def requestLineReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The channel read this request's first line."""
        self._requestLine = (command, path, version)

    def gotLength(self, length: int | None) -> None:
        if self._requestLine is None or self._requestLine[0] != b"POST":
            super().gotLength(length)
            return
        # A POST: its body goes through self.body as a stream, never into
        # self.content (no temporary file to spool it to, which Twisted opens
        # for chunked or large bodies).
        # Twisted declares Request.content as C{= None} at class level, which
        # mypy reads as "always None"; it documents (and gotLength sets) a file.
        self.content = BytesIO()  # type: ignore[assignment]
        expect = self.requestHeaders.getRawHeaders(b"Expect", [b""])[0]
        self.answersContinue = (
            expect.lower() == b"100-continue" and self._requestLine[2] == b"HTTP/1.1"
        )
        self.body = RequestBody(
            connectionOf(self.channel),
            contentEncoding=self.requestHeaders.getRawHeaders(b"Content-Encoding", [None])[-1],
            onFirstRead=self._sendContinue if self.answersContinue else None,
        )

    def headersComplete(self) -> None:
        """Render a streamed POST now, with its body still to come."""
        assert self._requestLine is not None
        # What Request.requestReceived() does before process(), minus the form
        # parsing: git bodies are never forms.
        self.method, self.uri, self.clientproto = self._requestLine
        self.path, _, query = self.uri.partition(b"?")
        self.args = parse_qs(query, 1) if query else {}
        self.process()

    def _sendContinue(self) -> None:
        """The deferred answer to C{Expect: 100-continue}: the body is wanted now."""
        if not self.startedWriting and not self.lost:
            self._continueSent = True
            connectionOf(self.channel).write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def handleContentChunk(self, data: bytes) -> None:
        if self.body is not None:
            self.body.dataReceived(data)
        else:
            super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self.body is None:
            super().requestReceived(command, path, version)
            return
        self.body.allReceived()
        if self._finishPending:
            super().finish()

    def finish(self) -> None:
        """
        Finish, once the body has been read: a response that went out before
        the end of its request's body waits for the rest to be dropped, so
        the connection stays in step (or closes, past L{DISCARD_LIMIT}).

        A body refused for its size is not read on: the answer goes out at
        once, the server's side of the connection closes after it, and what
        the client still sends is dropped (up to L{DISCARD_LIMIT}) only so
        that a close with unread data, which makes the kernel send a reset,
        does not destroy the answer before the client has read it.
        """
        self.answered = True
        if self.body is None or self.body.complete or self.lost:
            super().finish()
            return
        if self.answersContinue and not self._continueSent:
            # The client waits for a "100 Continue" that never comes and
            # sends no body: closing after the answer ends the exchange.
            self.body.discard(0, lambda: None)
            connectionOf(self.channel).loseConnection()
            return
        self._finishPending = True
        self.body.discard(DISCARD_LIMIT, connectionOf(self.channel).loseConnection)
        if self.body.overLimit:
            self.channel.persistent = False
            halfClose = getattr(self.channel.transport, "loseWriteConnection", None)
            if halfClose is not None:
                halfClose()

    def connectionLost(self, reason: Failure) -> None:
        self.lost = True
        if self.body is not None:
            self.body.connectionLost()
        super().connectionLost(reason)


# The methods counted by name; any other (a client may send anything) counts
# as "other", so the metrics' labels stay bounded.
KNOWN_METHODS = frozenset(
    (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE")
)


def methodLabel(method: bytes | None) -> str:
    """An HTTP method as a bounded metrics label."""
    return method.decode("ascii") if method in KNOWN_METHODS else "other"


def routeKindOf(request: Any) -> str:
    """
    What kind of route answered C{request}, for the metrics: what the
    resource that answered set as C{routeKind} (C{smart}, C{dumb},
    C{health}), else C{browse} for an HTML page, else C{other}.
    """
    kind = getattr(request, "routeKind", None)
    if kind is not None:
        return str(kind)
    contentType = request.responseHeaders.getRawHeaders(b"Content-Type", [b""])[0]
    if contentType.startswith(b"text/html"):
        return "browse"
    return "other"


class GitSite(Site):
    """
    A Site whose connections are L{GitChannel}s, and which knows them all, so
    that a shutdown can close them once their requests are answered (a
    response still in a socket buffer when the reactor stops would be cut
    short).
    """

    # HTTPFactory is typed as building the _GenericHTTPChannelProtocol wrapper
    # (which only picks HTTP/2 over TLS ALPN); a GitSite builds its GitChannel
    # directly, which Twisted's Factory supports but its annotation does not.
    protocol = GitChannel  # type: ignore[assignment]
    requestFactory = GitRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: Any,
        *,
        idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
        headerTimeout: float = DEFAULT_HEADER_TIMEOUT,
        reactor: IReactorTime | None = None,
        metrics: IMetrics | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, timeout=idleTimeout, reactor=reactor, **kwargs)
        self.metrics: IMetrics = metrics if metrics is not None else NullMetrics()
        self.headerTimeout = headerTimeout
        self.stallTimeout = idleTimeout
        self.channels: OpenConnections[GitChannel] = OpenConnections()

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.headerTimeout = self.headerTimeout
        channel.stallTimeout = self.stallTimeout
        self.channels.add(channel)
        return channel

    def log(self, request: Any) -> None:
        """
        Write the access log line, and count the request for the metrics.
        Health checks (a load balancer's, every second or two) are counted
        but not logged: they would drown the lines that matter.
        """
        kind = routeKindOf(request)
        if kind != "health":
            super().log(request)
        self.metrics.requestFinished("http", methodLabel(request.method), kind, int(request.code))

    def channelClosed(self, channel: GitChannel) -> None:
        """A connection ended."""
        self.channels.discard(channel)

    def drainConnections(self) -> Deferred[None]:
        """
        Close every connection once the request it is answering (if any) is
        done: idle keep-alive connections now, busy ones after their response.
        Closing (not aborting) sends what is still buffered first.

        @return: fires when no connection is left.
        """
        for channel in self.channels:
            channel.persistent = False
            if not channel.requests:
                channel.loseConnection()
        return self.channels.whenEmpty()

    def abortConnections(self) -> None:
        """Drop every connection at once: the last step of a shutdown."""
        for channel in self.channels:
            connectionOf(channel).abortConnection()
