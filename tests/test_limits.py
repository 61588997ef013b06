"""Unit tests for gitserve.http.channel: the job queue and the connection deadlines."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from gitserve.core.errors import Busy
from gitserve.core.jobs import JobLimiter
from gitserve.http.channel import MIN_BODY_RATE, GitSite
from tests.fakes import FakeJob

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)


class SlowResource(Resource):
    """A response that is still being produced (a clone in progress)."""

    isLeaf = True

    def render(self, request: object) -> int:
        return NOT_DONE_YET


class BodyReadingResource(Resource):
    """Reads a POST's streamed body, as a push does, and never answers."""

    isLeaf = True

    def render(self, request: object) -> int:
        request.body.readAll()  # type: ignore[attr-defined]
        return NOT_DONE_YET


class JobLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.jobs = JobLimiter(maxJobs=2, maxQueue=2)
        self.started: list[FakeJob] = []

    def start(self) -> FakeJob:
        job = FakeJob()
        self.started.append(job)
        return job

    def test_slotsThenQueueInOrderThenRefusal(self) -> None:
        """Two run, two wait in arrival order, the fifth is refused with Retry-After."""
        results = [self.jobs.run(self.start) for _ in range(4)]
        self.assertEqual(len(self.started), 2)
        self.assertEqual(self.jobs.queued, 2)
        refused = self.failureResultOf(self.jobs.run(self.start), Busy)
        self.assertEqual(refused.value.retryAfter, 10)
        self.started[1].exit()
        self.assertIs(self.successResultOf(results[2]), self.started[2])
        self.assertNoResult(results[3])
        self.started[0].exit()
        self.assertIs(self.successResultOf(results[3]), self.started[3])
        self.assertEqual(self.jobs.busy, 2)

    def test_whenIdle(self) -> None:
        """whenIdle fires once the last child ended and nobody waits."""
        self.successResultOf(self.jobs.whenIdle())
        for _ in range(3):
            self.jobs.run(self.start)
        idle = self.jobs.whenIdle()
        self.started[0].exit()
        self.started[1].exit()
        self.assertNoResult(idle)
        self.started[2].exit()
        self.successResultOf(idle)
        self.assertEqual(self.jobs.busy, 0)

    def test_startThatFailsGivesTheSlotBack(self) -> None:
        """A child that cannot start does not hold its slot."""
        jobs = JobLimiter(maxJobs=1, maxQueue=0)
        self.failureResultOf(jobs.run(lambda: 1 / 0), ZeroDivisionError)
        self.assertEqual(jobs.busy, 0)

    def test_terminateAll(self) -> None:
        """terminateAll ends every running child and turns the queue away."""
        for _ in range(3):
            waiting = self.jobs.run(self.start)
        self.jobs.terminateAll()
        self.assertTrue(all(job.terminated for job in self.started))
        self.failureResultOf(waiting, Busy)


class GuardedChannelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.site = GitSite(SlowResource(), idleTimeout=10, headerTimeout=3, reactor=self.clock)
        self.channel = self.site.buildProtocol(CLIENT)
        self.transport = StringTransport(peerAddress=CLIENT)
        self.channel.makeConnection(self.transport)

    def test_headerDeadlineDespiteTrickle(self) -> None:
        """Headers trickled byte by byte are cut at the deadline, though each byte resets idle."""
        self.channel.dataReceived(b"GET / HTTP/1.1\r\n")
        for _ in range(3):
            self.clock.advance(0.9)
            self.channel.dataReceived(b"X")
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.4)
        self.assertTrue(self.transport.disconnected)

    def test_headersInTimeCancelTheDeadline(self) -> None:
        """Complete headers stop the header deadline."""
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.clock.advance(5)
        self.assertFalse(self.transport.disconnected)

    def test_stalledReaderIsDropped(self) -> None:
        """A client that reads nothing of a response for the idle timeout is aborted."""
        self.channel.dataReceived(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        self.channel.pauseProducing()
        self.clock.advance(9.9)
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(0.2)
        self.assertTrue(self.transport.disconnected)

    def test_slowButProgressingReaderIsKept(self) -> None:
        """A reader that keeps draining, however slowly, is never cut: no absolute deadline."""
        self.channel.dataReceived(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(30):
            self.channel.pauseProducing()
            self.clock.advance(9)
            self.channel.resumeProducing()
        self.assertFalse(self.transport.disconnected)

    def postWith(self, resource: Resource) -> None:
        """Start a POST (100 kB announced) on a fresh channel serving C{resource}."""
        self.site = GitSite(resource, idleTimeout=10, headerTimeout=3, reactor=self.clock)
        self.channel = self.site.buildProtocol(CLIENT)
        self.transport = StringTransport(peerAddress=CLIENT)
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")

    def test_tricklingBodyIsDropped(self) -> None:
        """A body trickled a byte every 5 s (never idle for 10 s) is cut for its rate."""
        self.postWith(BodyReadingResource())
        self.channel.dataReceived(b"x")
        self.clock.advance(5)
        self.channel.dataReceived(b"x")
        self.assertFalse(self.transport.disconnected)
        self.clock.advance(5.1)
        self.assertTrue(self.transport.disconnected)

    def test_steadyBodyIsKept(self) -> None:
        """A body arriving above the minimum rate is never cut."""
        self.postWith(BodyReadingResource())
        for _ in range(20):
            self.channel.dataReceived(b"x" * (MIN_BODY_RATE * 5))
            self.clock.advance(5)
        self.assertFalse(self.transport.disconnected)

    def test_bodyTheServerHoldsIsKept(self) -> None:
        """A body the server does not read yet (no job slot, git busy) is not the client's fault."""
        self.postWith(SlowResource())
        self.channel.dataReceived(b"x")
        self.clock.advance(60)
        self.assertFalse(self.transport.disconnected)

    def test_drainClosesIdleConnections(self) -> None:
        """drainConnections closes an idle connection and fires once it is gone."""
        drained = self.site.drainConnections()
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(drained)
        self.channel.connectionLost(Exception("closed"))
        self.successResultOf(drained)
