"""The fakes in tests/fakes.py keep the promises of the interfaces they stand in for."""

from __future__ import annotations

from twisted.internet.interfaces import IProcessTransport, IReactorProcess, IReactorTime
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gitserve.core.process import GitOutcome
from gitserve.interfaces import IGitJob
from tests.fakes import FakeJob, FakeProcessReactor, FakeProcessTransport


class FakeInterfaceTests(SynchronousTestCase):
    def test_fakeJobIsAGitJob(self) -> None:
        """FakeJob provides IGitJob: done and terminate, as the limiter and shutdown use them."""
        self.assertTrue(verifyObject(IGitJob, FakeJob()))

    def test_fakeJobEndsWithAGitOutcome(self) -> None:
        """FakeJob.done fires with a GitOutcome carrying the exit code, as a real child's does."""
        job = FakeJob()
        job.exit(3)
        outcome = self.successResultOf(job.done)
        self.assertIsInstance(outcome, GitOutcome)
        self.assertEqual(outcome.exitCode, 3)
        self.assertFalse(outcome.succeeded)

    def test_fakeProcessTransportIsAProcessTransport(self) -> None:
        """FakeProcessTransport provides IProcessTransport, down to pid and the close methods."""
        transport = FakeProcessTransport(ProcessProtocol(), ["git"], {}, "/")
        self.assertTrue(verifyObject(IProcessTransport, transport))

    def test_fakeProcessReactorIsAProcessReactorAndAClock(self) -> None:
        """FakeProcessReactor provides IReactorProcess and IReactorTime, and spawns a fake child."""
        reactor = FakeProcessReactor()
        self.assertTrue(verifyObject(IReactorProcess, reactor))
        self.assertTrue(verifyObject(IReactorTime, reactor))
        child = reactor.spawnProcess(ProcessProtocol(), "git", ["git", "version"])
        self.assertTrue(verifyObject(IProcessTransport, child))
        self.assertEqual(reactor.spawned, [child])
