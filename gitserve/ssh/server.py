"""
The SSH server: host key, key login, idle timeout, and the connections a
graceful shutdown waits for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.transport import SSHServerTransport
from twisted.conch.ssh.userauth import SSHUserAuthServer
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from gitserve.core.connections import OpenConnections
from gitserve.core.operations import GitCore
from gitserve.ssh.keys import KeyDirectory, KeyDirectoryChecker, KeyOwner, loadOrCreateHostKey
from gitserve.ssh.logs import conchLog
from gitserve.ssh.session import GitAvatar, GitSSHConnection, SSHDoor

log = Logger()

# OpenSSH's LoginGraceTime: a connection that has not logged in by then is
# dropped (conch's default is ten hours).
LOGIN_TIMEOUT = 120


def abortConnection(transport: Any) -> None:
    """Drop a TCP connection at once (what is buffered for it is discarded)."""
    if transport is not None:
        transport.abortConnection()


@implementer(IRealm)
class GitSSHRealm:
    """Gives each key owner an avatar that can only run git."""

    def __init__(self, door: SSHDoor) -> None:
        self.door = door

    def requestAvatar(  # type: ignore[override]
        self, avatarId: KeyOwner, mind: object, *interfaces: Any
    ) -> tuple[Any, GitAvatar, Any]:
        """
        The avatar for a key owner. (IRealm types avatar IDs as bytes; the
        key checker gives a L{KeyOwner}, which carries the fingerprint too.)
        """
        if IConchUser not in interfaces:
            raise NotImplementedError("only SSH users")
        return IConchUser, GitAvatar(avatarId, self.door), lambda: None


class GitUserAuthServer(SSHUserAuthServer):
    """Key login only (the portal has no other checker), within a grace time."""

    loginTimeout = LOGIN_TIMEOUT
    _log = conchLog


class GitSSHServerTransport(SSHServerTransport, TimeoutMixin):
    """
    One SSH connection, dropped after C{idleTimeout} seconds with nothing
    sent either way: a client that stops reading (its window is full, git is
    paused) or stops sending. A transfer that moves, however slowly, and
    git's keepalives while it prepares a pack, keep it open.
    """

    factory: GitSSHFactory
    _log = conchLog

    def connectionMade(self) -> None:
        super().connectionMade()
        self.callLater = self.factory.clock.callLater  # type: ignore[assignment]
        self.setTimeout(self.factory.idleTimeout)
        self.factory.connections.add(self)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        self.resetTimeout()
        super().sendPacket(messageType, payload)

    def timeoutConnection(self) -> None:
        log.info("ssh: dropping a connection idle for {seconds}s", seconds=self.factory.idleTimeout)
        abortConnection(self.transport)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """A client saying goodbye is routine, not an error (conch logs it as one)."""
        log.debug("ssh: client disconnected ({code})", code=reasonCode)

    def connectionLost(self, reason: Failure | None = None) -> None:  # type: ignore[override]
        self.setTimeout(None)
        super().connectionLost(reason)
        self.factory.connectionClosed(self)

    def hasRunningChannels(self) -> bool:
        """Whether a session on this connection still has a git operation going."""
        service = getattr(self, "service", None)
        channels = getattr(service, "channels", {}) if service is not None else {}
        return any(getattr(channel, "commandSeen", False) for channel in channels.values())


class GitSSHFactory(SSHFactory):
    """
    Serves git over SSH with one host key, logging users in by the keydir.

    @ivar connections: the open connections, for a graceful shutdown.
    """

    protocol = GitSSHServerTransport
    _log = conchLog
    services = {
        b"ssh-userauth": GitUserAuthServer,
        b"ssh-connection": GitSSHConnection,
    }

    def __init__(
        self,
        core: GitCore,
        hostKey: Key,
        keys: KeyDirectory,
        clock: IReactorTime,
        idleTimeout: float,
    ) -> None:
        self.publicKeys = {hostKey.sshType(): hostKey.public()}
        self.privateKeys = {hostKey.sshType(): hostKey}
        self.primes = None
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.portal = Portal(GitSSHRealm(SSHDoor(core, clock)), [KeyDirectoryChecker(keys)])
        self.connections: OpenConnections[GitSSHServerTransport] = OpenConnections()
        self.draining = False

    def connectionClosed(self, transport: GitSSHServerTransport) -> None:
        self.connections.discard(transport)

    def drainConnections(self) -> Deferred[None]:
        """
        Close the connections that run no git operation now; the others are
        closed as their operation ends (the session closes its channel, and
        the client then closes the connection), or aborted by the shutdown's
        last step.

        @return: fires when no connection is left.
        """
        self.draining = True
        for transport in self.connections:
            if not transport.hasRunningChannels():
                transport.loseConnection()
        return self.connections.whenEmpty()

    def abortConnections(self) -> None:
        """Drop every connection at once: the last step of a shutdown."""
        for transport in self.connections:
            abortConnection(transport.transport)


def makeSSHFactory(
    core: GitCore,
    hostKeyPath: Path,
    keysPath: Path,
    clock: IReactorTime,
    idleTimeout: float,
) -> GitSSHFactory:
    """
    The SSH door, with its host key loaded (created on first start).

    @raise OSError: the host key cannot be read or created.
    """
    return GitSSHFactory(
        core, loadOrCreateHostKey(hostKeyPath), KeyDirectory(keysPath), clock, idleTimeout
    )
