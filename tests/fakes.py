"""
Fakes for unit tests: a reactor that records spawned git children instead of
running them, and a real GitSite driven over a StringTransport.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import (
    IProcessTransport,
    IPushProducer,
    IReactorProcess,
    IReactorThreads,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gitserve.core.browse import BrowseData
from gitserve.core.operations import GitCore
from gitserve.core.policy import Policy
from gitserve.core.process import GitBackend, GitOutcome
from gitserve.core.repository import ConfigCache
from gitserve.http.body import RequestBody
from gitserve.http.browse import BrowsePages
from gitserve.http.channel import GitChannel, GitSite
from gitserve.http.context import HTTPContext
from gitserve.http.routes import RootResource
from gitserve.interfaces import IGitJob, IGitOutput, IOutputPipe, IPipeOutput, IRelayableProcess

CLIENT = IPv4Address("TCP", "192.0.2.7", 40000)


@implementer(IOutputPipe)
class FakeOutputPipe:
    """A real pipe's read end as the core hands it to a relay, recording what it is told."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.movedBytes = 0
        self.endCalled = False

    def fileno(self) -> int:
        return self.fd

    def moved(self, length: int) -> None:
        self.movedBytes += length

    def ended(self) -> None:
        self.endCalled = True


# What a pipe to a child holds before Twisted's process writer pauses its
# producer (FileDescriptor.bufferSize).
PIPE_CAPACITY = 64 * 1024


@implementer(IProcessTransport)
class FakeProcessTransport:
    """
    Stands in for a git child: records stdin, signals and pausing; the test
    plays git by calling the protocol's outReceived/processEnded.

    @ivar pipeCapacity: when set, stdin behaves like Twisted's process
        writer: past this many unread bytes it pauses its producer, and it
        resumes it once the child read them all (L{readStdin}). L{None}
        leaves pausing to the test.
    @ivar unread: bytes written to stdin that the child has not read yet.
    """

    pipeCapacity: int | None = None

    def __init__(self, protocol: object, args: list[str], env: dict[str, str], path: str) -> None:
        self.protocol = protocol
        self.args = args
        self.env = env
        self.path = path
        self.pid = 4242
        self.stdin = bytearray()
        self.unread = 0
        self.largestUnread = 0
        self.stdinPaused = False
        self.stdinClosed = False
        self.signals: list[str] = []
        self.ended = False
        self.paused = False
        self.stdinProducer: IPushProducer | None = None

    # What the protocol uses
    def write(self, data: bytes) -> None:
        assert not self.stdinClosed, "write after closeStdin"
        self.stdin += data
        self.unread += len(data)
        self.largestUnread = max(self.largestUnread, self.unread)
        if (
            self.pipeCapacity is not None
            and self.unread > self.pipeCapacity
            and self.stdinProducer is not None
            and not self.stdinPaused
        ):
            self.stdinPaused = True
            self.stdinProducer.pauseProducing()

    def writeSequence(self, data: list[bytes]) -> None:
        self.write(b"".join(data))

    def closeStdin(self) -> None:
        self.stdinClosed = True

    def closeStdout(self) -> None:
        pass

    def closeStderr(self) -> None:
        pass

    def closeChildFD(self, descriptor: int) -> None:
        pass

    def writeToChild(self, childFD: int, data: bytes) -> None:
        self.write(data)

    def loseConnection(self) -> None:
        self.stdinClosed = True

    def signalProcess(self, signalID: str) -> None:
        if self.ended:
            raise ProcessExitedAlready()
        self.signals.append(signalID)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.signalProcess("KILL")

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        assert self.stdinProducer is None, "two stdin producers"
        assert streaming, "git's stdin is fed by push producers only"
        self.stdinProducer = producer
        self.stdinPaused = False

    def unregisterProducer(self) -> None:
        self.stdinProducer = None

    def getPeer(self) -> object:
        return None

    def getHost(self) -> object:
        return None

    # What the test uses, playing git
    def readStdin(self, size: int | None = None) -> None:
        """The child reads C{size} bytes (all by default) of its stdin."""
        self.unread -= self.unread if size is None else min(size, self.unread)
        if self.unread == 0 and self.stdinPaused and self.stdinProducer is not None:
            self.stdinPaused = False
            self.stdinProducer.resumeProducing()

    def closeStdinFromChild(self) -> None:
        """The child closed its end of stdin: the writer stops its producer."""
        self.stdinClosed = True
        producer, self.stdinProducer = self.stdinProducer, None
        if producer is not None:
            producer.stopProducing()

    def exit(self, code: int = 0) -> None:
        """End the child with C{code}, as the reactor would report it."""
        self.ended = True
        reason = ProcessDone(0) if code == 0 else ProcessTerminated(exitCode=code)
        self.protocol.processEnded(Failure(reason))  # type: ignore[attr-defined]


class FakeOutputReader:
    """A child's stdout reader, as far as a relay stops and restarts it."""

    reading = True

    def fileno(self) -> int:
        return 99

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


@implementer(IRelayableProcess)
class FakeRelayableProcess(FakeProcessTransport):
    """A git child whose stdout pipe an output may take (as the real spawner's children)."""

    def __init__(self, protocol: object) -> None:
        super().__init__(protocol, ["git"], {}, "")
        self.reader = FakeOutputReader()

    def outputReader(self) -> Any:
        return self.reader

    # As Twisted's Process: pausing and resuming stop and start every reader.
    def pauseProducing(self) -> None:
        super().pauseProducing()
        self.reader.stopReading()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        self.reader.startReading()


@implementer(IPushProducer)
class FakeRelay:
    """A relay that records how the child drives it."""

    def __init__(self, pipe: IOutputPipe) -> None:
        self.pipe = pipe
        self.paused = True
        self.stopped = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.stopped = True


@implementer(IPipeOutput)
class FakePipeOutput:
    """An output that takes git's pipe when it C{accepts}, and records what it is written."""

    def __init__(self, accepts: bool = True) -> None:
        self.accepts = accepts
        self.written = bytearray()
        self.producer: IPushProducer | None = None
        self.relay: FakeRelay | None = None

    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written += data

    def relayPipe(self, pipe: IOutputPipe) -> FakeRelay | None:
        if self.accepts:
            self.relay = FakeRelay(pipe)
        return self.relay


@implementer(IReactorProcess)
class FakeProcessReactor(MemoryReactorClock):
    """A clock and memory reactor that records spawnProcess calls."""

    def __init__(self, pipeCapacity: int | None = None) -> None:
        """@param pipeCapacity: the L{FakeProcessTransport.pipeCapacity} of every child."""
        super().__init__()
        self.spawned: list[FakeProcessTransport] = []
        self.pipeCapacity = pipeCapacity

    def spawnProcess(
        self,
        processProtocol,
        executable,
        args=(),
        env=None,
        path=None,
        uid=None,
        gid=None,
        usePTY=0,
        childFDs=None,
    ):  # noqa: D102
        transport = FakeProcessTransport(processProtocol, list(args), dict(env or {}), path)
        transport.pipeCapacity = self.pipeCapacity
        self.spawned.append(transport)
        processProtocol.makeConnection(transport)
        return transport


def tcpPair(buffer: int = 0) -> tuple[socket.socket, socket.socket]:
    """Both ends of a real loopback TCP connection, with small buffers if asked."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.socket()
        if buffer:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, buffer)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, buffer)
        peer.connect(listener.getsockname())
        ours, _ = listener.accept()
    return ours, peer


def makeRepository(path: Path, config: str = "") -> Path:
    """The smallest directory resolution accepts as a git directory."""
    (path / "objects").mkdir(parents=True)
    (path / "refs").mkdir()
    (path / "HEAD").write_text("ref: refs/heads/main\n")
    (path / "config").write_text("[core]\n\tbare = true\n" + config)
    return path


@dataclass
class Response:
    """A parsed HTTP response."""

    status: int
    headers: dict[bytes, list[bytes]]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        values = self.headers.get(name.lower())
        return values[-1] if values else None


def parseResponses(data: bytes) -> list[Response]:
    """Every complete response in C{data} (Content-Length or chunked bodies)."""
    responses = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers: dict[bytes, list[bytes]] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        if status == 100:
            data = rest
            continue
        body = b""
        if b"content-length" in headers:
            length = int(headers[b"content-length"][-1])
            body, data = rest[:length], rest[length:]
        elif headers.get(b"transfer-encoding") == [b"chunked"]:
            while True:
                sizeLine, _, rest = rest.partition(b"\r\n")
                size = int(sizeLine, 16)
                if size == 0:
                    rest = rest[2:]
                    break
                body += rest[:size]
                rest = rest[size + 2 :]
            data = rest
        else:
            body, data = rest, b""
        responses.append(Response(status, headers, body))
    return responses


@dataclass
class SiteHarness:
    """
    The real GitSite over a StringTransport, with a fake process reactor:
    raw request bytes in, parsed responses and recorded children out.
    """

    root: Path
    anonymousPush: bool = False
    requireExportOk: bool = False
    environ: dict[str, str] = field(default_factory=lambda: {"PATH": "/usr/bin", "HOME": "/home/g"})
    reactor: FakeProcessReactor = field(default_factory=FakeProcessReactor)

    def __post_init__(self) -> None:
        configs = ConfigCache()
        self.core = GitCore(
            root=self.root.resolve(),
            policy=Policy(configs, self.anonymousPush, self.requireExportOk),
            backend=GitBackend(self.reactor, "/usr/bin/git", self.environ),
            clock=self.reactor,
            configs=configs,
        )
        self.context = HTTPContext(self.core)
        self.site = GitSite(RootResource(self.context), reactor=self.reactor)
        self.connect()

    def connect(self) -> None:
        """Open a new client connection (the previous one is left as it is)."""
        self.channel: GitChannel = self.site.buildProtocol(CLIENT)
        self.transport = HalfCloseableStringTransport(peerAddress=CLIENT)
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def request(
        self,
        method: bytes,
        path: bytes,
        headers: dict[bytes, bytes] | None = None,
        body: bytes | None = None,
    ) -> None:
        """Send a request; with C{body}, a Content-Length is added."""
        lines = [b"%s %s HTTP/1.1" % (method, path), b"Host: example"]
        allHeaders = dict(headers or {})
        if body is not None and b"Transfer-Encoding" not in allHeaders:
            allHeaders.setdefault(b"Content-Length", b"%d" % len(body))
        lines += [b"%s: %s" % item for item in allHeaders.items()]
        self.send(b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""))

    def responses(self) -> list[Response]:
        return parseResponses(self.transport.value())

    def response(self) -> Response:
        responses = self.responses()
        assert len(responses) == 1, responses
        return responses[0]

    @property
    def child(self) -> FakeProcessTransport:
        assert len(self.reactor.spawned) == 1, self.reactor.spawned
        return self.reactor.spawned[0]


class QueuedThreadRunner:
    """
    A stand-in for C{deferToThread} that runs nothing until told to.

    Tests see what was handed to the thread pool (so they can prove that
    work left the reactor thread) and decide when it completes.
    """

    def __init__(self) -> None:
        self.pending: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred]] = []
        self.calls = 0

    def __call__(self, f: Callable[..., Any], *args: Any) -> Deferred:
        self.calls += 1
        d: Deferred = Deferred()
        self.pending.append((f, args, d))
        return d

    def runAll(self) -> None:
        """Run every queued call, as the pool would, and fire its Deferred."""
        while self.pending:
            f, args, d = self.pending.pop(0)
            maybeDeferred(f, *args).chainDeferred(d)


def scratchDirectory(case: Any) -> Path:
    """
    A fresh directory removed after the test; trial's own C{mktemp} would
    leave its directories in the working tree when run by pytest.
    """
    path = Path(tempfile.mkdtemp(prefix="gitserve-test-"))
    case.addCleanup(shutil.rmtree, path, True)
    return path


@implementer(IGitJob)
class FakeJob:
    """What L{gitserve.core.jobs.JobLimiter} tracks of a git child: its end, and a way to end it."""

    def __init__(self) -> None:
        self.done: Deferred[GitOutcome] = Deferred()
        self.terminated = False

    def terminate(self) -> None:
        self.terminated = True

    def exit(self, code: int | None = 0) -> None:
        """End as a real child does: C{done} fires with its L{GitOutcome}."""
        self.done.callback(
            GitOutcome(exitCode=code, bytesOut=0, completeRefusal=False, failure=None, message="")
        )


def cappedBody(network: Any, limit: int, contentEncoding: bytes | None) -> RequestBody:
    """A request body over C{network}, capped at C{limit} as a handler caps it."""
    body = RequestBody(network, contentEncoding=contentEncoding)
    body.setLimit(limit)
    return body


class HalfCloseableStringTransport(StringTransport):
    """A StringTransport that records a half-close, as a TCP transport does one."""

    writeConnectionLost = False

    def loseWriteConnection(self) -> None:
        self.writeConnectionLost = True


class SynchronousThreadPool:
    """
    The part of a C{ThreadPool} that C{deferToThreadPool} uses, running each
    call at once in the caller's thread, so that a test sees its result
    without a real thread.
    """

    def callInThreadWithCallback(
        self, onResult: Callable[[bool, Any], object], f: Callable[..., Any], *args: Any, **kw: Any
    ) -> None:
        try:
            result = f(*args, **kw)
        except BaseException:
            onResult(False, Failure())
        else:
            onResult(True, result)

    def callInThread(self, f: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.callInThreadWithCallback(lambda ok, result: None, f, *args, **kw)


@implementer(IReactorThreads)
class FakeServiceReactor(FakeProcessReactor):
    """
    Everything C{gitserve.tap.makeService} asks of a reactor: TCP, SSL and a
    clock in memory, processes recorded, threads run at once.
    """

    def __init__(self) -> None:
        super().__init__()
        self.threadPool = SynchronousThreadPool()
        self.fromThreads: list[Callable[..., Any]] = []

    def getThreadPool(self) -> SynchronousThreadPool:  # type: ignore[override]
        return self.threadPool

    def callInThread(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> None:
        self.threadPool.callInThread(callable, *args, **kw)

    def callFromThread(self, callable: Callable[..., Any], *args: Any, **kw: Any) -> None:
        """Run it now, and record it (a signal handler's hand-over is visible)."""
        self.fromThreads.append(callable)
        callable(*args, **kw)

    def suggestThreadPoolSize(self, size: int) -> None:
        pass


def browsingHarness(root: Path, **options: Any) -> SiteHarness:
    """A L{SiteHarness} with the browser pages on, as C{makeService} wires them."""
    harness = SiteHarness(root, **options)
    harness.context.browse = BrowsePages(
        harness.context, BrowseData(harness.core.root, harness.core.policy)
    )
    return harness


# SSH and git:// ------------------------------------------------------------------


def makeCore(
    root: Path,
    reactor: FakeProcessReactor,
    jobs: Any = None,
    requireExportOk: bool = False,
    private: bool = False,
) -> GitCore:
    """A core over C{root} whose git children are the fake reactor's."""
    configs = ConfigCache()
    return GitCore(
        root=root.resolve(),
        policy=Policy(configs, requireExportOk=requireExportOk, private=private),
        backend=GitBackend(reactor, "/usr/bin/git", {"PATH": "/usr/bin:/bin"}),
        clock=reactor,
        configs=configs,
        jobs=jobs,
    )


class FakeSSHConnection:
    """
    The part of conch's connection service a session channel talks to,
    recording what would go to the client: data, stderr, requests, EOF, close.
    """

    def __init__(self, peer: Any = CLIENT) -> None:
        self.data = bytearray()
        self.stderr = bytearray()
        self.requests: list[tuple[bytes, bytes]] = []
        self.eof = False
        self.closedChannel = False
        self.windowAdjusts: list[int] = []
        self.transport = _FakeSSHTransport(peer)

    def sendData(self, channel: Any, data: bytes) -> None:
        self.data += data

    def sendExtendedData(self, channel: Any, dataType: int, data: bytes) -> None:
        self.stderr += data

    def sendRequest(
        self, channel: Any, requestType: bytes, data: bytes, wantReply: int = 0
    ) -> None:
        self.requests.append((requestType, data))

    def sendEOF(self, channel: Any) -> None:
        self.eof = True

    def sendClose(self, channel: Any) -> None:
        self.closedChannel = True
        channel.localClosed = True

    def adjustWindow(self, channel: Any, bytesToAdd: int) -> None:
        self.windowAdjusts.append(bytesToAdd)
        channel.localWindowLeft += bytesToAdd


class _FakeSSHTransport:
    """conch's SSH transport as a session sees it: the TCP transport below it."""

    def __init__(self, peer: Any) -> None:
        self.transport = StringTransport(peerAddress=peer)


@implementer(IGitOutput)
class RecordingOutput:
    """
    An L{IGitOutput} that keeps what it is given and lets the test pause
    and resume its producer, as a slow or stalled client would.
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self.producer: Any = None
        self.unregistered = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert streaming, "git's output is paced by push producers"
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.unregistered = True

    def write(self, data: bytes) -> None:
        self.data += data
