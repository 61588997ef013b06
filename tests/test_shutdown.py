"""Unit tests for gitserve.app.shutdown: drain, then end what is left, with a clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from gitserve.app.shutdown import REAP_MARGIN, GracefulShutdownService
from gitserve.core.jobs import JobLimiter
from tests.fakes import FakeJob


class FakeSite:
    """The connection side of a shutdown: drained at once, aborted on demand."""

    def __init__(self) -> None:
        self.aborted = False
        self.drained: Deferred[None] = succeed(None)

    def drainConnections(self) -> Deferred[None]:
        return self.drained

    def abortConnections(self) -> None:
        self.aborted = True


class GracefulShutdownTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = MemoryReactorClock()
        self.jobs = JobLimiter(maxJobs=4, maxQueue=0)
        self.site = FakeSite()
        self.job = FakeJob()
        self.jobs.run(lambda: self.job)
        self.service = GracefulShutdownService(self.jobs, self.site, 30, 5, self.clock)  # type: ignore[arg-type]
        self.service.startService()

    def test_transferFinishesWithinGrace(self) -> None:
        """A transfer that ends within the grace is not touched, and the stop completes then."""
        stopped = self.service.stopService()
        self.clock.advance(29)
        self.assertNoResult(stopped)
        self.job.exit(0)
        self.successResultOf(stopped)
        self.assertFalse(self.job.terminated)
        self.assertFalse(self.site.aborted)

    def test_graceOverEndsChildren(self) -> None:
        """After the grace the child is ended; the stop completes when it has gone."""
        stopped = self.service.stopService()
        self.clock.advance(30)
        self.assertTrue(self.job.terminated)
        self.assertNoResult(stopped)
        self.job.exit(None)
        self.successResultOf(stopped)
        self.assertTrue(self.site.aborted)

    def test_childThatNeverEndsDoesNotHoldTheStop(self) -> None:
        """A child that survives SIGKILL's grace does not keep the daemon up."""
        stopped = self.service.stopService()
        self.clock.advance(30)
        self.clock.advance(5 + REAP_MARGIN)
        self.successResultOf(stopped)

    def test_connectionsAreWaitedFor(self) -> None:
        """Responses still being sent keep the stop waiting, within the grace."""
        self.site.drained = Deferred()
        stopped = self.service.stopService()
        self.job.exit(0)
        self.assertNoResult(stopped)
        self.site.drained.callback(None)
        self.successResultOf(stopped)
