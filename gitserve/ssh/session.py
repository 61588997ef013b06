"""
One SSH session channel: the requests git's client sends (C{env}, C{exec}),
answered by the core exactly as an HTTP request is, and every other request
refused with a line the user sees.

What the user is told, and the exit status, are decided here: a refusal is
C{fatal: <message>} on stderr and exit status 128 (git's own status for a
fatal error), so git prints it and then C{Could not read from remote
repository}, as it does for git-shell's refusals.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.conch.avatar import ConchUser
from twisted.conch.error import ConchError
from twisted.conch.ssh import connection
from twisted.conch.ssh.channel import SSHChannel
from twisted.conch.ssh.common import getNS
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gitserve.core.duplex import DuplexOperation, IDuplexDoor, segmentsOfPath
from gitserve.core.errors import InvalidRequest, NotFound, Refusal
from gitserve.core.gitprotocol import checkGitProtocol
from gitserve.core.housekeeping import sweepStaleQuarantines
from gitserve.core.listing import listRepositoryPaths
from gitserve.core.operations import GitCore
from gitserve.core.policy import Service
from gitserve.core.process import Caller, GitOutcome
from gitserve.core.repository import Repository, resolveRepository
from gitserve.ssh.command import CommandRefused, GitCommand, parseCommand
from gitserve.ssh.keys import KeyOwner
from gitserve.ssh.logs import conchLog

log = Logger()

# git's exit status for fatal errors; what git-shell's die() exits with.
EXIT_FATAL = 128

# The channel's receive window: as large as OpenSSH's, so a push is not held
# to one round trip per 128 KiB (conch's default).
LOCAL_WINDOW = 2 * 1024 * 1024
LOCAL_MAX_PACKET = 32768

# An OpenSSH client sends LANG and LC_* with every session (SendEnv in
# Debian's ssh_config): they are ignored without a word, not refused.
_LOCALE = re.compile(rb"LANG|LANGUAGE|LC_[A-Z_]+")

# A client sending more env requests than this is not git.
MAX_ENV_REQUESTS = 64

_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]")

REFUSED_REQUESTS = {
    b"pty-req": "no terminal here: this server runs git commands only",
    b"x11-req": "X11 forwarding is not available: this server runs git commands only",
    b"auth-agent-req@openssh.com": (
        "agent forwarding is not available: this server runs git commands only"
    ),
}


@dataclass
class SSHDoor:
    """
    What every SSH session needs: the core, and a clock to answer requests
    after their reply has gone out.
    """

    core: GitCore
    clock: IReactorTime


def printable(path: bytes) -> str:
    """A client's path, safe to echo to its terminal."""
    return _UNPRINTABLE.sub(b"?", path[:200]).decode("ascii")


class GitAvatar(ConchUser):
    """
    The logged-in key owner. Only session channels open; port forwarding
    (C{direct-tcpip}) and anything else is refused with a reason the client
    prints.
    """

    def __init__(self, owner: KeyOwner, door: SSHDoor) -> None:
        super().__init__()
        self.owner = owner
        self.door = door
        self.channelLookup[b"session"] = GitSessionChannel

    def lookupChannel(
        self, channelType: bytes, windowSize: int, maxPacket: int, data: bytes
    ) -> Any:
        if channelType != b"session":
            raise ConchError(
                "gitserve: forwarding is not available: this server runs git commands only",
                connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
            )
        return super().lookupChannel(channelType, windowSize, maxPacket, data)


class GitSSHConnection(connection.SSHConnection):
    """
    The connection service, with back-pressure from git's stdin: while a
    session's git does not read (its pipe is full), that channel's window is
    not re-opened, so the client stops sending on it and nothing piles up
    here; the other channels (and the client's window adjustments for what
    git writes) keep flowing.
    """

    _log = conchLog

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        if getattr(channel, "inputPaused", False):
            return
        super().adjustWindow(channel, bytesToAdd)

    def channelClosed(self, channel: Any) -> None:
        """
        A session ended; during a graceful shutdown, the connection closes
        with its last one.
        """
        super().channelClosed(channel)
        transport: Any = self.transport
        factory = getattr(transport, "factory", None)
        if getattr(factory, "draining", False) and not transport.hasRunningChannels():
            transport.loseConnection()


@implementer(IDuplexDoor)
class GitSessionChannel(SSHChannel):
    """
    A session: C{env} requests (only C{GIT_PROTOCOL}) then one C{exec} of
    git's upload-pack, receive-pack or upload-archive, carried out by the core; a C{shell}
    request gets the greeting. The channel is the stream of a
    L{DuplexOperation}: its incoming data is git's stdin, its window paces
    git's output.
    """

    name = b"session"
    avatar: GitAvatar
    _log = conchLog

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("localWindow", LOCAL_WINDOW)
        kwargs.setdefault("localMaxPacket", LOCAL_MAX_PACKET)
        super().__init__(*args, **kwargs)
        self.gitProtocol: bytes | None = None
        self.invalidProtocol = False
        self.envRequests = 0
        self.commandSeen = False
        self.inputPaused = False
        self.gone = False
        self.operation: DuplexOperation | None = None
        self.exitStatus: int | None = None
        self.exitSent = False

    @property
    def door(self) -> SSHDoor:
        return self.avatar.door

    @property
    def connection(self) -> connection.SSHConnection:
        """The connection service this channel belongs to (set when it opened)."""
        assert self.conn is not None
        return self.conn

    # Requests ----------------------------------------------------------------

    def requestReceived(self, requestType: bytes, data: bytes) -> bool:
        """
        Answer a channel request. C{exec} and C{shell} succeed at once and
        run after the reply has gone out, so that what they write and their
        exit status follow the reply.
        """
        try:
            if requestType == b"env":
                name, rest = getNS(data)
                value, _ = getNS(rest)
                return self.setEnvironment(name, value)
            if requestType in (b"exec", b"shell", b"subsystem"):
                if self.commandSeen:
                    return False
                self.commandSeen = True
                if requestType == b"exec":
                    command, _ = getNS(data)
                    # The client may send its request right after the command
                    # (git waits for the server to speak first, other clients
                    # do not): what arrives before git runs is kept for its
                    # stdin, from now on.
                    self.operation = DuplexOperation(self, self.pauseInput, self.resumeInput)
                    self.door.clock.callLater(0, self.execute, command)
                elif requestType == b"shell":
                    self.door.clock.callLater(0, self.greet)
                else:
                    # Accepted only to be refused in words: OpenSSH gives up
                    # on a failed subsystem request without showing stderr.
                    self.door.clock.callLater(0, self.refuseSubsystem)
                return True
        except (struct.error, IndexError, ValueError):
            return False
        message = REFUSED_REQUESTS.get(requestType)
        if message is not None:
            log.info(
                "ssh {user}: refused {request}",
                user=self.avatar.owner.user,
                request=requestType.decode("ascii", "replace"),
            )
            self.writeStderr(f"gitserve: {message}")
        return False

    def setEnvironment(self, name: bytes, value: bytes) -> bool:
        """
        C{GIT_PROTOCOL}, validated as the HTTP C{Git-Protocol} header is; a
        locale is ignored; any other variable is refused (the channel goes
        on), so no client ever sets C{GIT_CONFIG_*} or the like for git.
        """
        self.envRequests += 1
        if self.envRequests > MAX_ENV_REQUESTS:
            return False
        if name == b"GIT_PROTOCOL":
            try:
                self.gitProtocol = checkGitProtocol(value)
            except InvalidRequest:
                # Remembered: the command that follows is refused, rather
                # than run in a protocol the client did not ask for.
                self.invalidProtocol = True
                return False
            return True
        if _LOCALE.fullmatch(name):
            return True
        log.info(
            "ssh {user}: refused environment variable {name}",
            user=self.avatar.owner.user,
            name=printable(name),
        )
        return False

    # Saying things to the user -------------------------------------------------

    def writeStderr(self, line: str) -> None:
        """One line on the client's stderr (ssh prints it; so does git)."""
        if not self.gone:
            self.writeExtended(connection.EXTENDED_DATA_STDERR, line.encode("utf-8") + b"\n")

    def refuseSubsystem(self) -> None:
        """A subsystem (sftp, ...): the refusal, exit status 1."""
        self.writeStderr("gitserve: no subsystems (sftp, ...) here: this server runs git only")
        self.exit(1)

    def refuse(self, message: str) -> None:
        """End the session as a refusal: the message, then exit status 128."""
        self.writeStderr(f"fatal: {message}")
        self.exit(EXIT_FATAL)

    def exit(self, status: int) -> None:
        """
        Send the exit status, EOF and close once everything written has gone
        out (what is buffered for a full client window goes first).
        """
        self.exitStatus = status
        self._sendExit()

    def _sendExit(self) -> None:
        if self.exitStatus is None or self.exitSent or self.gone:
            return
        if self.buf or self.extBuf:
            return
        self.exitSent = True
        self.connection.sendRequest(self, b"exit-status", struct.pack(">L", self.exitStatus))
        self.connection.sendEOF(self)
        self.loseConnection()

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        self._sendExit()

    # The shell request: the greeting -------------------------------------------

    def greet(self) -> Deferred[None]:
        """
        No shell: a greeting naming the user and the repositories they can
        read (C{R}) and push to (C{W}), as gitolite's C{info} shows them,
        each decided by the same resolution and policy as a request.
        """
        core = self.door.core
        user = self.avatar.owner.user

        def show(paths: list[list[bytes]]) -> None:
            lines = [
                f"hello {user}, this is gitserve: git over SSH, no shell.",
                "",
            ]
            for segments in paths:
                repository = resolveRepository(core.root, segments)
                if repository is None:
                    continue
                try:
                    core.policy.checkVisible(repository, user)
                    core.policy.checkService(repository, Service.UPLOAD_PACK, user)
                except Refusal:
                    continue
                try:
                    core.policy.checkService(repository, Service.RECEIVE_PACK, user)
                    write = "W"
                except Refusal:
                    write = " "
                lines.append(f" R {write}\t{repository.name}")
            if len(lines) == 2:
                lines.append(" (no repositories you can read)")
            if not self.gone:
                self.write("\n".join(lines).encode("utf-8") + b"\n")
                self.exit(0)

        def failed(failure: Failure) -> None:
            log.failure("ssh greeting failed", failure)
            self.refuse("the server could not list repositories")

        return (
            core.runBlocking(partial(listRepositoryPaths, core.root))
            .addCallback(show)
            .addErrback(failed)
        )

    # The exec request: a git operation -------------------------------------------

    def remoteAddress(self) -> str:
        transport: Any = self.connection.transport
        peer = transport.transport.getPeer()
        return str(getattr(peer, "host", "") or "")

    def execute(self, command: bytes) -> None:
        """
        Run the command if it is git's and the policy allows it: parsed as
        git-shell parses it, the path resolved under the root, then the same
        policy checks and job slot as an HTTP request.
        """
        if self.gone:
            return
        owner = self.avatar.owner
        try:
            parsed = parseCommand(command)
        except CommandRefused as e:
            log.info(
                "ssh {user}: refused command {command!r}: {reason}",
                user=owner.user,
                command=printable(command),
                reason=e.message,
            )
            self.refuse(
                f"{e.message}; this server runs only git-upload-pack, git-receive-pack "
                "and git-upload-archive"
            )
            return
        if self.invalidProtocol:
            self.refuse("invalid GIT_PROTOCOL")
            return
        core = self.door.core
        notFound = f"'{printable(parsed.path)}' does not appear to be a git repository"

        def check(repository: Repository) -> Repository:
            core.policy.checkService(repository, parsed.service, owner.user)
            return repository

        def refused(failure: Failure) -> None:
            # The same words for a missing repository and a hidden one, so
            # nothing leaks: git's own, as a client of git-shell sees them.
            failure.trap(Refusal)
            refusal = failure.value
            self.refuse(notFound if isinstance(refusal, NotFound) else refusal.message)

        # Resolution, the access rules (a wild repository created on a first
        # fetch or push, as gitolite does) and the service check: the same
        # core calls as an HTTP request makes.
        try:
            segments = segmentsOfPath(parsed.path)
        except Refusal as refusal:
            self.refuse(refusal.message)
            return
        # A wild repository is created for a fetch or a push, as gitolite
        # does; an archive of a repository that does not exist yet would be
        # of nothing.
        create = parsed.service is not Service.UPLOAD_ARCHIVE
        resolved = core.resolveFor(segments, owner.user, create=create)
        resolved.addCallback(check).addCallbacks(self._start, refused, callbackArgs=(parsed,))

    def _start(self, repository: Repository, parsed: GitCommand) -> None:
        if self.gone:
            return
        core = self.door.core
        owner = self.avatar.owner
        if parsed.service is Service.RECEIVE_PACK:
            core.runBlocking(partial(sweepStaleQuarantines, repository.gitDir)).addErrback(
                lambda failure: log.failure("sweeping push quarantines failed", failure)
            )
        caller = Caller(
            remoteAddr=self.remoteAddress(),
            user=owner.user,
            protocol=self.gitProtocol,
            transport="ssh",
            keyFingerprint=owner.fingerprint,
        )
        operation = core.operation(parsed.service, repository, caller, statelessRpc=False)
        assert self.operation is not None
        self.operation.start(core, operation)

    def operationEnded(self, outcome: GitOutcome) -> None:
        """git's exit status becomes the session's; a failure's first line goes to stderr."""
        if outcome.exitCode != 0:
            # git's stderr stays in the log; its first line tells the user
            # what went wrong (git-shell would show them all of it).
            self.writeStderr(outcome.message)
        self.exit(outcome.exitCode if outcome.exitCode is not None else EXIT_FATAL)

    # Data from the client: git's stdin ---------------------------------------------

    def pauseInput(self) -> None:
        """git's stdin is full: stop re-opening this channel's window."""
        self.inputPaused = True

    def resumeInput(self) -> None:
        """git reads again: give the client back the window it used."""
        self.inputPaused = False
        if self.gone or self.localClosed:
            return
        used = self.localWindowSize - self.localWindowLeft
        if used > 0:
            self.connection.adjustWindow(self, used)

    def dataReceived(self, data: bytes) -> None:
        if self.operation is not None:
            self.operation.stdin.feed(data)

    def eofReceived(self) -> None:
        if self.operation is not None:
            self.operation.stdin.finish()

    def closeReceived(self) -> None:
        """
        The client closed the channel: nothing more can reach it, so what is
        still buffered for its window is dropped and the close answered now.
        """
        self.buf = b""
        self.extBuf = []
        self.loseConnection()

    def closed(self) -> None:
        """The channel is gone (closed by both sides, or the connection lost)."""
        self.gone = True
        if self.operation is not None:
            self.operation.clientGone()

    # IDuplexDoor: the channel as git's stream ------------------------------------------

    # An encrypted channel: every byte goes through conch.
    plainTransport = None

    def sendToClient(self, data: bytes) -> None:
        self.write(data)

    def attachProducer(self, producer: IPushProducer) -> None:
        """The channel's window paces git (see L{stopWriting}); a closed one pauses it now."""
        if not self.areWriting:
            producer.pauseProducing()

    def detachProducer(self) -> None:
        """Nothing to undo: the channel only forwards its window to the operation."""

    def stopWriting(self) -> None:
        """The client's window is full: pause git."""
        if self.operation is not None:
            self.operation.pauseOutput()

    def startWriting(self) -> None:
        if self.operation is not None:
            self.operation.resumeOutput()

    def write(self, data: bytes) -> None:
        if not self.gone:
            super().write(data)
