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
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL.SSL import Connection, Context
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IReactorSSL,
    IStreamServerEndpoint,
)
from twisted.internet.ssl import CertificateOptions, DiffieHellmanParameters
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.filepath import FilePath
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

    def serverConnectionForTLS(self, tlsProtocol: TLSMemoryBIOProtocol) -> Connection:
        """A TLS connection for a new client, made with the current certificate."""
        return self._current.serverConnectionForTLS(tlsProtocol)

    def getContext(self) -> Context:
        """The current context, for code that still asks the pre-creator interface."""
        return self._current.getContext()


# The ssl: parameters that describe the certificate rather than the socket;
# a systemd: description may carry them too (TLS on a socket-activated port).
TLS_PARAMETERS = ("privateKey", "certKey", "extraCertChain", "dhParameters")

# How Twisted's ssl: parser finds the certificates of an extraCertChain file.
_CHAIN_CERTIFICATE = re.compile(
    r"(-----BEGIN CERTIFICATE-----\n.+?\n-----END CERTIFICATE-----)", flags=re.DOTALL
)


class CertificateMismatchError(Exception):
    """
    The private key does not belong to the certificate.

    Not a L{ValueError}: start-up reports it as a failed TLS set-up, not as a
    description that does not parse, as it did when Twisted read the files.
    """


def splitDescription(description: str) -> tuple[list[str], dict[str, str]]:
    """
    Split an endpoint description the way L{endpoints.serverFromString} does:
    C{:} separates the parts, the first C{=} of a part makes it a keyword
    argument, and a backslash takes the next character literally (what
    L{endpoints.quoteStringArgument} writes).

    Twisted's own splitter is private, so gitserve has this one; the tests
    check it against what C{quoteStringArgument} writes.

    @return: the positional parts (the first names the endpoint type) and
        the keyword arguments.
    @raise ValueError: for a description ending in a lone backslash.
    """
    args: list[str] = []
    kwargs: dict[str, str] = {}
    part: list[str] = []
    current = ""
    separators = ":="
    characters = iter(description)
    for character in characters:
        if character in separators:
            part.append(current)
            current = ""
            if character == ":":
                _addPart(part, args, kwargs)
                part = []
                separators = ":="
            else:
                # A value may contain "=": only ":" ends it.
                separators = ":"
        elif character == "\\":
            try:
                current += next(characters)
            except StopIteration:
                raise ValueError("the description ends with a lone backslash") from None
        else:
            current += character
    part.append(current)
    _addPart(part, args, kwargs)
    return args, kwargs


def _addPart(part: list[str], args: list[str], kwargs: dict[str, str]) -> None:
    """File one C{:}-separated part as a positional or a keyword argument."""
    if len(part) == 1:
        args.append(part[0])
    else:
        kwargs[part[0]] = part[1]


@dataclass(frozen=True)
class CertificateFiles:
    """
    The files an C{ssl:} description names, read as Twisted's C{ssl:}
    endpoint reads them, into C{cryptography} objects (pyOpenSSL's C{PKey}
    and C{X509} are deprecated as C{CertificateOptions} arguments).
    """

    privateKey: str
    certKey: str
    extraCertChain: str | None = None
    dhParameters: str | None = None

    def load(self) -> CertificateOptions:
        """
        Read the files now: called at start-up and on every reload.

        @raise OSError: for a file that cannot be read.
        @raise ValueError: for a file that holds no key or certificate.
        @raise CertificateMismatchError: for a key that does not belong to
            the certificate.
        """
        # As Twisted's ssl: does: the first certificate and the first key of
        # the two files together, so that one file may hold both (certKey
        # defaults to privateKey).
        pem = Path(self.certKey).read_bytes() + b"\n" + Path(self.privateKey).read_bytes()
        certificate = x509.load_pem_x509_certificate(pem)
        privateKey = serialization.load_pem_private_key(pem, password=None)
        if privateKey.public_key() != certificate.public_key():
            raise CertificateMismatchError("Certificate public and private keys do not match.")
        chain = None
        if self.extraCertChain is not None:
            text = Path(self.extraCertChain).read_text("ascii")
            chain = [
                x509.load_pem_x509_certificate(block.encode("ascii"))
                for block in _CHAIN_CERTIFICATE.findall(text)
            ]
            if not chain:
                raise ValueError(
                    f"Specified chain file '{self.extraCertChain}' doesn't contain any "
                    "valid certificates in PEM format."
                )
        dhParameters = None
        if self.dhParameters is not None:
            dhParameters = DiffieHellmanParameters.fromFile(FilePath(self.dhParameters))
        # Twisted's annotations still name pyOpenSSL's PKey and X509, which
        # it deprecates at run time in favour of these.
        return CertificateOptions(
            privateKey=privateKey,  # type: ignore[arg-type]
            certificate=certificate,  # type: ignore[arg-type]
            extraCertChain=chain,  # type: ignore[arg-type]
            dhParameters=dhParameters,
        )


def _certificateFiles(
    privateKey: str = "server.pem",
    certKey: str | None = None,
    extraCertChain: str | None = None,
    dhParameters: str | None = None,
) -> CertificateFiles:
    """The certificate parameters of C{ssl:}, with Twisted's defaults."""
    return CertificateFiles(
        privateKey=privateKey,
        certKey=privateKey if certKey is None else certKey,
        extraCertChain=extraCertChain,
        dhParameters=dhParameters,
    )


def _parseSSL(
    port: str,
    privateKey: str = "server.pem",
    certKey: str | None = None,
    sslmethod: str | None = None,
    interface: str = "",
    backlog: str = "50",
    extraCertChain: str | None = None,
    dhParameters: str | None = None,
) -> tuple[int, str, int, CertificateFiles]:
    """
    The parameters of an C{ssl:} description, positional or keyword, in
    Twisted's order and with Twisted's defaults; named as Twisted's parser
    is, so that a parameter C{ssl:} does not have is refused in the same
    words.

    @return: the port, interface, backlog and certificate files.
    @raise ValueError: for C{sslmethod=}: the default already means TLS 1.2
        or newer, and a pinned method could only lower that.
    @raise TypeError: for a parameter C{ssl:} does not have.
    """
    if sslmethod is not None:
        raise ValueError("sslmethod= is not supported: gitserve serves TLS 1.2 or newer")
    files = _certificateFiles(privateKey, certKey, extraCertChain, dhParameters)
    return int(port), interface, int(backlog), files


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

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the wrapped endpoint, each connection wrapped in TLS."""
        return self._wrapped.listen(TLSMemoryBIOFactory(self._tls, False, protocolFactory))


def reloadableServerFromString(
    reactor: IReactorSSL, description: str
) -> tuple[IStreamServerEndpoint, ReloadableServerTLS | None]:
    """
    Build a server endpoint like L{endpoints.serverFromString}, but make the
    certificate of an C{ssl:} description reloadable, and accept the same
    certificate parameters on a C{systemd:} description.

    Every C{ssl:} parameter (C{privateKey}, C{certKey} defaulting to
    C{privateKey}, C{extraCertChain}, C{dhParameters}, C{interface},
    C{backlog}) means what it means to C{serverFromString}, and a reload
    re-reads the same files the same way. Anything else goes to
    C{serverFromString} as written.

    @param reactor: the reactor to listen with (an C{IReactorSSL} for
        C{ssl:}, whatever the endpoint type needs otherwise).
    @return: the endpoint, and its L{ReloadableServerTLS} when it serves TLS
        (L{None} otherwise).
    @raise ValueError: for C{sslmethod=}: the default already means TLS 1.2
        or newer, and a pinned method could only lower that; and for what
        C{serverFromString} refuses.
    """
    args, kwargs = splitDescription(description)
    if "sslmethod" in kwargs:
        raise ValueError("sslmethod= is not supported: gitserve serves TLS 1.2 or newer")
    kind = args[0]
    if kind == "ssl":
        port, interface, backlog, files = _parseSSL(*args[1:], **kwargs)
        tls = ReloadableServerTLS(files.load, f"ssl:{port}")
        endpoint = endpoints.SSL4ServerEndpoint(
            reactor, port, tls, backlog=backlog, interface=interface
        )
        return endpoint, tls
    certificate = {k: kwargs.pop(k) for k in TLS_PARAMETERS if k in kwargs}
    if kind == "systemd" and certificate:
        quote = endpoints.quoteStringArgument
        plain = ":".join(
            ["systemd", *map(quote, args[1:]), *(f"{k}={quote(v)}" for k, v in kwargs.items())]
        )
        tls = ReloadableServerTLS(_certificateFiles(**certificate).load, plain)
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
