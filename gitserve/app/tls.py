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
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IOpenSSLServerConnectionCreator,
    IReactorSSL,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
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


# The ssl: parameters that describe the certificate rather than the socket;
# a systemd: description may carry them too (TLS on a socket-activated port).
TLS_PARAMETERS = ("privateKey", "certKey", "extraCertChain", "dhParameters")


@implementer(IStreamServerEndpoint)
class TLSServerEndpoint:
    """
    TLS on top of any stream server endpoint, as C{ssl:} puts it on TCP:
    here for the socket systemd passes in, which Twisted's C{systemd:}
    endpoint serves as plain TCP.
    """

    def __init__(self, wrapped: IStreamServerEndpoint, tls: ReloadableServerTLS) -> None:
        self._wrapped = wrapped
        self._tls = tls

    def listen(self, protocolFactory: object) -> Deferred:
        """Listen on the wrapped endpoint, each connection wrapped in TLS."""
        return self._wrapped.listen(TLSMemoryBIOFactory(self._tls, False, protocolFactory))


def _loaderFor(sslDescription: str) -> Callable[[], CertificateOptions]:
    """Read the certificate of an C{ssl:} description with Twisted's own parser."""

    def load() -> CertificateOptions:
        # _parseServer is private, but it is what serverFromString itself
        # calls; tests/test_tls.py pins its shape, so an upgrade that changes
        # it fails there rather than at an admin's start-up.
        _, (_, _, options), _ = endpoints._parseServer(sslDescription, None)
        return options

    return load


def reloadableServerFromString(
    reactor: IReactorSSL, description: str
) -> tuple[IStreamServerEndpoint, ReloadableServerTLS | None]:
    """
    Build a server endpoint like L{endpoints.serverFromString}, but make the
    certificate of an C{ssl:} description reloadable, and accept the same
    certificate parameters on a C{systemd:} description.

    The description is parsed by Twisted's own parser, so every C{ssl:}
    parameter (C{privateKey}, C{certKey}, C{extraCertChain}, C{dhParameters},
    C{interface}, C{backlog}) means exactly what it means to
    C{serverFromString}, and a reload re-reads the same files the same way.

    @return: the endpoint, and its L{ReloadableServerTLS} when it serves TLS
        (L{None} otherwise).
    @raise ValueError: for C{sslmethod=}: the default already means TLS 1.2
        or newer, and a pinned method could only lower that.
    """
    args, kwargs = endpoints._parse(description)
    if "sslmethod" in kwargs:
        raise ValueError("sslmethod= is not supported: gitserve serves TLS 1.2 or newer")
    kind = args[0] if args else ""
    if kind == "ssl":
        _, (port, _, _), listenArgs = endpoints._parseServer(description, None)
        tls = ReloadableServerTLS(_loaderFor(description), f"ssl:{port}")
        return endpoints.SSL4ServerEndpoint(reactor, port, tls, **listenArgs), tls
    certificate = {k: kwargs.pop(k) for k in TLS_PARAMETERS if k in kwargs}
    if kind == "systemd" and certificate:
        quote = endpoints.quoteStringArgument
        plain = ":".join(
            ["systemd", *map(quote, args[1:]), *(f"{k}={quote(v)}" for k, v in kwargs.items())]
        )
        sslDescription = "ssl:0:" + ":".join(f"{k}={quote(v)}" for k, v in certificate.items())
        tls = ReloadableServerTLS(_loaderFor(sslDescription), plain)
        return TLSServerEndpoint(endpoints.serverFromString(reactor, plain), tls), tls
    return endpoints.serverFromString(reactor, description), None


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
