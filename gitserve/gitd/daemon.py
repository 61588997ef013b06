"""
The git:// protocol (C{git daemon}'s): one pkt-line request naming the
service and the repository, then git upload-pack (or upload-archive)
talking with the client over the connection.

As C{git daemon} with its defaults: upload-pack is served unless the
repository sets C{daemon.uploadpack} false, upload-archive only where it
sets C{daemon.uploadarch} true, receive-pack never; and every refusal is the
same C{ERR} packet, so that a client cannot tell a missing repository from a
hidden one. Resolution, the
policy (as the user C{daemon}, gitolite's name for git:// readers) and the
job slot are the core's, as for every door.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from gitserve.core.connections import OpenConnections
from gitserve.core.duplex import DuplexOperation, IDuplexDoor, segmentsOfPath
from gitserve.core.errors import InvalidRequest, NotFound, Refusal
from gitserve.core.gitprotocol import checkGitProtocol
from gitserve.core.operations import GitCore
from gitserve.core.pktline import MAX_PKT_LENGTH, ProtocolError, errorLine, parseLength
from gitserve.core.policy import Service
from gitserve.core.process import Caller, GitOutcome
from gitserve.core.repository import resolveRepository

log = Logger()

# The user git:// requests are made as, for the policy and the log: git://
# has no authentication, and gitolite names its readers "daemon".
DAEMON_USER = "daemon"

# git daemon's answer to every refusal without --informative-errors.
NOT_EXPORTED = "access denied or repository not exported"

# What host= may hold: a host name, an IPv4 address or a bracketed IPv6
# address, and an optional port. git daemon only sanitises it; gitserve does
# not use it, but a request with anything else in it is not git's.
_HOST = re.compile(
    rb"(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
)

_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")

# What git:// may serve (git daemon's services enabled by default or per
# repository); receive-pack is never enabled here.
SERVED = {
    b"git-upload-pack": Service.UPLOAD_PACK,
    b"git-upload-archive": Service.UPLOAD_ARCHIVE,
}


class BadRequest(Exception):
    """Not a git:// request: the connection is closed without an answer, as git daemon does."""


@dataclass(frozen=True)
class DaemonRequest:
    """
    A parsed git:// request.

    @ivar service: the service named (C{git-upload-pack}, C{git-receive-pack},
        C{git-upload-archive}).
    @ivar path: the repository path as sent.
    @ivar host: the C{host=} value, if any.
    @ivar gitProtocol: the extra parameters joined with C{:}, as git daemon
        turns them into C{GIT_PROTOCOL} (not yet validated).
    """

    service: bytes
    path: bytes
    host: bytes | None
    gitProtocol: bytes | None


def parseRequest(payload: bytes) -> DaemonRequest:
    """
    Read the request packet as git daemon's C{execute()} and
    C{parse_extra_args()} read it: C{git-<service> <path>[\\n]}, then
    optionally C{\\0host=<host>\\0}, then optionally C{\\0} and extra
    parameters each ended by C{\\0}.

    @raise BadRequest: anything else (git daemon's "Protocol error" and
        "Invalid request"), or a C{host=} that is not a host name.
    """
    line, nul, extra = payload.partition(b"\0")
    if line.endswith(b"\n"):
        line = line[:-1]
    host = None
    parameters: list[bytes] = []
    if nul and extra:
        if extra[:1] != b"\0":
            if extra[:5].lower() != b"host=":
                raise BadRequest("invalid request")
            value, _, extra = extra[5:].partition(b"\0")
            if value and not _HOST.fullmatch(value):
                raise BadRequest("invalid host")
            host = value
            if extra[:1] not in (b"", b"\0"):
                raise BadRequest("invalid request")
        # Extra parameters after a second NUL, each ended by a NUL.
        parameters = [arg for arg in extra[1:].split(b"\0") if arg]
    service, space, path = line.partition(b" ")
    if not space or service not in (b"git-upload-pack", b"git-receive-pack", b"git-upload-archive"):
        raise BadRequest("protocol error")
    return DaemonRequest(service, path, host, b":".join(parameters) or None)


def printable(text: bytes) -> str:
    """A client's path, safe for the log and for an ERR packet."""
    return _UNPRINTABLE.sub(b"?", text[:200]).decode("ascii")


@implementer(IDuplexDoor)
class GitDaemonProtocol(Protocol, TimeoutMixin):
    """
    One git:// connection: the request, then git (upload-pack, upload-archive) over the
    socket, paced both ways (a client that stops reading pauses git; a git
    that stops reading pauses the socket): a L{DuplexOperation} with the
    socket as its stream.
    """

    factory: GitDaemonFactory
    # A TCP transport: a consumer that can also pause reading and abort.
    transport: Any

    def __init__(self) -> None:
        self.buffer = b""
        self.request: DaemonRequest | None = None
        self.operation: DuplexOperation | None = None
        self.gone = False

    @property
    def running(self) -> bool:
        """Whether git runs for this connection now (not queued, not ended)."""
        return self.operation is not None and self.operation.running

    def connectionMade(self) -> None:
        self.callLater = self.factory.clock.callLater  # type: ignore[assignment]
        self.setTimeout(self.factory.idleTimeout)
        self.factory.connections.add(self)

    def timeoutConnection(self) -> None:
        log.info("git://: dropping a connection idle for {seconds}s", seconds=self.timeOut)
        self.transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self.operation is not None:
            self.operation.stdin.feed(data)
            return
        if self.request is not None:
            return
        self.buffer += data
        if len(self.buffer) < 4:
            return
        try:
            length = parseLength(self.buffer[:4])
            if length < 4:
                raise ProtocolError("not a request")
        except ProtocolError:
            log.info("git://: protocol error from {peer}", peer=self.peerHost())
            self.transport.loseConnection()
            return
        if len(self.buffer) < length:
            if len(self.buffer) > MAX_PKT_LENGTH:
                self.transport.loseConnection()
            return
        payload, rest = self.buffer[4:length], self.buffer[length:]
        self.buffer = b""
        try:
            self.request = parseRequest(payload)
        except BadRequest as e:
            log.info("git://: {reason} from {peer}", reason=str(e), peer=self.peerHost())
            self.transport.loseConnection()
            return
        self.handle(self.request)
        if rest and self.operation is not None:
            self.operation.stdin.feed(rest)

    def peerHost(self) -> str:
        return str(getattr(self.transport.getPeer(), "host", "") or "")

    def refuse(self, message: str) -> None:
        """An C{ERR} packet (git shows C{remote error: <message>}), then close."""
        self.transport.write(errorLine(message))
        self.transport.loseConnection()

    def handle(self, request: DaemonRequest) -> None:
        """
        Decide the request as git daemon would, through the core: the same
        resolution, policy and job slot as HTTP and SSH.
        """
        core = self.factory.core
        shown = printable(request.path)
        denied = f"{NOT_EXPORTED}: {shown}"
        try:
            gitProtocol = (
                checkGitProtocol(request.gitProtocol) if request.gitProtocol is not None else None
            )
        except InvalidRequest:
            self.refuse("invalid protocol parameters")
            return
        service = SERVED.get(request.service)
        if service is None:
            # git daemon's default: receive-pack is not enabled.
            log.info(
                "git://: refused {service} for {path}",
                service=request.service.decode(),
                path=shown,
            )
            self.refuse(denied)
            return
        try:
            if not request.path.startswith(b"/"):
                # As git daemon with --base-path: only absolute paths, which
                # name repositories under the root (git always sends one).
                raise NotFound()
            if core.policy.private:
                # --private: every request needs a user git:// cannot prove.
                raise NotFound()
            repository = resolveRepository(core.root, segmentsOfPath(request.path))
            if repository is None:
                raise NotFound()
            core.policy.checkVisible(repository, DAEMON_USER)
            if (
                service is Service.UPLOAD_PACK
                and core.configs.getBoolean(repository, "daemon", "uploadpack") is False
            ):
                # git daemon's own per-repository switch (upload-archive's,
                # daemon.uploadarch, is the policy's: SSH honours it too).
                raise NotFound()
            core.policy.checkService(repository, service, DAEMON_USER)
        except (Refusal, InvalidRequest) as e:
            log.info("git://: refused {path}: {reason}", path=shown, reason=str(e))
            self.refuse(denied)
            return
        caller = Caller(
            remoteAddr=self.peerHost(),
            user=DAEMON_USER,
            protocol=gitProtocol,
            transport="git",
        )
        operation = core.operation(service, repository, caller, statelessRpc=False)
        self.operation = DuplexOperation(
            self, self.transport.pauseProducing, self.transport.resumeProducing
        )
        self.operation.start(core, operation)

    def connectionLost(self, reason: Failure | None = None) -> None:  # type: ignore[override]
        self.gone = True
        self.setTimeout(None)
        if self.operation is not None:
            self.operation.clientGone()
        self.factory.connectionClosed(self)

    # IDuplexDoor: the socket as git's stream ---------------------------------------

    @property
    def plainTransport(self) -> object:
        """The socket itself: pack cache answers go out on it with sendfile(2)."""
        return self.transport

    def sendToClient(self, data: bytes) -> None:
        self.resetTimeout()
        self.transport.write(data)

    def attachProducer(self, producer: IPushProducer) -> None:
        """The socket pauses git when the client does not read."""
        self.transport.registerProducer(producer, True)

    def detachProducer(self) -> None:
        self.transport.unregisterProducer()

    def operationEnded(self, outcome: GitOutcome) -> None:
        """
        Close as git daemon's connection closes when git exits: an C{ERR}
        packet first when git failed before answering, an abort when it
        failed midway.
        """
        if outcome.started and not (outcome.succeeded or outcome.completeRefusal):
            # git failed after the answer began: only a broken connection
            # tells the client that what it got is incomplete.
            self.transport.abortConnection()
            return
        if not outcome.started and outcome.exitCode != 0:
            self.transport.write(errorLine(outcome.message))
        self.transport.loseConnection()


class GitDaemonFactory(Factory):
    """
    The git:// door.

    @ivar connections: the open connections, for a graceful shutdown.
    """

    protocol = GitDaemonProtocol  # type: ignore[assignment]

    def __init__(self, core: GitCore, clock: IReactorTime, idleTimeout: float) -> None:
        self.core = core
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.connections: OpenConnections[GitDaemonProtocol] = OpenConnections()

    def connectionClosed(self, protocol: GitDaemonProtocol) -> None:
        self.connections.discard(protocol)

    def drainConnections(self) -> Deferred[None]:
        """
        Close the connections that run no git now (one still sending its
        request, one queued for a job); the others close when git ends.

        @return: fires when no connection is left.
        """
        for protocol in self.connections:
            if not protocol.running:
                protocol.transport.loseConnection()
        return self.connections.whenEmpty()

    def abortConnections(self) -> None:
        """Drop every connection at once: the last step of a shutdown."""
        for protocol in self.connections:
            protocol.transport.abortConnection()
