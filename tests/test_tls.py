"""Unit tests for gitserve.app.tls: ssl: descriptions with a certificate that reloads."""

from __future__ import annotations

import os
import signal

from cryptography.x509.oid import NameOID
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from gitserve.app.tls import CertificateReloadService, reloadableServerFromString
from tests.certs import makeSelfSigned
from tests.fakes import scratchDirectory


def newConnection(tls: object) -> object:
    """The server side of a new TLS connection, made the way a listening port makes it."""
    factory = TLSMemoryBIOFactory(tls, False, Factory.forProtocol(Protocol))
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 0))
    protocol.makeConnection(StringTransport())
    return protocol._tlsConnection  # type: ignore[union-attr]


def commonName(connection: object) -> str:
    """The subject CN of the certificate a TLS connection presents, read with cryptography."""
    certificate = connection.get_certificate(as_cryptography=True)  # type: ignore[attr-defined]
    [attribute] = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attribute.value)


def servedCommonName(tls: object) -> str:
    """The subject CN of the certificate a new connection would present."""
    return commonName(newConnection(tls))


class ReloadableEndpointTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = scratchDirectory(self)
        self.key, self.cert = makeSelfSigned(self.dir, commonName="first")
        self.description = f"ssl:0:privateKey={self.key}:certKey={self.cert}:interface=127.0.0.1"
        self.reactor = MemoryReactorClock()

    def test_sslDescriptionBecomesReloadableEndpoint(self) -> None:
        """An ssl: description gives an SSL endpoint listening with the reloadable TLS."""
        endpoint, tls = reloadableServerFromString(self.reactor, self.description)
        self.assertIsInstance(endpoint, SSL4ServerEndpoint)
        endpoint.listen(object())  # type: ignore[attr-defined]
        port, _, contextFactory, _, interface = self.reactor.sslServers[0]
        self.assertIs(contextFactory, tls)
        self.assertEqual(interface, "127.0.0.1")
        self.assertEqual(servedCommonName(tls), "first")

    def test_reloadSwapsCertificateForNewConnections(self) -> None:
        """After a reload new connections present the renewed certificate."""
        _, tls = reloadableServerFromString(self.reactor, self.description)
        before = newConnection(tls)
        makeSelfSigned(self.dir, commonName="renewed")
        self.assertTrue(tls.reload())  # type: ignore[union-attr]
        self.assertEqual(servedCommonName(tls), "renewed")
        self.assertEqual(commonName(before), "first")

    def test_badReloadKeepsCurrentCertificate(self) -> None:
        """A key that does not match the new certificate is refused and logged."""
        _, tls = reloadableServerFromString(self.reactor, self.description)
        otherKey, _ = makeSelfSigned(self.dir, name="other")
        os.replace(otherKey, self.key)
        with capturedLogs() as events:
            self.assertFalse(tls.reload())  # type: ignore[union-attr]
        self.assertEqual(servedCommonName(tls), "first")
        self.assertIn("keeping the current certificate", events[0]["log_format"])

    def test_sslmethodRefused(self) -> None:
        """sslmethod= could only lower the TLS version, so it is refused."""
        with self.assertRaises(ValueError):
            reloadableServerFromString(self.reactor, self.description + ":sslmethod=TLSv1_METHOD")

    def test_otherDescriptionsUnchanged(self) -> None:
        """tcp: and friends are built by Twisted as usual, with nothing to reload."""
        endpoint, tls = reloadableServerFromString(self.reactor, "tcp:0:interface=127.0.0.1")
        self.assertIsInstance(endpoint, TCP4ServerEndpoint)
        self.assertIsNone(tls)


class CertificateReloadServiceTests(SynchronousTestCase):
    def test_sighupReloadsThroughTheReactor(self) -> None:
        """SIGHUP hands a reload to the reactor thread, and stopping restores the handler."""
        directory = scratchDirectory(self)
        key, cert = makeSelfSigned(directory, commonName="first")
        _, tls = reloadableServerFromString(
            MemoryReactorClock(), f"ssl:0:privateKey={key}:certKey={cert}"
        )
        queued: list[object] = []
        service = CertificateReloadService([tls], lambda f: queued.append(f))  # type: ignore[list-item]
        previous = signal.getsignal(signal.SIGHUP)
        service.startService()
        try:
            makeSelfSigned(directory, commonName="renewed")
            signal.raise_signal(signal.SIGHUP)
        finally:
            service.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), previous)
        self.assertEqual(servedCommonName(tls), "first")
        [reload] = queued
        self.assertEqual(reload(), 1)  # type: ignore[operator]
        self.assertEqual(servedCommonName(tls), "renewed")
