"""
TLS listeners whose certificate can be swapped while serving.

Certificates are renewed every few weeks (ACME clients renew at 60 of 90
days); restarting the daemon for that would cut every clone in flight. A
L{ReloadableServerTLS} stands where Twisted's C{ssl:} endpoint puts its
C{CertificateOptions}: each new connection asks it for its TLS connection, so
after L{ReloadableServerTLS.reload} new handshakes use the new certificate
while established connections keep the one they started with.
"""

from __future__ import annotations

import ipaddress
import signal
from collections.abc import Callable, Sequence
from typing import Any

from OpenSSL.SSL import Connection, Context
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IReactorSSL
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from zope.interface import implementer


@implementer(IOpenSSLServerConnectionCreator)
class ReloadableServerTLS:
    """
    A server TLS configuration that can be replaced by reloading its files.

    A reload that fails (a half-written key, a key that does not match the
    certificate) is logged and changes nothing: the daemon keeps serving the
    certificate it has rather than refusing every handshake.
    """

    log = Logger()

    def __init__(self, load: Callable[[], CertificateOptions], name: str) -> None:
        """
        @param load: reads the key and certificate files and returns the
            options to serve with; called now (a failure stops the start-up)
            and again on each reload.
        @param name: what to call this listener in log lines.
        """
        self._load = load
        self._name = name
        self._current = load()

    def reload(self) -> bool:
        """
        Read the files again and use them for new connections.

        @return: whether the new certificate is now in use.
        """
        try:
            options = self._load()
            # Build the context now, so a key that does not match its
            # certificate fails here and not in the next handshake.
            options.getContext()
        except Exception as e:
            self.log.error(
                "TLS reload for {name} failed, keeping the current certificate: {error}",
                name=self._name,
                error=str(e) or repr(e),
            )
            return False
        self._current = options
        self.log.info("TLS certificate reloaded for {name}", name=self._name)
        return True

    @property
    def certificateOptions(self) -> CertificateOptions:
        """The options new connections are made with."""
        return self._current

    def serverConnectionForTLS(self, tlsProtocol: object) -> Connection:
        """A TLS connection for a new client, made with the current certificate."""
        return self._current.serverConnectionForTLS(tlsProtocol)

    def getContext(self) -> Context:
        """The current context, for code that still asks the pre-creator interface."""
        return self._current.getContext()


def reloadableServerFromString(
    reactor: IReactorSSL, description: str
) -> tuple[object, ReloadableServerTLS | None]:
    """
    Build a server endpoint like L{endpoints.serverFromString}, but make the
    certificate of an C{ssl:} description reloadable.

    The description is parsed by Twisted's own parser, so every C{ssl:}
    parameter (C{privateKey}, C{certKey}, C{extraCertChain}, C{dhParameters},
    C{interface}, C{backlog}) means exactly what it means to
    C{serverFromString}, and a reload re-reads the same files the same way.

    @return: the endpoint, and its L{ReloadableServerTLS} for C{ssl:}
        descriptions (L{None} for every other kind).
    @raise ValueError: for C{sslmethod=}: the default already means TLS 1.2
        or newer, and a pinned method could only lower that.
    """
    # _parseServer is private, but it is what serverFromString itself calls;
    # tests/test_tls.py pins its shape, so an upgrade that changes it fails
    # there rather than at an admin's start-up.
    kind, args, kwargs = endpoints._parseServer(description, None)
    if kind != "SSL":
        return endpoints.serverFromString(reactor, description), None
    if "sslmethod" in endpoints._parse(description)[1]:
        raise ValueError("sslmethod= is not supported: gitserve serves TLS 1.2 or newer")
    port, _, _ = args

    def load() -> CertificateOptions:
        _, (_, _, options), _ = endpoints._parseServer(description, None)
        return options

    tls = ReloadableServerTLS(load, f"ssl:{port}")
    endpoint = endpoints.SSL4ServerEndpoint(reactor, port, tls, **kwargs)
    return endpoint, tls


_plaintextLog = Logger()


def warnIfPlaintextAuth(description: str, address: object, tls: ReloadableServerTLS | None) -> bool:
    """
    Warn when passwords would cross a network in clear: HTTP Basic sent over
    plain TCP on an interface other than loopback (a TLS-terminating proxy in
    front should then listen on loopback, or gitserve serve TLS itself).

    @param address: the listening port's C{getHost()}.
    @return: whether a warning was logged.
    """
    host = getattr(address, "host", None)
    if tls is not None or getattr(address, "type", None) != "TCP" or host is None:
        return False
    try:
        loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return False
    _plaintextLog.warn(
        "--listen {description}: HTTP Basic passwords would travel unencrypted on {host}; "
        "serve TLS (ssl:...) or listen on 127.0.0.1 behind a TLS proxy",
        description=description,
        host=host,
    )
    return True


class CertificateReloadService(Service):
    """
    Reload every TLS certificate on SIGHUP, the signal C{systemctl reload}
    and certificate renewal hooks send.

    Installed even without TLS listeners: SIGHUP's default action would
    otherwise end the daemon and every transfer with it.
    """

    log = Logger()

    def __init__(
        self,
        reloadables: Sequence[ReloadableServerTLS],
        callFromThread: Callable[..., object],
    ) -> None:
        """
        @param callFromThread: the reactor's C{callFromThread}: a signal
            handler runs between two bytecodes of whatever the reactor is
            doing, so the reload itself is handed to the reactor loop.
        """
        self._reloadables = list(reloadables)
        self._callFromThread = callFromThread
        self._previous: Any = None

    def reloadAll(self) -> int:
        """Reload every certificate; return how many now serve new files."""
        reloaded = sum(tls.reload() for tls in self._reloadables)
        self.log.info(
            "SIGHUP: {reloaded} of {total} TLS certificates reloaded",
            reloaded=reloaded,
            total=len(self._reloadables),
        )
        return reloaded

    def _onSignal(self, signum: int, frame: object) -> None:
        self._callFromThread(self.reloadAll)

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(signal.SIGHUP, self._onSignal)

    def stopService(self) -> None:
        super().stopService()
        signal.signal(signal.SIGHUP, self._previous)
