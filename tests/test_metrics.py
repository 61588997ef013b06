"""
Unit tests for running behind a load balancer: the metrics seam and its
Prometheus side, /-/health and the drain announcement, haproxy: listeners
and --trusted-proxy, as makeService wires them.
"""

from __future__ import annotations

from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from gitserve.app.listening import ListeningService
from gitserve.app.metrics import PrometheusMetrics
from gitserve.app.proxy import (
    TrustedPeersFactory,
    canonicalAddress,
    isTrusted,
    parseNetwork,
    proxiedServerFromString,
    warnIfProxyUntrusted,
)
from gitserve.app.shutdown import DrainAnnouncement, GracefulShutdownService
from gitserve.app.tls import CertificateReloadService
from gitserve.core.jobs import JobLimiter
from gitserve.core.metrics import IMetrics, NullMetrics, OperationLabels, exitStatusLabel
from gitserve.http.channel import GitSite, methodLabel, routeKindOf
from gitserve.http.health import Health
from gitserve.tap import Options, makeService
from tests.certs import makeSelfSigned
from tests.fakes import FakeJob, FakeServiceReactor, parseResponses, scratchDirectory

LB = IPv4Address("TCP", "10.0.0.2", 40000)
STRANGER = IPv4Address("TCP", "192.0.2.7", 40000)


def samples(metrics: PrometheusMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by name and sorted labels."""
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class MetricsTests(SynchronousTestCase):
    def test_bothImplementationsProvideIMetrics(self) -> None:
        """The null and the Prometheus metrics both provide the seam every door reports to."""
        self.assertTrue(verifyObject(IMetrics, NullMetrics()))
        self.assertTrue(verifyObject(IMetrics, PrometheusMetrics()))

    def test_exitStatusLabels(self) -> None:
        """Exit labels: git's code, signal, or aborted when the front door's side failed."""
        self.assertEqual(
            [exitStatusLabel(0, False), exitStatusLabel(128, False), exitStatusLabel(None, False)],
            ["0", "128", "signal"],
        )
        self.assertEqual(exitStatusLabel(0, True), "aborted")

    def test_operationCountsDurationAndBytes(self) -> None:
        """An operation counts once, with its duration and bytes, under bounded labels."""
        metrics = PrometheusMetrics()
        labels = OperationLabels("git-upload-pack", 2, "ssh")
        metrics.operationFinished(labels, "0", 0.3, 120, 4000)
        metrics.operationFinished(labels, "128", 0.01, 10, 0)
        got = samples(metrics)
        base = (("advertise", "false"), ("service", "git-upload-pack"), ("transport", "ssh"))
        key = (*base, ("version", "2"))
        self.assertEqual(
            got[("gitserve_git_operations_total", tuple(sorted((*key, ("exit", "0")))))], 1
        )
        self.assertEqual(
            got[("gitserve_git_operations_total", tuple(sorted((*key, ("exit", "128")))))], 1
        )
        self.assertEqual(got[("gitserve_git_operation_duration_seconds_count", key)], 2)
        self.assertEqual(got[("gitserve_git_sent_bytes_total", key)], 4000)
        self.assertEqual(got[("gitserve_git_received_bytes_total", key)], 130)

    def test_scrapeTimeCountsAreReadWhenScraped(self) -> None:
        """Jobs, refusals, cache lookups and open connections are read when scraped."""
        metrics = PrometheusMetrics()
        jobs = JobLimiter(maxJobs=1, maxQueue=0)
        metrics.watchJobs(jobs)
        open = [3]
        metrics.watchConnections("http", lambda: open[0])

        class Cache:
            hits = 5
            misses = 2

        metrics.watchCache("advertisement", Cache())
        job = FakeJob()
        jobs.run(lambda: job)
        self.failureResultOf(jobs.run(FakeJob))
        got = samples(metrics)
        self.assertEqual(got[("gitserve_jobs_running", ())], 1)
        self.assertEqual(got[("gitserve_jobs_waiting", ())], 0)
        self.assertEqual(got[("gitserve_busy_refusals_total", ())], 1)
        self.assertEqual(got[("gitserve_cache_hits_total", (("cache", "advertisement"),))], 5)
        self.assertEqual(got[("gitserve_cache_misses_total", (("cache", "advertisement"),))], 2)
        self.assertEqual(got[("gitserve_connections_open", (("transport", "http"),))], 3)
        self.assertIn(("process_open_fds", ()), got)

    def test_methodLabelIsBounded(self) -> None:
        """A method a client makes up counts as 'other', so labels cannot grow without bound."""
        self.assertEqual(methodLabel(b"POST"), "POST")
        self.assertEqual(methodLabel(b"BREW"), "other")
        self.assertEqual(methodLabel(None), "other")

    def test_routeKind(self) -> None:
        """The route kind is what the resource said, else browse for HTML, else other."""
        request = DummyRequest([b""])
        self.assertEqual(routeKindOf(request), "other")
        request.responseHeaders.setRawHeaders(b"Content-Type", [b"text/html; charset=utf-8"])
        self.assertEqual(routeKindOf(request), "browse")
        request.routeKind = "smart"  # type: ignore[attr-defined]
        self.assertEqual(routeKindOf(request), "smart")


class HealthTests(SynchronousTestCase):
    def render(self, health: Health, method: bytes = b"GET") -> tuple[int, bytes]:
        request = DummyRequest([b"-", b"health"])
        request.method = method
        body = health.render(request)
        return request.responseCode, body

    def test_okUntilDraining(self) -> None:
        """200 ok while serving; 503 draining once the drain began."""
        health = Health()
        self.assertEqual(self.render(health), (200, b"ok\n"))
        health.beginDraining()
        self.assertEqual(self.render(health), (503, b"draining\n"))

    def test_otherMethodsAre405(self) -> None:
        """Only GET and HEAD are answered."""
        self.assertEqual(self.render(Health(), b"POST")[0], 405)

    def test_drainAnnouncementTurns503AtOnceAndEndsAfterTheDelay(self) -> None:
        """The announcement sets 503 at once; listeners may close only after the delay."""
        clock = MemoryReactorClock()
        health = Health()
        announcement = DrainAnnouncement(health, 2.0, clock)
        first = announcement.begin()
        self.assertTrue(health.draining)
        second = announcement.begin()
        clock.advance(1.9)
        self.assertNoResult(first)
        self.assertNoResult(second)
        clock.advance(0.1)
        self.successResultOf(first)
        self.successResultOf(second)
        self.successResultOf(announcement.begin())

    def test_shutdownDrainsOnlyAfterTheAnnouncement(self) -> None:
        """With a delay, a running job is not waited on (nor its grace started) until it ends."""
        clock = MemoryReactorClock()
        jobs = JobLimiter(maxJobs=1, maxQueue=0)
        job = FakeJob()
        jobs.run(lambda: job)

        class Site:
            def drainConnections(self):
                return succeed(None)

            def abortConnections(self) -> None:
                pass

        announcement = DrainAnnouncement(Health(), 5.0, clock)
        service = GracefulShutdownService(jobs, Site(), 10, 1, clock, announcement)  # type: ignore[arg-type]
        service.startService()
        stopped = service.stopService()
        self.assertTrue(announcement.health.draining)
        clock.advance(5)  # the announcement ends; the grace starts now
        clock.advance(9.9)
        self.assertFalse(job.terminated)
        clock.advance(0.1)
        self.assertTrue(job.terminated)
        job.exit(None)
        self.successResultOf(stopped)

    def test_listenerClosesAfterTheAnnouncement(self) -> None:
        """A listener given the announcement stops listening only when it ends."""
        reactor = FakeServiceReactor()
        announcement = DrainAnnouncement(Health(), 1.0, reactor)
        from twisted.internet.endpoints import TCP4ServerEndpoint

        listener = ListeningService(
            "tcp:0",
            TCP4ServerEndpoint(reactor, 0),
            Factory.forProtocol(Protocol),
            reactor,
            announcement.begin,
        )
        with capturedLogs():
            listener.startService()
        stopped = listener.stopService()
        assert stopped is not None
        self.assertNoResult(stopped)
        reactor.advance(1.0)
        self.successResultOf(stopped)


class ProxyTests(SynchronousTestCase):
    def test_trustedPeers(self) -> None:
        """Only peers inside the allowlist are trusted; a UNIX socket's peer always is."""
        trusted = [parseNetwork("10.0.0.0/8"), parseNetwork("fd00::/8")]
        self.assertTrue(isTrusted(LB, trusted))
        self.assertFalse(isTrusted(STRANGER, trusted))
        self.assertTrue(isTrusted(IPv6Address("TCP", "fd00::5", 1), trusted))
        self.assertTrue(isTrusted(IPv6Address("TCP", "::ffff:10.1.2.3", 1), trusted))
        self.assertFalse(isTrusted(IPv6Address("TCP", "2001:db8::1", 1), trusted))
        self.assertTrue(isTrusted(UNIXAddress(b"/run/lb.sock"), trusted))

    def test_untrustedPeerGetsNoProtocol(self) -> None:
        """A connection from outside the allowlist is closed before anything is read."""
        factory = TrustedPeersFactory(Factory.forProtocol(Protocol), [parseNetwork("10.0.0.0/8")])
        with capturedLogs() as events:
            self.assertIsNone(factory.buildProtocol(STRANGER))
        self.assertIn("not a --trusted-proxy", events[0]["log_format"])
        self.assertIsInstance(factory.buildProtocol(LB), Protocol)

    def test_canonicalIPv6(self) -> None:
        """Twisted's long-hand IPv6 from a PROXY v2 header is written the usual way."""
        long = IPv6Address("TCP", "2001:db8:0:0:0:0:0:7", 5000)
        self.assertEqual(canonicalAddress(long).host, "2001:db8::7")  # type: ignore[attr-defined]
        self.assertIs(canonicalAddress(LB), LB)

    def test_certificateParametersNeedSsl(self) -> None:
        """haproxy:tcp: with certificate parameters is refused (haproxy:ssl: takes them)."""
        with self.assertRaises(ValueError):
            proxiedServerFromString(FakeServiceReactor(), "haproxy:tcp:8080:privateKey=key.pem", [])

    def test_warnsOnlyForAnOpenProxyListener(self) -> None:
        """An untrusted haproxy: listener off loopback is warned about; others are not."""
        public = IPv4Address("TCP", "0.0.0.0", 8080)
        loopback = IPv4Address("TCP", "127.0.0.1", 8080)
        with capturedLogs():
            self.assertTrue(warnIfProxyUntrusted("haproxy:tcp:8080", public, []))
        self.assertFalse(warnIfProxyUntrusted("haproxy:tcp:8080", loopback, []))
        self.assertFalse(
            warnIfProxyUntrusted("haproxy:tcp:8080", public, [parseNetwork("10.0.0.1")])
        )
        self.assertFalse(warnIfProxyUntrusted("tcp:8080", public, []))


class MakeServiceProxyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = scratchDirectory(self)
        self.reactor = FakeServiceReactor()

    def build(self, *args: str):
        options = Options()
        options.parseOptions(["--root", str(self.root), *args])
        service = makeService(options, reactor=self.reactor)
        with capturedLogs():
            service.startService()
        self.addCleanup(lambda: self.successResultOf(service.stopService()))
        return service

    def connect(self, peer: IPv4Address, data: bytes) -> StringTransport | None:
        """Connect to the first listener from C{peer}, send C{data}; the transport or None."""
        factory = self.reactor.tcpServers[0][1]
        protocol = factory.buildProtocol(peer)
        if protocol is None:
            return None
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(data)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionDone()))
        return transport

    def test_proxyHeaderGivesTheClientAddress(self) -> None:
        """Through haproxy:, a request is answered and logged for the PROXY header's client."""
        accessLog = self.root / "access.log"
        self.build(
            "--listen",
            "haproxy:tcp:8080",
            "--trusted-proxy",
            "10.0.0.0/8",
            "--access-log",
            str(accessLog),
        )
        # Trusted peers, then the PROXY header, then canonical addresses, then
        # the site, which the fake reactor does not start (it opens the log).
        site = self.reactor.tcpServers[0][1]
        while not isinstance(site, GitSite):
            site = site.wrappedFactory
        site.doStart()
        self.addCleanup(site.doStop)
        with capturedLogs():
            transport = self.connect(
                LB,
                b"PROXY TCP4 203.0.113.9 10.0.0.1 5000 8080\r\n"
                b"GET /-/nothing HTTP/1.1\r\nHost: x\r\n\r\n",
            )
        assert transport is not None
        [response] = parseResponses(transport.value())
        self.assertEqual(response.status, 404)
        site.logFile.flush()
        self.assertTrue(accessLog.read_text().startswith("203.0.113.9 - - ["))

    def test_untrustedPeerIsRefused(self) -> None:
        """With --trusted-proxy, a connection from elsewhere gets no protocol at all."""
        self.build("--listen", "haproxy:tcp:8080", "--trusted-proxy", "10.0.0.0/8")
        with capturedLogs():
            self.assertIsNone(self.connect(STRANGER, b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2\r\n"))

    def test_metricsListenerComesAfterTheGitListeners(self) -> None:
        """--metrics adds a listener of its own, after the git listeners."""
        service = self.build("--listen", "tcp:8080", "--metrics", "tcp:9100:interface=127.0.0.1")
        listeners = [s for s in service if isinstance(s, ListeningService)]
        self.assertEqual(
            [listener.description for listener in listeners],
            ["tcp:8080", "--metrics tcp:9100:interface=127.0.0.1"],
        )
        self.assertEqual([s[0] for s in self.reactor.tcpServers], [8080, 9100])

    def test_proxyThenTls(self) -> None:
        """haproxy:ssl: reads the PROXY header first, then TLS, and its certificate reloads."""
        key, cert = makeSelfSigned(self.root)
        service = self.build("--listen", f"haproxy:ssl:8443:privateKey={key}:certKey={cert}")
        [(port, factory, _, _)] = self.reactor.tcpServers
        layers = []
        while not isinstance(factory, GitSite):
            layers.append(type(factory).__name__)
            factory = factory.wrappedFactory
        self.assertEqual(
            (port, layers),
            (8443, ["HAProxyWrappingFactory", "CanonicalPeerFactory", "TLSMemoryBIOFactory"]),
        )
        [reloader] = [s for s in service if isinstance(s, CertificateReloadService)]
        with capturedLogs():
            self.assertEqual(reloader.reloadAll(), 1)

    def test_badMetricsEndpointNamesItsOption(self) -> None:
        """A --metrics description that does not parse is a usage error naming --metrics."""
        options = Options()
        options.parseOptions(["--root", str(self.root), "--metrics", "tcp:nope"])
        with self.assertRaises(usage.UsageError) as caught:
            makeService(options, reactor=self.reactor)
        self.assertTrue(str(caught.exception).startswith("--metrics 'tcp:nope' is not"))

    def test_badOptions(self) -> None:
        """A bad --trusted-proxy or --drain-delay is a usage error."""
        for args in (["--trusted-proxy", "nowhere"], ["--drain-delay", "-1"]):
            with self.assertRaises(usage.UsageError):
                Options().parseOptions(["--root", str(self.root), *args])
