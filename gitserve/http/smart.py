"""
The smart protocol over HTTP: C{info/refs?service=...} and the two POSTs,
answered by a git child through the core. Everything HTTP about a git
answer is decided here: its head, the C{# service=} preamble, what a failure
looks like (an C{ERR} packet, an error status, or an aborted connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProducer, IPushProducer
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from gitserve.core.errors import Forbidden, InvalidRequest, Refusal, TooLarge
from gitserve.core.gitprotocol import VERSION_2, checkGitProtocol, protocolVersion
from gitserve.core.housekeeping import sweepStaleQuarantines
from gitserve.core.operations import GitOperation
from gitserve.core.packcache import IPackReader, Lookup, Source
from gitserve.core.pktline import FLUSH, ProtocolError, errorLine, parsePktLines, pktLine
from gitserve.core.policy import Service
from gitserve.core.process import GitOutcome, GitProcessProtocol
from gitserve.core.repository import Repository, parseGitSize
from gitserve.http import dumb
from gitserve.http.channel import GitRequest, canSendfile, connectionOf, isAnswerable
from gitserve.http.context import HTTPContext
from gitserve.http.errors import HTTPError, UnsupportedMediaType, renderError
from gitserve.http.headers import startGitResponse
from gitserve.http.inbound import spliceInbound
from gitserve.http.packhit import HTTPSendfileReader
from gitserve.http.relay import PipeRelay
from gitserve.interfaces import IOutputPipe, IPipeOutput, IRelayReactor
from gitserve.twistedinternals import readInPiecesOf

# http-backend's default for http.maxRequestBuffer: upload-pack negotiation is
# buffered whole (a half-duplex client cannot read while it sends), so it is
# capped.
MAX_REQUEST_BUFFER = 10 * 1024 * 1024

# How much of a push body is read from a plain socket per wakeup: four times
# Twisted's default, a quarter of the reads and reactor turns (a 150 MB push
# cost the daemon 0.74 s of CPU with 64 KiB reads and git's 64 KiB stdin
# pipe, 0.48 s with this and a 1 MiB pipe).
PUSH_READ_SIZE = 256 * 1024

log = Logger()


def gitProtocolOf(request: Request) -> bytes | None:
    """
    The validated C{Git-Protocol} header, or L{None} without one.

    @raise InvalidRequest: a header that is repeated, too long, or not the
        colon-separated C{key=value} list git sends.
    """
    values = request.requestHeaders.getRawHeaders(b"Git-Protocol")
    if not values:
        return None
    if len(values) > 1:
        raise InvalidRequest("Invalid Git-Protocol header")
    return checkGitProtocol(values[0])


def contentTypeOf(service: Service, advertise: bool) -> bytes:
    """The Content-Type of a smart answer, as http-backend sends it."""
    kind = b"advertisement" if advertise else b"result"
    return b"application/x-%s-%s" % (service.value.encode("ascii"), kind)


@implementer(IPipeOutput)
class SmartResponse:
    """
    A smart answer as git's output: nothing is sent until git writes, so a
    git that fails first still gets a clean error answer; then the head and
    the preamble go out with git's first bytes. Past git's first bytes, on a
    plain connection, git's pipe is spliced to the socket
    (L{gitserve.http.relay}).

    @ivar record: when a L{bytearray}, keeps a copy of what git wrote (an
        advertisement to cache).
    @ivar pipeReactor: watches git's pipe when it is relayed; L{None}: git's
        output is always written through Twisted (C{--no-splice}).
    """

    def __init__(
        self,
        request: Request,
        contentType: bytes,
        preamble: bytes = b"",
        pipeReactor: IRelayReactor | None = None,
    ) -> None:
        self.request = request
        self.contentType = contentType
        self.preamble = preamble
        self.pipeReactor = pipeReactor
        self.started = False
        self.record: bytearray | None = None

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self.request.registerProducer(producer, streaming)
        # A client that leaves ends the child.
        self.request.notifyFinish().addErrback(lambda _: producer.stopProducing())

    def unregisterProducer(self) -> None:
        self.request.unregisterProducer()

    def write(self, data: bytes) -> None:
        if self.record is not None:
            self.record += data
        if not self.started:
            self.started = True
            startGitResponse(self.request, self.contentType)
            data = self.preamble + data
        self.request.write(data)

    def relayPipe(self, pipe: IOutputPipe) -> IPushProducer | None:
        """
        Relay git's pipe to the socket, where nothing but the socket stands
        between them: relaying is on, no copy of the answer is kept, the
        connection is a plain socket (not TLS, not behind a PROXY-protocol
        wrapper), and the client is still there.
        """
        if (
            self.pipeReactor is None
            or self.record is not None
            or not self.started
            or not isAnswerable(self.request)
            or not canSendfile(self.request)
        ):
            return None
        return PipeRelay(self.request, pipe, self.pipeReactor)

    def answer(self, outcome: GitOutcome, context: HTTPContext) -> GitOutcome:
        """
        End the response as the outcome says: finished when git succeeded or
        wrote a complete refusal; aborted when git failed after the answer
        began (only a broken connection tells the client that what it got is
        incomplete); otherwise an error answer of its own.

        @return: C{outcome}, for whoever else waits on it.
        """
        if not isAnswerable(self.request):
            pass
        elif self.started:
            if (outcome.succeeded or outcome.completeRefusal) and outcome.failure is None:
                self.request.finish()
            else:
                connectionOf(self.request.channel).abortConnection()
        elif outcome.failure is not None:
            error = outcome.failure.value
            if not isinstance(error, Refusal | HTTPError):
                error = HTTPError("the request failed on the server")
            self.request.write(renderError(self.request, context.httpErrorFor(error)))
            self.request.finish()
        else:
            startGitResponse(self.request, self.contentType)
            if outcome.exitCode != 0:
                self.request.write(errorLine(outcome.message))
            self.request.finish()
        return outcome


def runGit(
    context: HTTPContext,
    request: Request,
    repository: Repository,
    service: Service,
    user: str | None,
    gitProtocol: bytes | None,
    advertise: bool,
) -> tuple[SmartResponse, Deferred[GitProcessProtocol]]:
    """
    Start git for C{request} once a job slot is free; its response answers
    the request from there on.
    """
    preamble = b""
    if advertise and not (service is Service.UPLOAD_PACK and protocolVersion(gitProtocol) >= 2):
        # http-backend's "# service=" announcement, which protocol v2
        # drops. receive-pack speaks no v2, so it always gets it.
        preamble = pktLine(b"# service=%s\n" % service.value.encode("ascii")) + FLUSH
    response = SmartResponse(
        request, contentTypeOf(service, advertise), preamble, context.pipeReactor
    )
    operation = context.core.operation(
        service, repository, context.caller(request, user, gitProtocol), advertise
    )
    started = context.core.start(operation, response)
    # A client that leaves while queued gives up its place.
    request.notifyFinish().addErrback(lambda _: started.cancel())

    def answerWhenDone(protocol: GitProcessProtocol) -> GitProcessProtocol:
        protocol.done.addCallback(response.answer, context)
        return protocol

    return response, started.addCallback(answerWhenDone)


def _serviceParameter(request: Request) -> Service | None:
    """
    The C{service=} parameter of an info/refs request.

    @raise Refusal: an unknown service, or more than one C{service=}: an
        ambiguous request must not be read two ways by two layers.
    """
    # Twisted declares Request.args as C{= None} at class level, which mypy
    # reads as "always None"; the Site has parsed it into a dict by now.
    values = request.args.get(b"service")  # type: ignore[attr-defined]
    if values is None:
        return None
    service = Service.fromWire(values[0]) if len(values) == 1 else None
    if service is None:
        raise Forbidden("Unsupported service: getanyfile")
    return service


def getInfoRefs(
    context: HTTPContext, request: Request, repository: Repository, suffix: Sequence[str]
) -> Deferred[None]:
    """
    C{GET info/refs?service=...}: the smart advertisement, from git itself;
    without C{service=}, the dumb ref list.
    """
    core = context.core
    service = _serviceParameter(request)
    if service is None or (service is Service.UPLOAD_PACK and not core.backend.available):
        # Without a git binary there is no upload-pack: the plain ref list
        # makes the client fall back to the dumb protocol by itself, as it
        # does against a static file server.
        return dumb.getDumbInfoRefs(context, request, repository, suffix)
    gitProtocol = gitProtocolOf(request)

    def start(user: str | None) -> Deferred[None] | None:
        core.policy.checkService(repository, service, user)
        cache = core.capabilities
        if cache is None or service is not Service.UPLOAD_PACK or gitProtocol != VERSION_2:
            _, started = runGit(context, request, repository, service, user, gitProtocol, True)
            return started.addCallback(lambda protocol: protocol.closeStdin())
        # Protocol v2: capabilities only, the same for every request until an
        # input changes (see gitserve.core.advertisement).
        key = cache.key(repository)
        answer = cache.get(repository, key)
        if answer is not None:
            startGitResponse(request, contentTypeOf(service, advertise=True))
            request.setHeader(b"Content-Length", b"%d" % len(answer))
            request.write(answer)
            request.finish()
            return None
        response, started = runGit(context, request, repository, service, user, gitProtocol, True)
        response.record = bytearray()

        def keep(outcome: GitOutcome) -> None:
            if outcome.succeeded and response.record is not None:
                cache.put(repository, key, bytes(response.record))

        def cacheAnswer(protocol: GitProcessProtocol) -> None:
            protocol.done.addCallback(keep)
            protocol.closeStdin()

        return started.addCallback(cacheAnswer)

    return context.userFor(request).addCallback(start)


def _checkPostHeaders(request: Request, service: Service, limit: int) -> None:
    """Refusals decided from the headers alone, before a body byte is read."""
    expected = b"application/x-%s-request" % service.value.encode("ascii")
    if request.getHeader(b"Content-Type") != expected:
        raise UnsupportedMediaType(f"Content-Type must be {expected.decode()}")
    declared = request.getHeader(b"Content-Length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"Request body exceeds the limit of {limit} bytes")


def _requestBufferLimit(context: HTTPContext, repository: Repository) -> int:
    """http.maxRequestBuffer of the repository, as http-backend reads it."""
    values = context.core.configs.getAll(repository, "http", "maxRequestBuffer")
    size = parseGitSize(values[-1]) if values else None
    return MAX_REQUEST_BUFFER if size is None else size


def _streamedBody(request: Request, limit: int) -> GitRequest:
    """The request, whose body is streamed and now capped at C{limit}."""
    assert isinstance(request, GitRequest) and request.body is not None
    request.body.setLimit(limit)
    return request


def postUploadPack(
    context: HTTPContext, request: Request, repository: Repository, suffix: Sequence[str]
) -> Deferred[None]:
    """
    C{POST git-upload-pack}: negotiation is read whole (capped), checked as
    pkt-lines, then given to git, whose pack streams back.
    """
    service = Service.UPLOAD_PACK
    limit = _requestBufferLimit(context, repository)
    _checkPostHeaders(request, service, limit)
    gitProtocol = gitProtocolOf(request)
    body = _streamedBody(request, limit).body
    assert body is not None

    def checkUser(user: str | None) -> Deferred[tuple[str | None, bytes]]:
        context.core.policy.checkService(repository, service, user)
        return body.readAll().addCallback(lambda data: (user, data))

    def start(result: tuple[str | None, bytes]) -> Deferred[None]:
        user, data = result
        try:
            parsePktLines(data)
        except ProtocolError as e:
            raise InvalidRequest(f"protocol error: {e}") from e
        if context.core.packCache is not None:
            return _fetchThroughCache(context, request, repository, user, gitProtocol, data)
        _, started = runGit(context, request, repository, service, user, gitProtocol, False)
        return started.addCallback(lambda protocol: protocol.feedStdin(data))

    return context.userFor(request).addCallback(checkUser).addCallback(start)


def _fetchThroughCache(
    context: HTTPContext,
    request: Request,
    repository: Repository,
    user: str | None,
    gitProtocol: bytes | None,
    data: bytes,
) -> Deferred[None]:
    """
    C{POST git-upload-pack} with the pack cache on: a kept answer goes out
    with sendfile(2) where the connection allows; anything else is a reader
    of the cache (or a git child of its own), answered as git's output is.
    """
    core = context.core
    cache = core.packCache
    assert cache is not None
    contentType = contentTypeOf(Service.UPLOAD_PACK, advertise=False)
    operation = GitOperation(
        Service.UPLOAD_PACK, repository, context.caller(request, user, gitProtocol)
    )

    def serve(lookup: Lookup) -> Deferred[None] | None:
        if not isAnswerable(request):
            if lookup.entry is not None:
                lookup.entry.close()
            return None
        response = SmartResponse(request, contentType, pipeReactor=context.pipeReactor)
        makeReader = None
        if canSendfile(request):

            def makeReader(
                source: Source, operation: GitOperation, bytesIn: int, quiet: bool
            ) -> IPackReader:
                return HTTPSendfileReader(
                    request,
                    source,
                    contentType,
                    partial(response.answer, context=context),
                    response,
                    operation,
                    bytesIn,
                    quiet,
                    core.clock,
                )

        started = cache.start(core, lookup, response, makeReader)
        # A client that leaves while queued gives up its place.
        request.notifyFinish().addErrback(lambda _: started.cancel())

        def answerWhenDone(job: GitProcessProtocol | IPackReader) -> None:
            if not isinstance(job, HTTPSendfileReader):
                job.done.addCallback(response.answer, context)

        return started.addCallback(answerWhenDone)

    return cache.lookup(operation, data).addCallback(serve)


def postReceivePack(
    context: HTTPContext, request: Request, repository: Repository, suffix: Sequence[str]
) -> Deferred[None]:
    """
    C{POST git-receive-pack}: git starts as soon as the request is allowed,
    and the pack streams into it while it arrives.
    """
    service = Service.RECEIVE_PACK
    _checkPostHeaders(request, service, context.maxPushSize)
    gitProtocol = gitProtocolOf(request)
    body = _streamedBody(request, context.maxPushSize).body
    assert body is not None
    core = context.core

    def start(user: str | None) -> Deferred[None]:
        core.policy.checkService(repository, service, user)
        core.runBlocking(partial(sweepStaleQuarantines, repository.gitDir)).addErrback(
            lambda failure: log.failure("sweeping push quarantines failed", failure)
        )
        _, started = runGit(context, request, repository, service, user, gitProtocol, False)
        # A push body is read in larger pieces (see readInPiecesOf).
        readInPiecesOf(connectionOf(request.channel), PUSH_READ_SIZE)

        def stream(protocol: GitProcessProtocol) -> None:
            protocol.streamStdin(body)
            if context.pipeReactor is not None:
                spliceInbound(request.channel, body, protocol.transport, context.pipeReactor)

        return started.addCallback(stream)

    return context.userFor(request).addCallback(start)
