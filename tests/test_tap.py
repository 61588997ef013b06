"""The whole daemon as makeService assembles it, built and started on a fake reactor."""

from __future__ import annotations

import base64
import os
import subprocess
import sys

from twisted.application.service import IService, MultiService
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IReactorProcess, IReactorSSL, IReactorTCP, IReactorThreads
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gitserve.app.listening import ListeningService
from gitserve.app.shutdown import GracefulShutdownService
from gitserve.app.systemd import SystemdNotifyService
from gitserve.app.tls import CertificateReloadService, ReloadableServerTLS
from gitserve.http.channel import GitSite
from gitserve.tap import Options, makeService
from tests.certs import makeSelfSigned
from tests.conftest import REPOSITORY_ROOT, daemonCommand
from tests.fakes import FakeServiceReactor, parseResponses, scratchDirectory

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)


def servicesOf(top: IService, kind: type) -> list:
    """The children of C{top} that are C{kind}, in order."""
    assert isinstance(top, MultiService)
    return [service for service in top if isinstance(service, kind)]


class MakeServiceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = scratchDirectory(self)
        self.reactor = FakeServiceReactor()

    def build(self, *args: str) -> IService:
        """Parse C{args} (after --root) and build the service on the fake reactor."""
        options = Options()
        options.parseOptions(["--root", str(self.root), *args])
        return makeService(options, reactor=self.reactor)

    def start(self, service: IService) -> None:
        """
        Start C{service}; when the test ends, stop it (SIGHUP's handler is
        restored) and check that an idle daemon stops at once.
        """
        service.startService()
        self.addCleanup(lambda: self.successResultOf(service.stopService()))

    def test_fakeReactorProvidesWhatMakeServiceUses(self) -> None:
        """The fake reactor really provides the reactor interfaces makeService relies on."""
        for interface in (IReactorTCP, IReactorSSL, IReactorProcess, IReactorThreads):
            self.assertTrue(verifyObject(interface, self.reactor))

    def test_everyServiceIsPresent(self) -> None:
        """One listener per --listen, then TLS reload, graceful shutdown, systemd notify last."""
        service = self.build("--listen", "tcp:0", "--listen", "tcp:0:interface=127.0.0.1")
        self.assertTrue(verifyObject(IService, service))
        kinds = [type(child) for child in service]  # type: ignore[attr-defined]
        self.assertEqual(
            kinds,
            [
                ListeningService,
                ListeningService,
                CertificateReloadService,
                GracefulShutdownService,
                SystemdNotifyService,
            ],
        )
        listeners = servicesOf(service, ListeningService)
        self.assertEqual(
            [listener.description for listener in listeners],
            ["tcp:0", "tcp:0:interface=127.0.0.1"],
        )

    def test_defaultListenIsTcp8080(self) -> None:
        """Without --listen the daemon listens on tcp:8080."""
        self.start(self.build())
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (8080, ""))
        self.assertIsInstance(factory, GitSite)

    def test_startingListensWithTheGitSite(self) -> None:
        """Starting the service listens on the reactor's TCP with the GitSite, and says where."""
        service = self.build("--listen", "tcp:8081:interface=127.0.0.1")
        with capturedLogs() as events:
            self.start(service)
        [(port, factory, _, interface)] = self.reactor.tcpServers
        self.assertEqual((port, interface), (8081, "127.0.0.1"))
        [listener] = servicesOf(service, ListeningService)
        self.assertIs(factory, listener.site)
        self.assertIsInstance(factory, GitSite)
        self.assertIsNotNone(listener.port)
        self.assertIn(
            "gitserve listening on {where} ({description})",
            [event.get("log_format") for event in events],
        )

    def test_tcpAndSslListenBothWork(self) -> None:
        """A tcp: and an ssl: description listen side by side; the reload covers the TLS one."""
        key, cert = makeSelfSigned(self.root)
        service = self.build(
            "--listen",
            "tcp:8080",
            "--listen",
            f"ssl:8443:privateKey={key}:certKey={cert}:interface=127.0.0.1",
        )
        self.start(service)
        [(tcpPort, tcpSite, _, _)] = self.reactor.tcpServers
        [(sslPort, sslSite, contextFactory, _, interface)] = self.reactor.sslServers
        self.assertEqual((tcpPort, sslPort, interface), (8080, 8443, "127.0.0.1"))
        self.assertIs(tcpSite, sslSite)
        self.assertIsInstance(contextFactory, ReloadableServerTLS)
        [reloader] = servicesOf(service, CertificateReloadService)
        makeSelfSigned(self.root, commonName="renewed")
        with capturedLogs():
            self.assertEqual(reloader.reloadAll(), 1)

    def test_badDescriptionIsAUsageError(self) -> None:
        """A --listen description that does not parse is a UsageError from makeService."""
        with self.assertRaises(usage.UsageError) as caught:
            self.build("--listen", "tcp:http")
        self.assertTrue(str(caught.exception).startswith("--listen 'tcp:http' is not an endpoint"))
        self.assertEqual(self.reactor.tcpServers, [])

    def test_authOptionsWireAChecker(self) -> None:
        """--auth puts its checker behind HTTP Basic: refused without the password, let in with."""
        service = self.build("--auth", "memory:alice:secret", "--private", "--realm", "forge")
        [listener] = servicesOf(service, ListeningService)

        def get(authorization: bytes | None) -> int:
            channel = listener.site.buildProtocol(CLIENT)
            transport = StringTransport(peerAddress=CLIENT)
            channel.makeConnection(transport)
            header = b"Authorization: Basic %s\r\n" % authorization if authorization else b""
            channel.dataReceived(
                b"GET /nothing.git/info/refs HTTP/1.1\r\nHost: x\r\n%s\r\n" % header
            )
            [response] = parseResponses(transport.value())
            if response.status == 401:
                challenge = response.header(b"www-authenticate") or b""
                self.assertTrue(challenge.startswith(b'Basic realm="forge"'), challenge)
            channel.connectionLost(None)
            return response.status

        with capturedLogs():
            self.assertEqual(get(None), 401)
            self.assertEqual(get(base64.b64encode(b"alice:wrong")), 401)
            # Let in, to find that there is no such repository.
            self.assertEqual(get(base64.b64encode(b"alice:secret")), 404)


class NoGlobalReactorTests(SynchronousTestCase):
    def test_parsingOptionsInstallsNoReactor(self) -> None:
        """Importing gitserve and parsing its options leaves the global reactor uninstalled."""
        script = (
            "import sys, gitserve.tap, gitserve.app.tls, gitserve.app.listening\n"
            "gitserve.tap.Options().parseOptions(['--root', '.', '--listen', 'tcp:0'])\n"
            "print('twisted.internet.reactor' in sys.modules)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)},
            timeout=60,
        )
        self.assertEqual(result.stdout.strip(), "False", result.stderr)

    def test_twistdReportsABadListenAsAUsageError(self) -> None:
        """Under twistd a bad --listen prints the usage and the error, no traceback, status 1."""
        root = scratchDirectory(self)
        result = subprocess.run(
            daemonCommand("--root", str(root), "--listen", "tcp:http"),
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPOSITORY_ROOT)},
            timeout=60,
        )
        self.assertEqual(result.returncode, 1)
        self.assertNotIn("Traceback", result.stdout + result.stderr)
        self.assertIn("--listen=", result.stdout)
        self.assertIn(
            "-n: --listen 'tcp:http' is not an endpoint: invalid literal for int()",
            result.stdout,
        )
