"""
The pack cache's core: which requests it caches, what its key covers, how a
flight is shared by readers at different paces, and which entries it keeps,
checks and evicts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from gitserve.core.advertisement import CapabilityCache
from gitserve.core.operations import GitCore, GitOperation
from gitserve.core.packcache import (
    HEADER_SIZE,
    CacheReader,
    PackCache,
    negotiationComplete,
)
from gitserve.core.pipefile import PipeToFile
from gitserve.core.policy import Policy, Service
from gitserve.core.process import Caller, GitBackend, GitOutcome
from gitserve.core.repository import ConfigCache, Repository
from gitserve.interfaces import IGitOutput
from tests.fakes import (
    FakeJob,
    FakeOutputPipe,
    FakeProcessReactor,
    RecordingOutput,
    makeRepository,
    scratchDirectory,
)

OID = b"1" * 40
OTHER = b"2" * 40


def pkt(data: bytes) -> bytes:
    return b"%04x%s" % (len(data) + 4, data)


def v2Fetch(*arguments: bytes) -> bytes:
    """A protocol v2 fetch request with C{arguments} (as git sends them: no LF)."""
    return (
        pkt(b"command=fetch")
        + pkt(b"agent=git/2.39.5")
        + b"0001"
        + b"".join(pkt(a) for a in arguments)
        + b"0000"
    )


CLONE = v2Fetch(b"ofs-delta", b"want " + OID, b"done")


class NegotiationTests(SynchronousTestCase):
    def test_v2FetchWithDoneIsComplete(self) -> None:
        """A v2 fetch that says done is answered with a pack: cacheable."""
        self.assertTrue(negotiationComplete(CLONE, 2))

    def test_v2FetchWithoutDoneAndLsRefsAreNot(self) -> None:
        """A v2 negotiation round (no done) and ls-refs depend on more than the request."""
        self.assertFalse(negotiationComplete(v2Fetch(b"want " + OID, b"have " + OTHER), 2))
        lsRefs = pkt(b"command=ls-refs\n") + b"0001" + pkt(b"peel\n") + b"0000"
        self.assertFalse(negotiationComplete(lsRefs, 2))

    def test_v0NeedsWantsAndDone(self) -> None:
        """v0: only the request ending in done (after its wants) completes the negotiation."""
        wants = pkt(b"want %s multi_ack_detailed side-band-64k\n" % OID) + b"0000"
        self.assertFalse(negotiationComplete(wants, 0))
        self.assertTrue(negotiationComplete(wants + pkt(b"done\n"), 0))
        self.assertFalse(negotiationComplete(b"zzzz", 0))


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git with an isolated config (a test helper, not the server)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_AUTHOR_NAME": "a",
        "GIT_AUTHOR_EMAIL": "a@example.com",
        "GIT_COMMITTER_NAME": "a",
        "GIT_COMMITTER_EMAIL": "a@example.com",
    }
    return subprocess.run(
        ["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True
    ).stdout.strip()


class KeyTests(SynchronousTestCase):
    """The key changes with every input that decides the bytes, and only then."""

    def setUp(self) -> None:
        self.base = scratchDirectory(self)
        self.gitDir = self.base / "repo.git"
        git("init", "-q", "--bare", str(self.gitDir))
        work = self.base / "work"
        git("init", "-q", str(work))
        (work / "a").write_text("a\n")
        git("add", "a", cwd=work)
        git("commit", "-qm", "a", cwd=work)
        git("push", "-q", str(self.gitDir), "HEAD:refs/heads/main", cwd=work)
        self.work = work
        self.fakeGit = self.base / "git"
        shutil.copy(sys.executable, self.fakeGit)
        self.cache = makeCache(self.base / "cache", self.fakeGit)
        self.repository = Repository(self.gitDir, "repo.git")

    def key(self, body: bytes = CLONE, protocol: bytes | None = b"version=2") -> str:
        operation = GitOperation(
            Service.UPLOAD_PACK, self.repository, Caller("192.0.2.1", protocol=protocol)
        )
        key = self.cache.keyFor(operation, body)
        assert key is not None
        return key.digest

    def test_sameStateAndRequestSameKey(self) -> None:
        """Nothing changed: the same key, so identical fetches share."""
        self.assertEqual(self.key(), self.key())

    def test_pushChangesKey(self) -> None:
        """A push (a new commit on a ref) changes the key."""
        before = self.key()
        (self.work / "b").write_text("b\n")
        git("add", "b", cwd=self.work)
        git("commit", "-qm", "b", cwd=self.work)
        git("push", "-q", str(self.gitDir), "HEAD:refs/heads/main", cwd=self.work)
        self.assertNotEqual(before, self.key())

    def test_repackChangesKey(self) -> None:
        """A repack (new packs, loose objects gone) changes the key."""
        before = self.key()
        git("-C", str(self.gitDir), "repack", "-adq")
        self.assertNotEqual(before, self.key())

    def test_configChangesKey(self) -> None:
        """A pack.* or uploadpack.* setting changes the key."""
        before = self.key()
        git("config", "-f", str(self.gitDir / "config"), "pack.compression", "1")
        second = self.key()
        git("config", "-f", str(self.gitDir / "config"), "uploadpack.allowFilter", "true")
        self.assertEqual(len({before, second, self.key()}), 3)

    def test_gitBinaryChangesKey(self) -> None:
        """A different git binary (its stamp) changes the key."""
        before = self.key()
        os.utime(self.fakeGit, (1, 1))
        self.assertNotEqual(before, self.key())

    def test_requestChangesKey(self) -> None:
        """Haves, depth, filter, capabilities and protocol version each get their own key."""
        keys = {
            self.key(),
            self.key(v2Fetch(b"ofs-delta", b"want " + OID, b"have " + OTHER, b"done")),
            self.key(v2Fetch(b"ofs-delta", b"want " + OID, b"deepen 1", b"done")),
            self.key(v2Fetch(b"ofs-delta", b"want " + OID, b"filter blob:none", b"done")),
            self.key(v2Fetch(b"want " + OID, b"done")),
            self.key(CLONE, protocol=b"version=1"),
        }
        self.assertEqual(len(keys), 6)

    def test_incompleteNegotiationHasNoKey(self) -> None:
        """A request that does not complete the negotiation is never cached."""
        operation = GitOperation(
            Service.UPLOAD_PACK, self.repository, Caller("x", protocol=b"version=2")
        )
        self.assertIsNone(self.cache.keyFor(operation, v2Fetch(b"want " + OID)))


def makeCache(
    directory: Path, gitPath: Path | str = sys.executable, maxSize: int = 1 << 30
) -> PackCache:
    """A cache keyed as a daemon with a private HOME would key it."""
    inputs = CapabilityCache(
        gitPath=str(gitPath),
        environment={"PATH": "/usr/bin:/bin", "HOME": str(directory.parent / "home")},
    )
    cache = PackCache(
        directory,
        maxSize,
        inputs,
        clock=FakeProcessReactor(),
        # No file in these tests is old enough to be past the racy window.
        wallClock=lambda: time.time() + 3600,
    )
    cache.open()
    return cache


class FlightTests(SynchronousTestCase):
    """Readers of a shared answer, with git played by the test."""

    def setUp(self) -> None:
        self.base = scratchDirectory(self)
        self.reactor = FakeProcessReactor()
        gitDir = makeRepository(self.base / "root" / "repo.git")
        self.repository = Repository(gitDir, "repo.git")
        self.core = GitCore(
            root=self.base / "root",
            policy=Policy(ConfigCache()),
            backend=GitBackend(self.reactor, sys.executable, {"PATH": "/usr/bin"}),
            clock=self.reactor,
        )
        self.cache = makeCache(self.base / "cache")
        self.cache.clock = self.reactor
        self.operation = GitOperation(
            Service.UPLOAD_PACK, self.repository, Caller("192.0.2.1", protocol=b"version=2")
        )

    def fetch(self, output: RecordingOutput | None = None) -> tuple[RecordingOutput, object]:
        """Start one fetch of CLONE; returns its output and its job."""
        output = output or RecordingOutput()
        lookup = self.successResultOf(self.cache.lookup(self.operation, CLONE))
        job = self.successResultOf(self.cache.start(self.core, lookup, output))
        return output, job

    def test_outputFakeIsAGitOutput(self) -> None:
        """RecordingOutput provides IGitOutput, as the readers' front doors do."""
        self.assertTrue(verifyObject(IGitOutput, RecordingOutput()))

    def test_followersReadAtTheirOwnPace(self) -> None:
        """A stalled follower holds back neither git nor the leader, then gets every byte."""
        leader, leaderJob = self.fetch()
        follower, followerJob = self.fetch()
        self.assertEqual(len(self.reactor.spawned), 1, "one git for both")
        child = self.reactor.spawned[0]
        self.assertEqual(bytes(child.stdin), CLONE)
        assert follower.producer is not None
        follower.producer.pauseProducing()
        chunks = [os.urandom(100_000) for _ in range(5)]
        for chunk in chunks:
            child.protocol.outReceived(chunk)
            self.reactor.advance(0)
        self.assertFalse(child.paused, "git is never paused by a reader")
        child.exit(0)
        self.reactor.advance(0)
        self.assertEqual(bytes(leader.data), b"".join(chunks))
        self.assertTrue(self.successResultOf(leaderJob.done).succeeded)  # type: ignore[attr-defined]
        self.assertNoResult(followerJob.done)  # type: ignore[attr-defined]
        self.assertLess(len(follower.data), len(leader.data))
        follower.producer.resumeProducing()
        for _ in range(20):
            self.reactor.advance(0)
        self.assertEqual(bytes(follower.data), b"".join(chunks))
        outcome = self.successResultOf(followerJob.done)  # type: ignore[attr-defined]
        self.assertTrue(outcome.succeeded)
        self.assertEqual(outcome.bytesOut, 500_000)
        self.assertEqual(self.cache.counts["lead"], 1)
        self.assertEqual(self.cache.counts["follow"], 1)
        self.assertEqual(len(self.cache.entries), 1, "a followed flight is kept")

    def test_leaderLeavingDoesNotEndGit(self) -> None:
        """The leader's client leaves: git goes on and the follower gets the whole answer."""
        leader, _ = self.fetch()
        follower, followerJob = self.fetch()
        child = self.reactor.spawned[0]
        child.protocol.outReceived(b"x" * 1000)
        assert leader.producer is not None
        leader.producer.stopProducing()
        child.protocol.outReceived(b"y" * 1000)
        child.exit(0)
        self.reactor.advance(0)
        self.assertEqual(child.signals, [])
        self.assertEqual(bytes(follower.data), b"x" * 1000 + b"y" * 1000)
        self.assertTrue(self.successResultOf(followerJob.done).succeeded)  # type: ignore[attr-defined]

    def test_everyReaderLeavingEndsGit(self) -> None:
        """Nobody left to read: git is ended and nothing is kept."""
        leader, _ = self.fetch()
        child = self.reactor.spawned[0]
        child.protocol.outReceived(b"x" * 1000)
        assert leader.producer is not None
        leader.producer.stopProducing()
        self.assertEqual(child.signals, ["TERM"])
        child.exit(1)
        self.assertEqual(self.cache.flights, {})
        self.assertEqual(os.listdir(self.cache.tmpDir), [])
        self.assertEqual(len(self.cache.entries), 0)

    def runAlone(self) -> tuple[RecordingOutput, GitOutcome]:
        output, job = self.fetch()
        if len(self.reactor.spawned) > getattr(self, "_seenChildren", 0):
            self._seenChildren = len(self.reactor.spawned)
            child = self.reactor.spawned[-1]
            child.protocol.outReceived(b"PACK" + b"z" * 5000)
            child.exit(0)
        for _ in range(5):
            self.reactor.advance(0)
        return output, self.successResultOf(job.done)  # type: ignore[attr-defined]

    def test_keptFromTheSecondAskThenHit(self) -> None:
        """Asked once: not kept; asked again: kept; then served without git."""
        self.runAlone()
        self.assertEqual(len(self.cache.entries), 0)
        self.assertEqual(os.listdir(self.cache.tmpDir), [])
        self.runAlone()
        self.assertEqual(len(self.cache.entries), 1)
        output, outcome = self.runAlone()
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertEqual(bytes(output.data), b"PACK" + b"z" * 5000)
        self.assertTrue(outcome.succeeded)
        self.assertEqual(self.cache.counts, {"hit": 1, "follow": 0, "lead": 2, "miss": 0})

    def test_keptAnswerIsSealedOffTheReadersPath(self) -> None:
        """A first ask is never read back; a kept one is checksummed in a thread, readers done."""
        from functools import partial

        from twisted.internet.defer import Deferred, succeed

        pending: list[tuple[Deferred[object], object]] = []
        closed: list[int] = []

        def deferred(work):  # type: ignore[no-untyped-def]
            if isinstance(work, partial) and work.func is os.close:
                # The flight's file is closed off the reactor too (its pages
                # are freed then); that is not what this test holds back.
                closed.append(work.args[0])
                return succeed(work())
            d: Deferred[object] = Deferred()
            pending.append((d, work))
            return d

        self.cache.runBlocking = deferred
        self.runAlone()
        self.assertEqual(pending, [], "a first ask is neither checksummed nor kept")
        self.assertEqual(len(closed), 1)
        _, outcome = self.runAlone()
        self.assertTrue(outcome.succeeded, "the client is answered before the answer is sealed")
        self.assertEqual(len(self.cache.entries), 0)
        ((d, work),) = pending
        d.callback(work())  # type: ignore[operator]
        self.assertEqual(len(self.cache.entries), 1)
        self.assertEqual(os.listdir(self.cache.tmpDir), [])
        # A restarted daemon checks the whole entry against its checksum.
        self.cache = makeCache(self.cache.directory)
        self.cache.clock = self.reactor
        output, outcome = self.runAlone()
        self.assertEqual(self.cache.counts["hit"], 1)
        self.assertEqual(bytes(output.data), b"PACK" + b"z" * 5000)

    def damage(self, how: str) -> None:
        """Keep an entry, then damage its file."""
        self.runAlone()
        self.runAlone()
        (path,) = self.cache.entriesDir.iterdir()
        with open(path, "r+b") as f:
            if how == "truncate":
                f.truncate(HEADER_SIZE + 100)
            else:
                f.seek(HEADER_SIZE + 2500)
                byte = f.read(1)
                f.seek(HEADER_SIZE + 2500)
                f.write(bytes([byte[0] ^ 1]))
        # A damage that leaves the stamp as it was must still be caught on
        # the next start of the daemon.
        self.cache = makeCache(self.cache.directory)
        self.cache.clock = self.reactor

    def test_truncatedEntryIsNotServed(self) -> None:
        """A truncated entry is detected, removed, and git answers instead."""
        self.damage("truncate")
        output, outcome = self.runAlone()
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(bytes(output.data), b"PACK" + b"z" * 5000)
        self.assertEqual(self.cache.counts["hit"], 0)

    def test_flippedByteIsNotServed(self) -> None:
        """An entry with one bit flipped fails its checksum and is never served."""
        self.damage("flip")
        output, _ = self.runAlone()
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual(bytes(output.data), b"PACK" + b"z" * 5000)
        self.assertEqual(self.cache.counts["hit"], 0)

    def test_failedGitIsNotKept(self) -> None:
        """git failing after it began: readers see the failure, nothing is kept."""
        self.runAlone()
        output, job = self.fetch()
        child = self.reactor.spawned[-1]
        child.protocol.outReceived(b"half")
        child.exit(128)
        self.reactor.advance(0)
        outcome = self.successResultOf(job.done)  # type: ignore[attr-defined]
        self.assertEqual(outcome.exitCode, 128)
        self.assertEqual(len(self.cache.entries), 0)

    def test_restartRemovesTempFilesOfDeadDaemons(self) -> None:
        """A killed daemon's half-written flight is removed at start, never served."""
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = self.cache.tmpDir / f"{'a' * 64}.{dead.pid}.0"
        stale.write_bytes(b"half")
        makeCache(self.cache.directory)
        self.assertFalse(stale.exists())

    def test_leastRecentlyUsedGoesFirst(self) -> None:
        """Past the size bound, the least recently used entries are removed."""
        self.cache.maxSize = 2 * (HEADER_SIZE + 5004) + 10
        for name in ("a", "b", "c"):
            self.operation = GitOperation(
                Service.UPLOAD_PACK,
                self.repository,
                Caller("192.0.2.1", protocol=b"version=2", user=name),
            )
            self.cache.counts["hit"] = 0
            body = v2Fetch(b"want " + name.encode() * 40, b"done")
            for _ in range(2):
                output = RecordingOutput()
                lookup = self.successResultOf(self.cache.lookup(self.operation, body))
                self.successResultOf(self.cache.start(self.core, lookup, output))
                child = self.reactor.spawned[-1]
                child.protocol.outReceived(b"PACK" + name.encode() * 5000)
                child.exit(0)
                self.reactor.advance(0)
        self.assertEqual(len(self.cache.entries), 2)
        self.assertLessEqual(self.cache.size, self.cache.maxSize)
        self.assertEqual(len(list(self.cache.entriesDir.iterdir())), 2)

    def test_unusableDirectoryRunsUncached(self) -> None:
        """A cache directory that cannot be written: fetches run uncached (cache=miss)."""
        blocker = self.base / "file"
        blocker.write_text("not a directory")
        self.cache = makeCache(blocker / "cache")
        output, job = self.fetch()
        self.assertIsInstance(job, object)
        self.assertNotIsInstance(job, CacheReader)
        child = self.reactor.spawned[-1]
        self.assertIn("cache=miss", child.protocol.description)
        child.protocol.outReceived(b"PACK")
        child.exit(0)
        self.assertEqual(bytes(output.data), b"PACK")
        self.assertEqual(self.cache.counts["miss"], 1)

    def test_fullDiskDuringAFlight(self) -> None:
        """The file stops growing: readers behind fail, a live one gets all, paced, nothing kept."""
        leader, leaderJob = self.fetch()
        follower, followerJob = self.fetch()
        child = self.reactor.spawned[0]
        assert follower.producer is not None and leader.producer is not None
        follower.producer.pauseProducing()
        self.reactor.advance(0)
        child.protocol.outReceived(b"a" * 1000)
        (flight,) = self.cache.flights.values()
        # From now on the file cannot be written (as on a full disk).
        writable, flight.fd = flight.fd, os.open(flight.path, os.O_RDONLY)
        os.close(writable)
        child.protocol.outReceived(b"b" * 1000)
        self.assertEqual(self.cache.flights, {}, "nobody new joins a broken flight")
        failed = self.successResultOf(followerJob.done)  # type: ignore[attr-defined]
        self.assertFalse(failed.succeeded)
        leader.producer.pauseProducing()
        self.assertTrue(child.paused, "git goes at the pace of the live reader")
        child.protocol.outReceived(b"c" * 1000)
        leader.producer.resumeProducing()
        self.assertFalse(child.paused)
        child.exit(0)
        self.reactor.advance(0)
        self.assertEqual(bytes(leader.data), b"a" * 1000 + b"b" * 1000 + b"c" * 1000)
        self.assertTrue(self.successResultOf(leaderJob.done).succeeded)  # type: ignore[attr-defined]
        self.assertEqual(len(self.cache.entries), 0)
        self.assertEqual(os.listdir(self.cache.tmpDir), [])

    def test_flightSplicesOnlyWithAReactorIntoAWholeFile(self) -> None:
        """--no-splice (no reactor for pipes) or a file that failed: git's output comes by write."""
        self.fetch()
        self.reactor.spawned[0].protocol.outReceived(b"PACK")
        (flight,) = self.cache.flights.values()
        pipe = FakeOutputPipe(-1)
        self.assertIsNone(flight.relayPipe(pipe))
        self.cache.pipeReactor = MemoryReactorClock()
        relay = flight.relayPipe(pipe)
        assert isinstance(relay, PipeToFile)
        self.assertEqual(relay.offset, HEADER_SIZE + 4, "behind what came by write")
        flight.broken = True
        self.assertIsNone(flight.relayPipe(pipe))

    def test_splicedBytesAreReadFromTheFile(self) -> None:
        """Bytes spliced into the file reach a caught-up reader from there, after those written."""
        pipes = MemoryReactorClock()
        self.cache.pipeReactor = pipes
        leader, job = self.fetch()
        child = self.reactor.spawned[0]
        child.protocol.outReceived(b"PACK")
        (flight,) = self.cache.flights.values()
        readEnd, writeEnd = os.pipe()
        self.addCleanup(os.close, readEnd)
        self.addCleanup(os.close, writeEnd)
        os.set_blocking(readEnd, False)
        relay = flight.relayPipe(FakeOutputPipe(readEnd))
        assert isinstance(relay, PipeToFile)
        relay.resumeProducing()
        pieces = [os.urandom(50_000) for _ in range(4)]
        for piece in pieces:
            os.write(writeEnd, piece)
            relay.doRead()
            pipes.advance(1)
            self.reactor.advance(0)
        self.assertEqual(bytes(leader.data), b"PACK" + b"".join(pieces), "sent as it comes")
        child.exit(0)
        for _ in range(5):
            self.reactor.advance(0)
        self.assertEqual(bytes(leader.data), b"PACK" + b"".join(pieces))
        self.assertTrue(self.successResultOf(job.done).succeeded)  # type: ignore[attr-defined]

    def test_busyLeadRefusesEveryReader(self) -> None:
        """No job slot for the lead's git: its readers end with the Busy refusal, nothing kept."""
        from gitserve.core.errors import Busy
        from gitserve.core.jobs import JobLimiter

        self.core.jobs = JobLimiter(1, 0)
        self.successResultOf(self.core.jobs.run(FakeJob))
        output, job = self.fetch()
        self.reactor.advance(0)
        outcome = self.successResultOf(job.done)  # type: ignore[attr-defined]
        self.assertIsNotNone(outcome.failure)
        self.assertTrue(outcome.failure.check(Busy))
        self.assertEqual(self.reactor.spawned, [])
        self.assertEqual(self.cache.flights, {})
        self.assertEqual(os.listdir(self.cache.tmpDir), [])

    def test_hitsAreNotReverifiedAfterTheirOwnTouch(self) -> None:
        """A kept entry is checked once; serving it (which dates it) does not make it re-read."""
        from twisted.internet.defer import maybeDeferred

        verifications = []

        def counting(work):  # type: ignore[no-untyped-def]
            verifications.append(work)
            return maybeDeferred(work)

        self.runAlone()
        self.runAlone()
        self.cache.runBlocking = counting
        for _ in range(3):
            output, outcome = self.runAlone()
            self.assertEqual(bytes(output.data), b"PACK" + b"z" * 5000)
        self.assertEqual(self.cache.counts["hit"], 3)
        self.assertEqual(verifications, [])
