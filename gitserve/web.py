"""
The HTTP side: a request that streams POST bodies, the route table, and the
resource that answers every request.

Routing works like git http-backend's: the end of the path names the route
(C{info/refs}, C{git-upload-pack}, ...), the rest names the repository, which
L{resolveRepository} turns into a L{Repository} exactly once.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, parse_qs
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gitserve import dumb
from gitserve.advertisement import VERSION_2, CapabilityCache
from gitserve.body import BodyLost, RequestBody
from gitserve.errors import (
    BadRequest,
    Forbidden,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    Unauthorized,
    UnsupportedMediaType,
    renderError,
)
from gitserve.headers import startGitResponse
from gitserve.housekeeping import sweepStaleQuarantines
from gitserve.pktline import FLUSH, ProtocolError, parsePktLines, pktLine
from gitserve.policy import Policy, Service
from gitserve.repository import ConfigCache, Repository, parseGitSize, resolveRepository
from gitserve.service import Caller, GitBackend, GitProcessProtocol

if TYPE_CHECKING:
    from gitserve.limits import JobLimiter

# http-backend's default for http.maxRequestBuffer: upload-pack negotiation is
# buffered whole (a half-duplex client cannot read while it sends), so it is
# capped.
MAX_REQUEST_BUFFER = 10 * 1024 * 1024

log = Logger()

# Default --max-push-size: a push body (inflated) larger than this is refused.
MAX_PUSH_SIZE = 2 * 1024**3

# A refused request's body is read and dropped up to this much, so the
# connection can carry the answer and stay open; past it, the connection closes.
DISCARD_LIMIT = 1024 * 1024

# Git-Protocol: colon-separated key[=value] items (gitprotocol-v2(5)); the
# header becomes GIT_PROTOCOL in git's environment, so it is held to that.
MAX_GIT_PROTOCOL = 256
_GIT_PROTOCOL = re.compile(
    rb"[A-Za-z0-9._-]+(=[A-Za-z0-9._-]*)?(:[A-Za-z0-9._-]+(=[A-Za-z0-9._-]*)?)*"
)
_PROTOCOL_VERSION = re.compile(rb"(?:^|:)version=([0-9]+)(?::|$)")


class GitChannel(HTTPChannel):
    """
    An HTTP channel that tells its request when the headers are complete.

    Twisted Web only renders once a body has fully arrived (spooled to a
    temporary file). L{GitRequest} needs the moment the headers are known, to
    decide and to start git before the body comes.
    """

    def headerReceived(self, line: bytes) -> bool:
        # Security: Twisted accepts "Transfer-Encoding: identity" and then
        # ignores it, framing the body by Content-Length (or as empty). A
        # proxy in front may frame the same bytes otherwise, which is how
        # requests are smuggled; git only ever sends "chunked", so anything
        # else is refused here.
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"transfer-encoding" and value.strip().lower() != b"chunked":
            self._respondToBadRequestAndDisconnect()
            return False
        return super().headerReceived(line)

    def allHeadersReceived(self) -> None:
        # HTTPChannel keeps the request line in these attributes until
        # allContentReceived(); reading them here is the one place gitserve
        # leans on Twisted internals (tested against the pinned range).
        command, path, version = self._command, self._path, self._version
        request = self.requests[-1]
        if isinstance(request, GitRequest) and command == b"POST":
            request.streamed = True
        super().allHeadersReceived()
        if isinstance(request, GitRequest):
            request.headersReceived(command, path, version)

    def _send100Continue(self) -> None:
        # Twisted says "100 Continue" as soon as the headers are in. A
        # streamed POST says it when its body is first read instead, so that
        # a refusal decided from the headers reaches the client before it
        # sends a byte of the body.
        request = self.requests[-1]
        if isinstance(request, GitRequest) and request.streamed:
            request.continueWanted = True
        else:
            super()._send100Continue()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        # HTTPChannel resumes reading whenever its own writes drain. A body
        # that holds the network paused (git's stdin is backed up) keeps it
        # paused, or a push would be read faster than git takes it.
        request = self.requests[-1] if self.requests else None
        if isinstance(request, GitRequest) and request.body is not None:
            if request.body.holdsNetwork():
                self.transport.pauseProducing()


class GitRequest(Request):
    """
    A request that is rendered as soon as its headers arrive, when it is a
    POST, and whose body is then read through L{body} as a stream.

    @ivar body: the streamed body of a POST, L{None} for other methods.
    """

    body: RequestBody | None = None
    streamed = False
    continueWanted = False
    _continueSent = False
    _finishPending = False
    # Set once authentication has decided (see GitServer.userFor); the
    # access log shows the user.
    authenticatedUser: str | None = None
    userDecided = False

    def gotLength(self, length: int | None) -> None:
        if self.streamed:
            # The body goes through L{body}, never into self.content: no
            # temporary file to spool it to (Twisted opens one for chunked or
            # large bodies).
            self.content = BytesIO()
            return
        super().gotLength(length)

    def headersReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Render a POST now, with its body still to come."""
        if not self.streamed:
            return
        self.body = RequestBody(
            self.channel.transport,
            limit=MAX_PUSH_SIZE,
            contentEncoding=self.requestHeaders.getRawHeaders(b"Content-Encoding", [None])[-1],
            onFirstRead=self._sendContinue if self.continueWanted else None,
        )
        # What Request.requestReceived() does before process(), minus the form
        # parsing: git bodies are never forms.
        self.method, self.uri, self.clientproto = command, path, version
        self.path, _, query = self.uri.partition(b"?")
        self.args = parse_qs(query, 1) if query else {}
        self.process()

    def _sendContinue(self) -> None:
        """The deferred answer to C{Expect: 100-continue}: the body is wanted now."""
        if not self.startedWriting and not self._disconnected:
            self._continueSent = True
            self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

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
        """
        if self.body is not None and not self.body.complete and not self._disconnected:
            self._finishPending = True
            if self.continueWanted and not self._continueSent:
                # The client waits for a "100 Continue" that never comes and
                # sends no body: closing after the answer ends the exchange.
                self.body.discard(0, lambda: None)
                self.channel.transport.loseConnection()
                return
            self.body.discard(DISCARD_LIMIT, self.channel.transport.loseConnection)
            return
        super().finish()

    def connectionLost(self, reason: Failure) -> None:
        if self.body is not None:
            self.body.connectionLost()
        super().connectionLost(reason)


class GitSite(Site):
    """A Site whose connections stream POST bodies (see L{GitChannel})."""

    protocol = GitChannel
    requestFactory = GitRequest
    displayTracebacks = False


def gitProtocolOf(request: Request) -> bytes | None:
    """
    The validated C{Git-Protocol} header, or L{None} without one.

    @raise BadRequest: a header that is repeated, too long, or not the
        colon-separated C{key=value} list git sends.
    """
    values = request.requestHeaders.getRawHeaders(b"Git-Protocol")
    if not values:
        return None
    if (
        len(values) > 1
        or len(values[0]) > MAX_GIT_PROTOCOL
        or not _GIT_PROTOCOL.fullmatch(values[0])
    ):
        raise BadRequest("Invalid Git-Protocol header")
    return values[0]


def protocolVersion(gitProtocol: bytes | None) -> int:
    """The protocol version a C{Git-Protocol} value asks for (0 when none)."""
    match = _PROTOCOL_VERSION.search(gitProtocol or b"")
    return int(match.group(1)) if match else 0


Handler = Callable[["GitServer", Request, Repository, Sequence[str]], Any]


@dataclass(frozen=True)
class Route:
    """
    One line of the route table: the methods a path suffix answers and the
    handler for it. The suffix is matched segment by segment, so a repository
    named like a route part cannot confuse it.
    """

    methods: tuple[bytes, ...]
    suffix: tuple[re.Pattern[str], ...]
    handler: Handler

    def match(self, segments: Sequence[str]) -> Sequence[str] | None:
        """The matched suffix segments, when C{segments} end with this route."""
        if len(segments) <= len(self.suffix):
            return None
        tail = segments[len(segments) - len(self.suffix) :]
        if all(p.fullmatch(s) for p, s in zip(self.suffix, tail, strict=True)):
            return tail
        return None


def route(methods: tuple[bytes, ...], *suffix: str) -> Callable[[Handler], Route]:
    """Build a L{Route} from a handler and its path suffix patterns."""

    def build(handler: Handler) -> Route:
        return Route(methods, tuple(re.compile(p) for p in suffix), handler)

    return build


@dataclass
class GitServer:
    """
    What every request needs: the root, the policy, the git backend, and the
    clock. One instance per daemon, built by L{gitserve.tap}.

    @ivar authenticate: maps a request to its user (L{None} for anonymous);
        the default, with no authentication configured, makes everyone
        anonymous.
    @ivar challenge: the C{WWW-Authenticate} value a 401 carries.
    @ivar jobs: the cap on concurrent git children, if any.
    @ivar runBlocking: runs a blocking, thread-safe computation (the dumb
        C{info/refs} of a repository with many refs) off the reactor thread;
        the default runs it inline, which is what unit tests want.
    """

    root: Any  # pathlib.Path, resolved
    policy: Policy
    backend: GitBackend
    clock: IReactorTime
    configs: ConfigCache = field(default_factory=ConfigCache)
    maxPushSize: int = MAX_PUSH_SIZE
    authenticate: Callable[[Request], Deferred[str | None]] | None = None
    challenge: bytes = b'Basic realm="gitserve"'
    jobs: JobLimiter | None = None
    capabilities: CapabilityCache | None = None
    runBlocking: Callable[[Callable[[], Any]], Deferred[Any]] = maybeDeferred

    def userFor(self, request: Request) -> Deferred[str | None]:
        """
        The authenticated user of C{request}, L{None} when anonymous; decided
        once per request (private mode asks before routing, handlers again).
        """
        if self.authenticate is None:
            return succeed(None)
        if getattr(request, "userDecided", False):
            return succeed(request.authenticatedUser)  # type: ignore[attr-defined]

        def remember(user: str | None) -> str | None:
            request.authenticatedUser = user  # type: ignore[attr-defined]
            request.userDecided = True  # type: ignore[attr-defined]
            return user

        return self.authenticate(request).addCallback(remember)

    def refusalFor(self, error: HTTPError) -> HTTPError:
        """
        The refusal the client gets. Without authentication configured there
        are no credentials to ask for, so "authenticate first" becomes 403.
        """
        if isinstance(error, Unauthorized):
            if self.authenticate is None:
                return Forbidden(error.message)
            # The challenge is what makes git ask for credentials (and retry).
            return Unauthorized(
                error.message, headers={**error.headers, b"WWW-Authenticate": self.challenge}
            )
        return error

    def caller(self, request: Request, user: str | None, gitProtocol: bytes | None) -> Caller:
        address = request.getClientAddress()
        return Caller(
            remoteAddr=str(getattr(address, "host", "") or ""),
            user=user,
            userAgent=request.getHeader(b"User-Agent"),
            protocol=gitProtocol,
        )

    def runGit(
        self,
        request: Request,
        repository: Repository,
        service: Service,
        user: str | None,
        gitProtocol: bytes | None,
        advertise: bool,
    ) -> Deferred[GitProcessProtocol]:
        """
        Start git for C{request} once a job slot is free; the protocol
        answers it from there on.
        """
        contentType = contentTypeOf(service, advertise)
        preamble = b""
        if advertise and not (service is Service.UPLOAD_PACK and protocolVersion(gitProtocol) >= 2):
            # http-backend's "# service=" announcement, which protocol v2
            # drops. receive-pack speaks no v2, so it always gets it.
            preamble = pktLine(b"# service=%s\n" % service.value.encode("ascii")) + FLUSH
        description = (
            f"{service.value}{' advertise' if advertise else ''} repo={repository.name} "
            f"user={user or '-'} protocol=v{protocolVersion(gitProtocol)}"
        )

        def start() -> GitProcessProtocol:
            protocol = GitProcessProtocol(
                request,
                self.clock,
                contentType=contentType,
                description=description,
                logFields={
                    "service": service.value,
                    "repository": repository.name,
                    "user": user,
                    "protocolVersion": protocolVersion(gitProtocol),
                    "advertise": advertise,
                },
                preamble=preamble,
                killGrace=self.backend.killGrace,
            )
            self.backend.spawn(
                protocol, service, repository, self.caller(request, user, gitProtocol), advertise
            )
            return protocol

        if self.jobs is None:
            return maybeDeferred(start)
        started = self.jobs.run(start)
        # A client that leaves while queued gives up its place.
        request.notifyFinish().addErrback(lambda _: started.cancel())
        return started


def contentTypeOf(service: Service, advertise: bool) -> bytes:
    """The Content-Type of a smart answer, as http-backend sends it."""
    kind = b"advertisement" if advertise else b"result"
    return b"application/x-%s-%s" % (service.value.encode("ascii"), kind)


# The handlers ---------------------------------------------------------------


def _serviceParameter(request: Request) -> Service | None:
    """
    The C{service=} parameter of an info/refs request.

    @raise Forbidden: an unknown service, or more than one C{service=}: an
        ambiguous request must not be read two ways by two layers.
    """
    values = request.args.get(b"service")
    if values is None:
        return None
    service = Service.fromWire(values[0]) if len(values) == 1 else None
    if service is None:
        raise Forbidden("Unsupported service: getanyfile")
    return service


def getInfoRefs(
    server: GitServer, request: Request, repository: Repository, suffix: Sequence[str]
) -> Deferred[None]:
    """
    C{GET info/refs?service=...}: the smart advertisement, from git itself;
    without C{service=}, the dumb ref list.
    """
    service = _serviceParameter(request)
    if service is None or (service is Service.UPLOAD_PACK and not server.backend.available):
        # Without a git binary there is no upload-pack: the plain ref list
        # makes the client fall back to the dumb protocol by itself, as it
        # does against a static file server.
        return dumb.getDumbInfoRefs(server, request, repository, suffix)
    gitProtocol = gitProtocolOf(request)

    def start(user: str | None) -> Deferred[None] | None:
        server.policy.checkService(repository, service, user)
        cache = server.capabilities
        if cache is None or service is not Service.UPLOAD_PACK or gitProtocol != VERSION_2:
            started = server.runGit(request, repository, service, user, gitProtocol, advertise=True)
            return started.addCallback(lambda protocol: protocol.closeStdin())
        # Protocol v2: capabilities only, the same for every request until an
        # input changes (see gitserve.advertisement).
        key = cache.key(repository)
        answer = cache.get(repository, key)
        if answer is not None:
            startGitResponse(request, contentTypeOf(service, advertise=True))
            request.setHeader(b"Content-Length", b"%d" % len(answer))
            request.write(answer)
            request.finish()
            return None

        def cacheAnswer(protocol: GitProcessProtocol) -> None:
            protocol.output = bytearray()

            def keep(exitCode: int | None) -> None:
                if exitCode == 0 and protocol.failure is None and protocol.output is not None:
                    cache.put(repository, key, bytes(protocol.output))

            protocol.done.addCallback(keep)
            protocol.closeStdin()

        started = server.runGit(request, repository, service, user, gitProtocol, advertise=True)
        return started.addCallback(cacheAnswer)

    return server.userFor(request).addCallback(start)


def _checkPostHeaders(request: Request, service: Service, limit: int) -> None:
    """Refusals decided from the headers alone, before a body byte is read."""
    expected = b"application/x-%s-request" % service.value.encode("ascii")
    if request.getHeader(b"Content-Type") != expected:
        raise UnsupportedMediaType(f"Content-Type must be {expected.decode()}")
    declared = request.getHeader(b"Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestTooLarge(f"Request body exceeds the limit of {limit} bytes")


def _requestBufferLimit(server: GitServer, repository: Repository) -> int:
    """http.maxRequestBuffer of the repository, as http-backend reads it."""
    values = server.configs.getAll(repository, "http", "maxRequestBuffer")
    size = parseGitSize(values[-1]) if values else None
    return MAX_REQUEST_BUFFER if size is None else size


def postUploadPack(
    server: GitServer, request: Request, repository: Repository, suffix: Sequence[str]
) -> Deferred[None]:
    """
    C{POST git-upload-pack}: negotiation is read whole (capped), checked as
    pkt-lines, then given to git, whose pack streams back.
    """
    service = Service.UPLOAD_PACK
    limit = _requestBufferLimit(server, repository)
    _checkPostHeaders(request, service, limit)
    gitProtocol = gitProtocolOf(request)
    assert request.body is not None
    request.body.limit = limit

    def checkUser(user: str | None) -> Deferred[tuple[str | None, bytes]]:
        server.policy.checkService(repository, service, user)
        return request.body.readAll().addCallback(lambda data: (user, data))

    def start(result: tuple[str | None, bytes]) -> Deferred[None]:
        user, data = result
        try:
            parsePktLines(data)
        except ProtocolError as e:
            raise BadRequest(f"protocol error: {e}") from e
        started = server.runGit(request, repository, service, user, gitProtocol, advertise=False)
        return started.addCallback(lambda protocol: protocol.feedStdin(data))

    return server.userFor(request).addCallback(checkUser).addCallback(start)


def postReceivePack(
    server: GitServer, request: Request, repository: Repository, suffix: Sequence[str]
) -> Deferred[None]:
    """
    C{POST git-receive-pack}: git starts as soon as the request is allowed,
    and the pack streams into it while it arrives.
    """
    service = Service.RECEIVE_PACK
    _checkPostHeaders(request, service, server.maxPushSize)
    gitProtocol = gitProtocolOf(request)
    assert request.body is not None
    request.body.limit = server.maxPushSize

    def start(user: str | None) -> Deferred[None]:
        server.policy.checkService(repository, service, user)
        server.runBlocking(partial(sweepStaleQuarantines, repository.gitDir)).addErrback(
            lambda failure: log.failure("sweeping push quarantines failed", failure)
        )
        started = server.runGit(request, repository, service, user, gitProtocol, advertise=False)
        return started.addCallback(lambda protocol: protocol.streamStdin(request.body))

    return server.userFor(request).addCallback(start)


# The route table, in http-backend.c's order. Methods other than the ones
# listed get 405.
_GET = (b"GET", b"HEAD")
_PACK_NAME = r"pack-(?:[0-9a-f]{40}|[0-9a-f]{64})"
ROUTES: list[Route] = [
    route(_GET, "HEAD")(dumb.getHead),
    route(_GET, "info", "refs")(getInfoRefs),
    route(_GET, "objects", "info", "alternates")(dumb.getTextFile),
    route(_GET, "objects", "info", "http-alternates")(dumb.getTextFile),
    route(_GET, "objects", "info", "packs")(dumb.getInfoPacks),
    route(_GET, "objects", "[0-9a-f]{2}", "[0-9a-f]{38}|[0-9a-f]{62}")(dumb.getLooseObject),
    route(_GET, "objects", "pack", _PACK_NAME + r"\.pack")(dumb.getPackFile),
    route(_GET, "objects", "pack", _PACK_NAME + r"\.idx")(dumb.getIdxFile),
    route((b"POST",), "git-upload-pack")(postUploadPack),
    route((b"POST",), "git-receive-pack")(postReceivePack),
]


def matchRoute(segments: Sequence[str]) -> tuple[Route, Sequence[str], Sequence[str]] | None:
    """The route a path ends with, its matched suffix, and the repository part."""
    for candidate in ROUTES:
        tail = candidate.match(segments)
        if tail is not None:
            return candidate, tail, segments[: len(segments) - len(tail)]
    return None


class RootResource(Resource):
    """
    Answers every request: route, resolve, check, hand over to a handler.
    Every refusal goes through L{renderError}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, server: GitServer) -> None:
        super().__init__()
        # Not "server": twisted.web's Resource already has an attribute of that name.
        self.gitServer = server

    def render(self, request: Request) -> bytes | int:
        if self.gitServer.policy.private:
            result = self.gitServer.userFor(request).addCallback(self._dispatchPrivate, request)
        else:
            try:
                result = self._dispatch(request)
            except HTTPError as error:
                return self._refuse(request, error)
        if isinstance(result, Deferred):
            finished = [False]
            request.notifyFinish().addBoth(lambda _: finished.__setitem__(0, True))
            result.addErrback(self._failed, request, finished)
            return NOT_DONE_YET
        return result

    def _dispatchPrivate(self, user: str | None, request: Request) -> Any:
        """
        Private mode: nobody learns anything, not even whether a repository
        exists, before authenticating, so this comes before routing.
        """
        if user is None:
            raise Unauthorized("Authentication required")
        result = self._dispatch(request)
        if isinstance(result, bytes):
            request.write(result)
            request.finish()
            return None
        return result if isinstance(result, Deferred) else None

    def _dispatch(self, request: Request) -> Any:
        segments = []
        for raw in request.postpath:
            try:
                segments.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise NotFound() from None
        matched = matchRoute(segments)
        if matched is None:
            raise NotFound()
        chosen, tail, repositorySegments = matched
        repository = resolveRepository(
            self.gitServer.root, [s.encode("utf-8") for s in repositorySegments]
        )
        if repository is None:
            raise NotFound()
        self.gitServer.policy.checkVisible(repository)
        if request.method not in chosen.methods:
            raise MethodNotAllowed()
        return chosen.handler(self.gitServer, request, repository, tail)

    def _refuse(self, request: Request, error: HTTPError) -> bytes:
        error = self.gitServer.refusalFor(error)
        self.log.info(
            "refused {method} {uri}: {code} {message}",
            method=request.method.decode("latin-1"),
            uri=request.uri.decode("latin-1"),
            code=error.code,
            message=error.message,
        )
        return renderError(request, error)

    def _failed(self, failure: Failure, request: Request, finished: list[bool]) -> None:
        # CancelledError: the client left while its request waited for a job.
        if finished[0] or failure.check(BodyLost, CancelledError):
            return
        if failure.check(HTTPError):
            body = self._refuse(request, failure.value)
        else:
            self.log.failure("unexpected error answering {uri}", failure, uri=request.uri)
            body = renderError(request, HTTPError("Internal Server Error"))
        request.write(body)
        request.finish()
