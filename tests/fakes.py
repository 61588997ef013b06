"""
Fakes shared by the unit tests: a git child without a process, a reactor that
"spawns" it, and an HTTP connection without a socket.

Each fake keeps the behaviour the code under test relies on (a pipe that
pauses its producer past a high-water mark, a process that ends once), and
records what happened so tests assert outcomes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IProcessProtocol,
    IProcessTransport,
    IPushProducer,
    IReactorProcess,
)
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site
from zope.interface import implementer

# What a pipe holds before it pauses its producer (Twisted's FileDescriptor
# uses 64 KiB too).
PIPE_HIGH_WATER = 64 * 1024


@implementer(IProcessTransport)
class FakeProcess:
    """
    A git child's transport: stdin is a pipe the test drains by hand, and the
    child's output and exit are driven by the test.

    Like Twisted's process writer, stdin pauses a registered streaming
    producer once more than L{PIPE_HIGH_WATER} bytes wait in it, and resumes
    it when the child has read them all.

    @ivar stdin: every byte written to the child's stdin, in order.
    @ivar unread: how many of them the child has not read yet.
    """

    pid = 4242

    def __init__(
        self,
        protocol: IProcessProtocol,
        args: Sequence[str],
        env: Mapping[str, str],
        path: str | None,
    ) -> None:
        self.protocol = protocol
        self.args = list(args)
        self.env = dict(env)
        self.path = path
        self.stdin = bytearray()
        self.unread = 0
        self.largestUnread = 0
        self.stdinClosed = False
        self.producer: IPushProducer | None = None
        self.producerPaused = False
        self.signals: list[str] = []
        self.readingPaused = False
        self.ended = False

    # IProcessTransport: stdin ---------------------------------------------

    def write(self, data: bytes) -> None:
        assert not self.stdinClosed, "write to a closed stdin"
        self.stdin += data
        self.unread += len(data)
        self.largestUnread = max(self.largestUnread, self.unread)
        if self.producer is not None and self.unread > PIPE_HIGH_WATER and not self.producerPaused:
            self.producerPaused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Sequence[bytes]) -> None:
        for piece in data:
            self.write(piece)

    def writeToChild(self, childFD: int, data: bytes) -> None:
        assert childFD == 0
        self.write(data)

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        assert streaming, "git's stdin is fed by push producers only"
        assert self.producer is None, "two producers on one stdin"
        self.producer = producer
        self.producerPaused = False

    def unregisterProducer(self) -> None:
        self.producer = None

    def closeStdin(self) -> None:
        self.stdinClosed = True

    def closeChildFD(self, descriptor: int) -> None:
        if descriptor == 0:
            self.closeStdin()

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def loseConnection(self) -> None:
        self.closeStdin()

    # IProcessTransport: the child's output, paused by the request ----------

    def pauseProducing(self) -> None:
        self.readingPaused = True

    def resumeProducing(self) -> None:
        self.readingPaused = False

    def stopProducing(self) -> None:
        self.signalProcess("KILL")

    def signalProcess(self, signalID: str | int) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(str(signalID))

    def getPeer(self) -> Any:
        return None

    def getHost(self) -> Any:
        return None

    # Driven by the test ------------------------------------------------------

    def readStdin(self, size: int | None = None) -> None:
        """The child reads C{size} bytes (all by default) from its stdin."""
        self.unread -= self.unread if size is None else min(size, self.unread)
        if self.unread == 0 and self.producer is not None and self.producerPaused:
            self.producerPaused = False
            self.producer.resumeProducing()

    def closeStdinFromChild(self) -> None:
        """The child closed its end of stdin (it exited early, say)."""
        self.stdinClosed = True
        producer, self.producer = self.producer, None
        if producer is not None:
            producer.stopProducing()

    def output(self, data: bytes) -> None:
        """The child writes C{data} to stdout."""
        self.protocol.childDataReceived(1, data)

    def error(self, data: bytes) -> None:
        """The child writes C{data} to stderr."""
        self.protocol.childDataReceived(2, data)

    def exit(self, code: int = 0) -> None:
        """The child ends with C{code}."""
        self.ended = True
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code)
        self.protocol.processEnded(Failure(reason))


@implementer(IReactorProcess)
@dataclass
class FakeProcessReactor:
    """A reactor that "spawns" L{FakeProcess}es and keeps them for the test."""

    processes: list[FakeProcess] = field(default_factory=list)

    def spawnProcess(
        self,
        processProtocol: IProcessProtocol,
        executable: bytes | str,
        args: Sequence[bytes | str],
        env: Mapping[bytes | str, bytes | str] | None = None,
        path: bytes | str | None = None,
        uid: int | None = None,
        gid: int | None = None,
        usePTY: bool = False,
        childFDs: Mapping[int, int | str] | None = None,
    ) -> FakeProcess:
        process = FakeProcess(processProtocol, args, env or {}, path)  # type: ignore[arg-type]
        self.processes.append(process)
        processProtocol.makeConnection(process)
        return process


def connect(site: Site, peer: str = "127.0.0.1") -> tuple[Any, StringTransport]:
    """
    One client connection to C{site}, without a socket: feed the returned
    channel with C{dataReceived}, read the answer from the transport, whose
    C{producerState} shows whether the server is reading.
    """
    address = IPv4Address("TCP", peer, 40000)
    channel = site.buildProtocol(address)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    return channel, transport
