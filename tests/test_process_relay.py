"""
The git child handing its stdout pipe to an output that relays it
(gitserve.core.process): only past the answer's first bytes, its pauses
passed on to the relay, the pipe given back at its end, and drained when
the client leaves.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from gitserve.core.process import MAX_SHORT_ANSWER, GitProcessProtocol
from gitserve.interfaces import IPipeOutput, IRelayableProcess
from tests.fakes import FakePipeOutput, FakeRelayableProcess


def started(output: FakePipeOutput) -> tuple[GitProcessProtocol, FakeRelayableProcess]:
    protocol = GitProcessProtocol(output, MemoryReactorClock(), "git-upload-pack")
    child = FakeRelayableProcess(protocol)
    protocol.makeConnection(child)
    return protocol, child


def test_fakesProvideTheSeams() -> None:
    """The fakes provide what the real spawner's children and SmartResponse provide."""
    output = FakePipeOutput()
    assert verifyObject(IPipeOutput, output)
    assert verifyObject(IRelayableProcess, started(output)[1])


def test_pipeOfferedOnlyPastTheShortAnswer() -> None:
    """The first bytes (ERR or answer) come through write; past them the output takes the pipe."""
    output = FakePipeOutput()
    protocol, child = started(output)
    protocol.outReceived(b"x" * MAX_SHORT_ANSWER)
    assert output.relay is None and child.reader.reading
    protocol.outReceived(b"y")
    assert output.relay is not None
    assert not child.reader.reading
    assert not output.relay.paused
    assert bytes(output.written) == b"x" * MAX_SHORT_ANSWER + b"y"


def test_pausesGoToTheRelayAndItsBytesAreCounted() -> None:
    """Relaying, a full client pauses the relay (stderr keeps being read); moved bytes count."""
    output = FakePipeOutput()
    protocol, child = started(output)
    protocol.outReceived(b"x" * (MAX_SHORT_ANSWER + 1))
    assert output.relay is not None
    protocol.pauseProducing()
    assert output.relay.paused and not child.paused
    protocol.resumeProducing()
    assert not output.relay.paused
    output.relay.pipe.moved(1000)
    assert (protocol.bytesOut, protocol.bytesRelayed) == (MAX_SHORT_ANSWER + 1001, 1000)


def test_pipesEndGivesItBack() -> None:
    """At the pipe's end the transport reads it again; later pauses reach the child."""
    output = FakePipeOutput()
    protocol, child = started(output)
    protocol.outReceived(b"x" * (MAX_SHORT_ANSWER + 1))
    assert output.relay is not None
    output.relay.pipe.ended()
    assert child.reader.reading
    protocol.pauseProducing()
    assert child.paused


def test_clientLeavingStopsTheRelayAndDrains() -> None:
    """The client gone: the relay stops, the transport reads (and drops) git's output, git ends."""
    output = FakePipeOutput()
    protocol, child = started(output)
    protocol.closeStdin()
    protocol.outReceived(b"x" * (MAX_SHORT_ANSWER + 1))
    protocol.pauseProducing()
    relay = output.relay
    assert relay is not None
    protocol.stopProducing()
    assert relay.stopped
    assert child.reader.reading and not child.paused
    assert child.signals == ["TERM"]
    protocol.outReceived(b"dropped")
    assert not bytes(output.written).endswith(b"dropped")


def test_aDecliningOutputKeepsBeingWritten() -> None:
    """An output that declines the pipe gets all of git's output through write."""
    output = FakePipeOutput(accepts=False)
    protocol, child = started(output)
    protocol.outReceived(b"x" * (MAX_SHORT_ANSWER + 1))
    protocol.outReceived(b"z")
    assert child.reader.reading
    assert bytes(output.written).endswith(b"xz")
