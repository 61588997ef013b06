"""
Listening behind a load balancer: the PROXY protocol (C{haproxy:}
descriptions), and who may send it.

Twisted's C{haproxy:} endpoint reads the PROXY header (v1 or v2) a load
balancer sends first and makes the connection's C{getPeer()} the client's
address from it. Everything gitserve says about a client's address (the
access log, the per-operation log, C{REMOTE_ADDR} and the committer email
git gets, failed logins) comes from C{getPeer()}, through the request's
C{getClientAddress()}, so it all names the real client.

Security: whoever can connect to such a listener can claim any address. So
it must only be reachable from the load balancer (bind it to an internal
interface or loopback, firewall it), or be given C{--trusted-proxy}: then a
connection from any other peer is closed before a byte of it is read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import endpoints
from twisted.internet.address import IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    ILoggingContext,
    IProtocol,
    IProtocolFactory,
    IReactorSSL,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.protocols.haproxy import proxyEndpoint
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from gitserve.app.tls import (
    TLS_PARAMETERS,
    ReloadableServerTLS,
    TLSServerEndpoint,
    _parseSSL,
    splitDescription,
)

PROXY_PREFIX = "haproxy:"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parseNetwork(text: str) -> Network:
    """
    An address or a network (C{10.0.0.5}, C{10.0.0.0/24}, C{fd00::/8}).

    @raise ValueError: for anything else.
    """
    return ipaddress.ip_network(text.strip(), strict=False)


def isTrusted(address: object, trusted: Sequence[Network]) -> bool:
    """
    Whether a connection from C{address} (its real peer, before any PROXY
    header) may send a PROXY header. A peer without an IP address (a UNIX
    socket) is trusted: the socket file's permissions decide who connects.
    """
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in trusted)


@implementer(IProtocolFactory, ILoggingContext)
class TrustedPeersFactory:
    """
    Builds a connection only for a peer in the allowlist, with the wrapped
    factory's own protocol; refuses (closes) the others.
    """

    log = Logger()

    def __init__(self, wrappedFactory: IProtocolFactory, trusted: Sequence[Network]) -> None:
        self.wrappedFactory = wrappedFactory
        self.trusted = list(trusted)

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        if not isTrusted(addr, self.trusted):
            # Security: a PROXY header from this peer would let it claim any
            # client address; nothing it sends is read.
            self.log.warn(
                "refusing a connection from {peer}: not a --trusted-proxy", peer=str(addr)
            )
            return None
        return self.wrappedFactory.buildProtocol(addr)

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def logPrefix(self) -> str:
        wrapped = self.wrappedFactory
        if ILoggingContext.providedBy(wrapped):
            return str(wrapped.logPrefix())  # type: ignore[attr-defined]
        return type(wrapped).__name__


def canonicalAddress(address: IAddress) -> IAddress:
    """
    C{address} with its IPv6 host in the usual compressed form
    (C{2001:db8::7}): Twisted's PROXY v2 parser writes every group
    (C{2001:db8:0:0:0:0:0:7}), which would make the same client look like
    two in logs, fail2ban filters and committer emails.
    """
    if isinstance(address, IPv6Address):
        try:
            host = str(ipaddress.ip_address(address.host))
        except ValueError:
            return address
        return IPv6Address(address.type, host, address.port, address.flowInfo, address.scopeID)
    return address


class _CanonicalPeer(ProtocolWrapper):
    """A connection whose peer is reported in canonical form (see L{canonicalAddress})."""

    def getPeer(self) -> IAddress:
        return canonicalAddress(super().getPeer())


class CanonicalPeerFactory(WrappingFactory):
    """Wraps each connection in L{_CanonicalPeer}."""

    protocol = _CanonicalPeer


@implementer(IStreamServerEndpoint)
class FactoryWrappingEndpoint:
    """An endpoint that listens with C{wrap(factory)} instead of C{factory}."""

    def __init__(
        self,
        wrapped: IStreamServerEndpoint,
        wrap: Callable[[IProtocolFactory], IProtocolFactory],
    ) -> None:
        self._wrapped = wrapped
        self._wrap = wrap

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        return self._wrapped.listen(self._wrap(protocolFactory))


def TrustedPeersEndpoint(
    wrapped: IStreamServerEndpoint, trusted: Sequence[Network]
) -> IStreamServerEndpoint:
    """An endpoint whose connections from peers outside C{trusted} are closed at once."""
    return FactoryWrappingEndpoint(wrapped, lambda f: TrustedPeersFactory(f, trusted))


def proxiedServerFromString(
    reactor: IReactorSSL, description: str, trusted: Sequence[Network]
) -> tuple[IStreamServerEndpoint, ReloadableServerTLS | None]:
    """
    The endpoint of a C{haproxy:} description: the PROXY header is read
    first, then (for C{haproxy:ssl:...}) TLS, as HAProxy sends them when it
    passes TLS through in TCP mode with C{send-proxy-v2}. (Twisted's own
    C{haproxy:ssl:} would expect the header inside TLS.)

    @param description: with the C{haproxy:} prefix.
    @param trusted: the peers allowed to connect; all when empty.
    @return: the endpoint and, for C{ssl:}, its reloadable certificate.
    @raise ValueError: for a description that does not parse.
    """
    inner = description[len(PROXY_PREFIX) :]
    args, kwargs = splitDescription(inner)
    tls: ReloadableServerTLS | None = None
    if args and args[0] == "ssl":
        port, interface, backlog, files = _parseSSL(*args[1:], **kwargs)
        tls = ReloadableServerTLS(files.load, f"haproxy:ssl:{port}")
        plain: IStreamServerEndpoint = endpoints.TCP4ServerEndpoint(
            reactor, port, backlog=backlog, interface=interface
        )
    elif any(name in kwargs for name in TLS_PARAMETERS):
        raise ValueError("haproxy: takes certificate parameters only as haproxy:ssl:...")
    else:
        plain = endpoints.serverFromString(reactor, inner)
    if trusted:
        plain = TrustedPeersEndpoint(plain, trusted)
    endpoint: IStreamServerEndpoint = FactoryWrappingEndpoint(
        proxyEndpoint(plain), CanonicalPeerFactory
    )
    if tls is not None:
        endpoint = TLSServerEndpoint(endpoint, tls)
    return endpoint, tls


_trustLog = Logger()


def warnIfProxyUntrusted(description: str, address: object, trusted: Sequence[Network]) -> bool:
    """
    Warn when a C{haproxy:} listener takes PROXY headers from anyone: not on
    loopback and no C{--trusted-proxy}.

    @param address: the listening port's C{getHost()}.
    @return: whether a warning was logged.
    """
    if trusted or not description.startswith(PROXY_PREFIX):
        return False
    host = getattr(address, "host", None)
    if not isinstance(host, str):
        return False
    try:
        if ipaddress.ip_address(host.split("%")[0]).is_loopback:
            return False
    except ValueError:
        pass
    _trustLog.warn(
        "--listen {description}: any peer that can connect may claim any client address "
        "with a PROXY header; make it reachable only from the load balancer, or give "
        "--trusted-proxy",
        description=description,
    )
    return True


__all__ = [
    "PROXY_PREFIX",
    "TrustedPeersEndpoint",
    "isTrusted",
    "parseNetwork",
    "proxiedServerFromString",
    "warnIfProxyUntrusted",
]
