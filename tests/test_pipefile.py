"""
A flight's git output spliced from its pipe into its file
(gitserve.core.pipefile), on a real pipe and a real file with the reactor
played by a memory clock: the bytes land at the file's end in order, batches
wait for the pipe to fill, the pipe's end and a file that cannot grow hand
the pipe back to the child's transport, and pauses stop the watching.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface.verify import verifyObject

from gitserve.core.packcache import HEADER_SIZE
from gitserve.core.pipefile import PipeToFile
from gitserve.interfaces import IOutputPipe
from tests.fakes import FakeOutputPipe

BATCH = 64 * 1024
DELAY = 0.002


class Spill:
    """A pipe, a file and the PipeToFile between them, with what it reported."""

    def __init__(self, path: Path, fileFlags: int = os.O_RDWR) -> None:
        self.readEnd, self.writeEnd = os.pipe()
        os.set_blocking(self.readEnd, False)
        path.touch()
        self.path = path
        self.fd = os.open(path, fileFlags)
        self.reactor = MemoryReactorClock()
        self.pipe = FakeOutputPipe(self.readEnd)
        self.grown: list[int] = []
        self.failures: list[OSError] = []
        self.mover = PipeToFile(
            self.pipe,
            self.fd,
            HEADER_SIZE,
            self.reactor,
            BATCH,
            DELAY,
            grew=self.grown.append,
            failed=self.failures.append,
        )

    @property
    def watched(self) -> bool:
        return self.mover in self.reactor.readers

    def fileBytes(self) -> bytes:
        return self.path.read_bytes()[HEADER_SIZE:]

    def close(self) -> None:
        for fd in (self.readEnd, self.writeEnd, self.fd):
            try:
                os.close(fd)
            except OSError:
                pass


@pytest.fixture
def spill(tmp_path: Path) -> Iterator[Spill]:
    made = Spill(tmp_path / "flight")
    yield made
    made.close()


def test_fakePipeIsAnOutputPipe() -> None:
    assert verifyObject(IOutputPipe, FakeOutputPipe(0))


def test_createdPausedThenWatchesThePipe(spill: Spill) -> None:
    """Nothing is read until the child resumes it, as a relay is created."""
    assert not spill.watched
    spill.mover.resumeProducing()
    assert spill.watched
    spill.mover.pauseProducing()
    assert not spill.watched


def test_bytesLandAtTheFilesEndInOrder(spill: Spill) -> None:
    """Each wakeup moves what the pipe holds behind what is there; every count is told."""
    spill.mover.resumeProducing()
    first, second = os.urandom(1000), os.urandom(30_000)
    os.write(spill.writeEnd, first)
    spill.mover.doRead()
    spill.reactor.advance(DELAY)
    os.write(spill.writeEnd, second)
    spill.mover.doRead()
    assert spill.fileBytes() == first + second
    assert spill.grown == [1000, 30_000]
    assert spill.pipe.movedBytes == 31_000
    assert spill.mover.offset == HEADER_SIZE + 31_000


def test_anEmptiedPipeIsLeftToFillForABatchDelay(spill: Spill) -> None:
    """A short batch stops the watching until the delay is up; a full one does not."""
    spill.mover.resumeProducing()
    os.write(spill.writeEnd, b"x" * 100)
    spill.mover.doRead()
    assert not spill.watched, "git fills the pipe meanwhile"
    spill.reactor.advance(DELAY / 2)
    assert not spill.watched
    spill.mover.resumeProducing()
    assert not spill.watched, "a resume does not cut the batch short"
    spill.reactor.advance(DELAY)
    assert spill.watched
    os.write(spill.writeEnd, b"y" * BATCH)
    spill.mover.doRead()
    assert spill.watched, "the pipe may hold more: read on"
    assert spill.fileBytes() == b"x" * 100 + b"y" * BATCH


def test_pausedDuringTheDelayStaysPaused(spill: Spill) -> None:
    spill.mover.resumeProducing()
    os.write(spill.writeEnd, b"x")
    spill.mover.doRead()
    spill.mover.pauseProducing()
    spill.reactor.advance(DELAY)
    assert not spill.watched
    spill.mover.resumeProducing()
    assert spill.watched


def test_thePipesEndGivesItBack(spill: Spill) -> None:
    """git closed an emptied pipe: the transport takes it back and sees the end itself."""
    spill.mover.resumeProducing()
    os.write(spill.writeEnd, b"tail")
    os.close(spill.writeEnd)
    spill.mover.doRead()
    spill.reactor.advance(DELAY)
    spill.mover.doRead()
    assert spill.pipe.endCalled
    assert not spill.watched and spill.mover.stopped
    assert spill.fileBytes() == b"tail"
    assert spill.failures == []


def test_aHangupGivesThePipeBack(spill: Spill) -> None:
    """The reactor saw the hangup and stopped watching: the transport reads on."""
    spill.mover.resumeProducing()
    spill.reactor.removeReader(spill.mover)
    spill.mover.connectionLost(Failure(CONNECTION_DONE))
    assert spill.pipe.endCalled and spill.mover.stopped


def test_aFileThatCannotGrowGivesThePipeBackThenFails(tmp_path: Path) -> None:
    """
    The file refuses the bytes (as a full disk would): they stay in the
    pipe, which goes back to the transport before the flight hears of it,
    so the rest of git's output comes through the output's write.
    """
    spill = Spill(tmp_path / "readonly", os.O_RDONLY)
    try:
        spill.mover.resumeProducing()
        os.write(spill.writeEnd, b"kept in the pipe")
        spill.mover.doRead()
        assert spill.pipe.endCalled and spill.mover.stopped and not spill.watched
        assert len(spill.failures) == 1 and isinstance(spill.failures[0], OSError)
        assert spill.grown == [] and spill.pipe.movedBytes == 0
        assert os.read(spill.readEnd, 100) == b"kept in the pipe"
    finally:
        spill.close()


def test_stopMovesNothingMore(spill: Spill) -> None:
    """Nobody wants git's output: no watching, no timer, the pipe is the child's to drain."""
    spill.mover.resumeProducing()
    os.write(spill.writeEnd, b"x")
    spill.mover.doRead()
    spill.mover.stopProducing()
    spill.reactor.advance(DELAY)
    assert not spill.watched
    spill.mover.resumeProducing()
    assert not spill.watched
    assert not spill.pipe.endCalled, "the child drains the pipe itself after a stop"
