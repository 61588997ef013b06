"""
A protocol v2 upload-pack conversation over a full-duplex door with the pack
cache on: the advertisement, then each request answered whole by its own
stateless child or cache reader, until the client's flush or EOF.
"""

from __future__ import annotations

import sys

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from gitserve.core.conversation import MAX_REQUEST, CachedConversation, startConversation
from gitserve.core.duplex import DuplexStdin
from gitserve.core.errors import InvalidRequest, TooLarge
from gitserve.core.operations import GitCore
from gitserve.core.pktline import errorLine
from gitserve.core.policy import Policy, Service
from gitserve.core.process import Caller, GitBackend, GitOutcome, GitProcessProtocol
from gitserve.core.repository import ConfigCache, Repository
from gitserve.core.sendfile import SendfileReader
from tests.fakes import FakeProcessReactor, RecordingOutput, makeRepository, scratchDirectory
from tests.test_packcache import CLONE, makeCache, pkt
from tests.test_twistedinternals import _plainTcpServer

LS_REFS = pkt(b"command=ls-refs") + b"0001" + pkt(b"peel") + b"0000"


class ConversationTests(SynchronousTestCase):
    """Requests split at their flush, answered in turn, the end decided once."""

    def setUp(self) -> None:
        base = scratchDirectory(self)
        self.reactor = FakeProcessReactor()
        repository = Repository(makeRepository(base / "root" / "repo.git"), "repo.git")
        self.core = GitCore(
            root=base / "root",
            policy=Policy(ConfigCache()),
            backend=GitBackend(self.reactor, sys.executable, {"PATH": "/usr/bin"}),
            clock=self.reactor,
        )
        self.core.packCache = makeCache(base / "cache")
        self.core.packCache.clock = self.reactor
        caller = Caller("192.0.2.1", protocol=b"version=2", transport="git")
        self.operation = self.core.operation(
            Service.UPLOAD_PACK, repository, caller, statelessRpc=False
        )
        self.output = RecordingOutput()
        self.pauses: list[bool] = []

    def converse(self, plainTransport: object = None) -> tuple[CachedConversation, DuplexStdin]:
        """Start one, answer its advertisement, and connect the client's stream."""
        started = startConversation(self.core, self.operation, self.output, plainTransport)
        conversation = self.successResultOf(started)
        assert isinstance(conversation, CachedConversation)
        advertisement = self.reactor.spawned[0]
        self.assertIn("--advertise-refs", advertisement.args)
        self.assertIn("--stateless-rpc", advertisement.args)
        advertisement.protocol.outReceived(b"0014version 2\n0000")
        advertisement.exit(0)
        stdin = DuplexStdin(lambda: self.pauses.append(True), lambda: self.pauses.append(False))
        conversation.streamStdin(stdin)
        return conversation, stdin

    def answer(self, data: bytes) -> None:
        """The newest child answers C{data} and succeeds."""
        child = self.reactor.spawned[-1]
        child.protocol.outReceived(data)
        child.exit(0)
        for _ in range(5):
            self.reactor.advance(0)

    def test_v0AndPushesKeepOneChild(self) -> None:
        """Only a v2 upload-pack is a conversation; anything else is one full-duplex child."""
        from dataclasses import replace

        for operation in (
            replace(self.operation, caller=Caller("192.0.2.1", transport="git")),
            replace(self.operation, service=Service.RECEIVE_PACK),
        ):
            job = self.successResultOf(startConversation(self.core, operation, self.output))
            self.assertIsInstance(job, GitProcessProtocol)
            self.assertNotIn("--stateless-rpc", self.reactor.spawned[-1].args)

    def test_requestsAnsweredInTurnThenFlushEnds(self) -> None:
        """ls-refs, then a clone through the cache, then the client's flush: success."""
        conversation, stdin = self.converse()
        stdin.feed(LS_REFS)
        self.assertEqual(bytes(self.reactor.spawned[1].stdin), LS_REFS)
        # The next request waits until the answer before it is whole.
        stdin.feed(CLONE + b"0000")
        self.assertEqual(len(self.reactor.spawned), 2)
        self.answer(b"refs0000")
        self.assertEqual(bytes(self.reactor.spawned[2].stdin), CLONE)
        self.assertIn("cache=lead", self.reactor.spawned[2].protocol.description)
        self.assertNoResult(conversation.done)
        self.answer(b"PACK")
        outcome = self.successResultOf(conversation.done)
        self.assertTrue(outcome.succeeded)
        self.assertEqual(bytes(self.output.data), b"0014version 2\n0000refs0000PACK")
        self.assertEqual(outcome.bytesOut, len(self.output.data))

    def test_eofEndsIt(self) -> None:
        """The client's EOF between requests ends the conversation as a success."""
        conversation, stdin = self.converse()
        stdin.finish()
        self.assertTrue(self.successResultOf(conversation.done).succeeded)

    def test_failedAnswerEndsIt(self) -> None:
        """A child that fails ends the conversation with its outcome."""
        conversation, stdin = self.converse()
        stdin.feed(LS_REFS)
        child = self.reactor.spawned[-1]
        child.protocol.errReceived(b"fatal: no\n")
        child.exit(128)
        outcome = self.successResultOf(conversation.done)
        self.assertEqual((outcome.exitCode, outcome.message), (128, "fatal: no"))

    def test_badOrHugeRequestsAreRefused(self) -> None:
        """A bad packet length, or more than MAX_REQUEST without a flush: a refusal, no git."""
        for data, error in (
            (b"zzzz", InvalidRequest),
            (pkt(b"x" * 65000) * (MAX_REQUEST // 65000 + 1), TooLarge),
        ):
            self.reactor.spawned.clear()
            conversation, stdin = self.converse()
            stdin.feed(data)
            outcome: GitOutcome = self.successResultOf(conversation.done)
            assert outcome.failure is not None
            self.assertTrue(outcome.failure.check(error))
            self.assertEqual(len(self.reactor.spawned), 1, "only the advertisement ran")
            # The client is told, with an ERR packet after the advertisement,
            # and the door closes rather than aborts (a complete refusal).
            self.assertTrue(bytes(self.output.data).endswith(errorLine(outcome.message)))
            self.assertTrue(outcome.completeRefusal)
            self.output.data.clear()

    def test_noJobSlotBetweenRequestsIsAnERRPacket(self) -> None:
        """
        A request that finds every job slot taken (and no room to wait) is
        refused with git's ERR packet after the answers before it, which
        stay whole: the door closes, it does not abort.
        """
        from gitserve.core.errors import Busy
        from gitserve.core.jobs import JobLimiter

        self.core.jobs = JobLimiter(maxJobs=1, maxQueue=0)
        conversation, stdin = self.converse()
        stdin.feed(LS_REFS)
        self.answer(b"refs0000")

        # Another operation holds the one slot now.
        class Holder:
            done: Deferred[GitOutcome] = Deferred()

        self.successResultOf(self.core.jobs.run(Holder))
        stdin.feed(CLONE)
        for _ in range(5):
            self.reactor.advance(0)
        outcome: GitOutcome = self.successResultOf(conversation.done)
        assert outcome.failure is not None
        self.assertTrue(outcome.failure.check(Busy))
        self.assertTrue(outcome.completeRefusal)
        self.assertEqual(
            bytes(self.output.data),
            b"0014version 2\n0000refs0000" + errorLine(outcome.message),
        )
        self.assertEqual(len(self.reactor.spawned), 2, "no git for the refused request")

    def test_clientLeavingGivesUpItsPlace(self) -> None:
        """A client gone while its request waits for a lookup: the wait is cancelled."""
        cancelled: list[bool] = []
        self.core.packCache.lookup = lambda operation, body: Deferred(  # type: ignore[method-assign, union-attr]
            lambda _: cancelled.append(True)
        )
        conversation, stdin = self.converse()
        stdin.feed(CLONE)
        stdin.fail()
        self.assertEqual(cancelled, [True])
        self.assertFalse(self.successResultOf(conversation.done).succeeded)

    def test_plainSocketReadersUseSendfile(self) -> None:
        """On a plain socket (git://), the cache's readers send with sendfile(2)."""
        server, peer = _plainTcpServer()
        self.addCleanup(peer.close)
        _, stdin = self.converse(plainTransport=server)
        stdin.feed(CLONE)
        assert self.core.packCache is not None
        (flight,) = self.core.packCache.flights.values()
        self.assertIsInstance(flight.readers[0], SendfileReader)
