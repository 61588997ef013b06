"""Unit tests for gitserve.app.tls: ssl: descriptions with a certificate that reloads."""

from __future__ import annotations

import os
import signal

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import (
    SSL4ServerEndpoint,
    TCP4ServerEndpoint,
    quoteStringArgument,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import DiffieHellmanParameters
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase

from gitserve.app.tls import (
    CertificateMismatchError,
    CertificateReloadService,
    ReloadableServerTLS,
    reloadableServerFromString,
    splitDescription,
)
from tests.certs import makeSelfSigned
from tests.fakes import scratchDirectory

# RFC 7919's ffdhe2048 group, as `openssl genpkey -genparam -algorithm DH
# -pkeyopt dh_param:ffdhe2048` writes it: fixed, so no test generates DH
# parameters (slow, and deprecated in cryptography).
FFDHE2048 = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


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


class SplitDescriptionTests(SynchronousTestCase):
    def test_positionalAndKeywordParts(self) -> None:
        """Parts without "=" are positional, in order; the others are keywords."""
        self.assertEqual(splitDescription("a:b:d=1:c"), (["a", "b", "c"], {"d": "1"}))

    def test_valueMayHoldEquals(self) -> None:
        """Only the first "=" of a part names a keyword; the value keeps the rest."""
        self.assertEqual(
            splitDescription("ssl:0:privateKey=a=b"), (["ssl", "0"], {"privateKey": "a=b"})
        )

    def test_quotedArgumentRoundTrips(self) -> None:
        """What quoteStringArgument writes comes back as it was, colons and backslashes too."""
        path = "/etc/tls:1/k\\ey=.pem"
        args, kwargs = splitDescription("ssl:0:privateKey=" + quoteStringArgument(path))
        self.assertEqual((args, kwargs), (["ssl", "0"], {"privateKey": path}))

    def test_loneBackslashRefused(self) -> None:
        """A description ending in a lone backslash is refused as a ValueError."""
        with self.assertRaises(ValueError):
            splitDescription("tcp:8080\\")


class SSLParametersTests(SynchronousTestCase):
    """Every ssl: parameter means what it means to Twisted's serverFromString."""

    def setUp(self) -> None:
        self.dir = scratchDirectory(self)
        self.key, self.cert = makeSelfSigned(self.dir, commonName="first")
        self.reactor = MemoryReactorClock()

    def listenedWith(self, description: str) -> tuple[tuple[object, ...], ReloadableServerTLS]:
        """Listen on C{description}; return the reactor's record of it and its TLS."""
        endpoint, tls = reloadableServerFromString(self.reactor, description)
        assert tls is not None
        endpoint.listen(Factory.forProtocol(Protocol))
        return self.reactor.sslServers[-1], tls

    def test_certKeyDefaultsToPrivateKey(self) -> None:
        """One file holding the key and the certificate is enough, as with Twisted's ssl:."""
        combined = self.dir / "combined.pem"
        combined.write_bytes(self.cert.read_bytes() + self.key.read_bytes())
        _, tls = self.listenedWith(f"ssl:0:privateKey={combined}")
        self.assertEqual(servedCommonName(tls), "first")

    def test_positionalParametersInTwistedsOrder(self) -> None:
        """ssl:PORT:PRIVATEKEY:CERTKEY works positionally, as Twisted orders the parameters."""
        (port, _, _, backlog, interface), tls = self.listenedWith(
            f"ssl:8443:{quoteStringArgument(str(self.key))}:{quoteStringArgument(str(self.cert))}"
        )
        self.assertEqual((port, backlog, interface), (8443, 50, ""))
        self.assertEqual(servedCommonName(tls), "first")

    def test_interfaceAndBacklog(self) -> None:
        """interface= and backlog= reach listenSSL."""
        (_, _, _, backlog, interface), _ = self.listenedWith(
            f"ssl:0:privateKey={self.key}:certKey={self.cert}:backlog=7:interface=\\:\\:1"
        )
        self.assertEqual((backlog, interface), (7, "::1"))

    def test_extraCertChainServed(self) -> None:
        """extraCertChain's certificates are added to the chain, read with cryptography."""
        _, intermediate = makeSelfSigned(self.dir, name="intermediate", commonName="ca")
        _, tls = self.listenedWith(
            f"ssl:0:privateKey={self.key}:certKey={self.cert}:extraCertChain={intermediate}"
        )
        [chained] = tls.certificateOptions.extraCertChain
        self.assertEqual(chained, x509.load_pem_x509_certificate(intermediate.read_bytes()))
        self.assertEqual(servedCommonName(tls), "first")

    def test_extraCertChainWithoutCertificatesRefused(self) -> None:
        """A chain file with no certificate in it is refused, with Twisted's message."""
        with self.assertRaises(ValueError) as caught:
            reloadableServerFromString(
                self.reactor,
                f"ssl:0:privateKey={self.key}:certKey={self.cert}:extraCertChain={self.key}",
            )
        self.assertIn("doesn't contain any valid certificates", str(caught.exception))

    def test_dhParametersFile(self) -> None:
        """dhParameters= names the file of Diffie-Hellman parameters the context loads."""
        parameters = self.dir / "dh.pem"
        parameters.write_bytes(FFDHE2048)
        _, tls = self.listenedWith(
            f"ssl:0:privateKey={self.key}:certKey={self.cert}:dhParameters={parameters}"
        )
        self.assertIs(type(tls.certificateOptions.dhParameters), DiffieHellmanParameters)
        self.assertEqual(servedCommonName(tls), "first")
        # The context reads the file itself: once it is gone, a reload fails.
        parameters.unlink()
        with capturedLogs():
            self.assertFalse(tls.reload())

    def test_mismatchedKeyRefused(self) -> None:
        """A key that is not the certificate's stops the start-up before any handshake."""
        otherKey, _ = makeSelfSigned(self.dir, name="other")
        with self.assertRaises(CertificateMismatchError):
            reloadableServerFromString(
                self.reactor, f"ssl:0:privateKey={otherKey}:certKey={self.cert}"
            )

    def test_positionalSslmethodRefused(self) -> None:
        """sslmethod is refused in its positional place too."""
        with self.assertRaises(ValueError):
            reloadableServerFromString(self.reactor, f"ssl:0:{self.key}:{self.cert}:TLSv1_METHOD")

    def test_unknownParameterRefused(self) -> None:
        """A parameter ssl: does not have is refused, as serverFromString refuses it."""
        with self.assertRaises(TypeError):
            reloadableServerFromString(
                self.reactor, f"ssl:0:privateKey={self.key}:certKey={self.cert}:colour=blue"
            )
