"""
Dumb file downloads sent with sendfile(2) (gitserve.http.dumb's
FileSendfileProducer), through the real GitSite on a real loopback TCP
connection: the body reaches the client without passing through Twisted's
buffer, whole or as a range, counted for the access log; --no-splice and
small files keep the Python path; a client that stops reading is dropped by
the stall timeout, one that leaves stops the download quietly, and a file
that shrinks under us ends the connection short.
"""

from __future__ import annotations

import hashlib
import os
import select
import socket
import struct
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from twisted.internet import tcp
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.python.failure import Failure

from gitserve.http.channel import GitChannel, GitRequest, GitSite
from gitserve.http.context import HTTPContext
from gitserve.http.dumb import CHUNK_SIZE, FileRangeProducer, FileSendfileProducer
from gitserve.http.routes import RootResource
from tests.fakes import CLIENT, FakeProcessReactor, makeCore, makeRepository, tcpPair

# The site's idle and stall timeout, in the memory reactor's seconds.
IDLE = 5.0
MiB = 1024 * 1024
PACK = "objects/pack/pack-" + "a" * 40 + ".pack"


class SocketSite:
    """
    The real GitSite serving C{root} on our end of a real loopback TCP
    connection (a C{tcp.Server} on a memory reactor); the test is the client
    on the other end and plays the reactor's part by hand (L{step}).

    @ivar throughTwisted: the bytes written into the server transport's
        buffer; what sendfile(2) sends never is.
    @ivar request: the request being answered, kept once it arrived.
    """

    def __init__(self, root: Path, splicing: bool = True, buffer: int = 0) -> None:
        self.reactor = FakeProcessReactor()
        context = HTTPContext(
            makeCore(root, self.reactor), pipeReactor=self.reactor if splicing else None
        )
        site = GitSite(RootResource(context), reactor=self.reactor, idleTimeout=IDLE)
        ours, self.peer = tcpPair(buffer)
        ours.setblocking(False)
        self.peer.setblocking(False)
        self.channel: GitChannel = site.buildProtocol(CLIENT)
        self.server = tcp.Server(ours, self.channel, ("127.0.0.1", 1), None, 1, self.reactor)
        self.throughTwisted = 0
        self._countWrites()
        self._recordRequests()
        self.channel.makeConnection(self.server)
        self.received = b""
        self.closedByServer = False
        self.request: GitRequest | None = None

    def _recordRequests(self) -> None:
        """Keep each request the channel makes: one answered at once leaves it at once."""
        factory = self.channel.requestFactory

        def made(*args: object, **kwargs: object) -> GitRequest:
            self.request = factory(*args, **kwargs)
            return self.request

        self.channel.requestFactory = made

    def _countWrites(self) -> None:
        """Count what goes into the transport's buffer (the instance's methods, not the class's)."""
        write, writeSequence = self.server.write, self.server.writeSequence

        def countedWrite(data: bytes) -> None:
            self.throughTwisted += len(data)
            write(data)

        def countedSequence(pieces: Iterable[bytes]) -> None:
            pieces = list(pieces)
            self.throughTwisted += sum(map(len, pieces))
            writeSequence(pieces)

        self.server.write = countedWrite  # type: ignore[method-assign]
        self.server.writeSequence = countedSequence  # type: ignore[method-assign]

    def get(self, path: str, **headers: str) -> None:
        """Send a GET for C{path} in project.git, and let the server read it."""
        lines = [f"GET /project.git/{path} HTTP/1.1", "Host: example"]
        lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
        self.peer.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.step()
        assert self.request is not None, "the request was not received"

    def step(self) -> None:
        """
        One reactor iteration: the calls due now, then the socket's read and
        write handlers, each only if the reactor watches for it and the
        socket is ready for it.
        """
        self.reactor.advance(0)
        for ready, watched, event in (
            (self.server.doRead, self.reactor.readers, select.POLLIN),
            (self.server.doWrite, self.reactor.writers, select.POLLOUT),
        ):
            if self.server not in watched or self.server.disconnected:
                continue
            poll = select.poll()
            poll.register(self.server.fileno(), event)
            if poll.poll(0):
                why = ready()
                if why is not None:
                    # What a real reactor does with a descriptor's end.
                    self.server.connectionLost(Failure(why))

    def read(self) -> None:
        """Read what the socket holds, as a client reading as fast as it can."""
        while not self.closedByServer:
            try:
                piece = self.peer.recv(MiB)
            except BlockingIOError:
                return
            except ConnectionResetError:
                piece = b""
            if not piece:
                self.closedByServer = True
            self.received += piece

    def run(self, done: Callable[[], bool], reading: bool = True, steps: int = 20000) -> None:
        """Step (and read, unless told not to) until C{done()}."""
        for _ in range(steps):
            if done():
                return
            self.step()
            if reading:
                self.read()
        raise AssertionError("never done")

    def head(self) -> tuple[int, dict[str, str]]:
        head = self.received.partition(b"\r\n\r\n")[0].decode()
        lines = head.split("\r\n")
        headers = dict(line.split(": ", 1) for line in lines[1:])
        return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}

    def body(self) -> bytes:
        return self.received.partition(b"\r\n\r\n")[2]

    def close(self) -> None:
        self.peer.close()
        if not self.server.disconnected:
            self.server.connectionLost(Failure(ConnectionError("test over")))


@pytest.fixture
def repository(root: Path) -> Path:
    return makeRepository(root / "project.git")


@pytest.fixture
def connections() -> Iterator[list[SocketSite]]:
    made: list[SocketSite] = []
    yield made
    for connection in made:
        connection.close()


@pytest.fixture
def connect(root: Path, repository: Path, connections: list[SocketSite]):
    """Open a connection to a site over root (project.git in it)."""

    def made(**options: object) -> SocketSite:
        connection = SocketSite(root, **options)  # type: ignore[arg-type]
        connections.append(connection)
        return connection

    return made


def writePack(repository: Path, size: int) -> bytes:
    content = os.urandom(size)
    (repository / PACK).parent.mkdir(parents=True, exist_ok=True)
    (repository / PACK).write_bytes(content)
    return content


def openDescriptorsOn(path: Path) -> int:
    """How many of this process's descriptors have C{path} open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                count += 1
        except OSError:
            continue
    return count


def finished(connection: SocketSite) -> Callable[[], bool]:
    return lambda: connection.request is not None and bool(connection.request.finished)


def test_wholeFileGoesOutWithSendfile(connect, repository: Path) -> None:
    """A file larger than a chunk: the body bypasses Twisted's buffer, byte for byte, counted."""
    content = writePack(repository, 4 * MiB + 17)
    connection = connect()
    connection.get(PACK)
    assert isinstance(connection.channel._requestProducer, FileSendfileProducer)
    connection.run(finished(connection))
    connection.run(lambda: len(connection.body()) >= len(content))
    status, headers = connection.head()
    assert status == 200
    assert headers["content-length"] == str(len(content))
    assert hashlib.sha256(connection.body()).digest() == hashlib.sha256(content).digest()
    # Only the head went through Twisted: the body was sendfile(2)'s.
    assert connection.throughTwisted < 1024
    # What the access log reports.
    assert connection.request.sentLength == len(content)
    assert openDescriptorsOn(repository / PACK) == 0


def test_rangeGoesOutWithSendfile(connect, repository: Path) -> None:
    """A single Range is a 206 whose bytes, from the offset, go out with sendfile(2)."""
    content = writePack(repository, 3 * MiB)
    connection = connect()
    connection.get(PACK, Range="bytes=1000-2000999")
    connection.run(finished(connection))
    connection.run(lambda: len(connection.body()) >= 2_000_000)
    status, headers = connection.head()
    assert status == 206
    assert headers["content-range"] == f"bytes 1000-2000999/{len(content)}"
    assert connection.body() == content[1000:2001000]
    assert connection.throughTwisted < 1024
    assert connection.request.sentLength == 2_000_000


def test_noSpliceKeepsThePythonPath(connect, repository: Path) -> None:
    """--no-splice (no pipe reactor): the same answer, every byte written through Twisted."""
    content = writePack(repository, 2 * MiB)
    connection = connect(splicing=False)
    connection.get(PACK)
    assert isinstance(connection.channel._requestProducer, FileRangeProducer)
    assert not isinstance(connection.channel._requestProducer, FileSendfileProducer)
    connection.run(finished(connection))
    connection.run(lambda: len(connection.body()) >= len(content))
    assert connection.body() == content
    assert connection.throughTwisted > len(content)
    assert connection.request.sentLength == len(content)


def test_aFileOfOneChunkGoesWithItsHead(connect, repository: Path) -> None:
    """A body no larger than a chunk is written with the head in one write, not sendfile'd."""
    content = writePack(repository, CHUNK_SIZE)
    connection = connect()
    connection.get(PACK)
    assert not isinstance(connection.channel._requestProducer, FileSendfileProducer)
    connection.run(finished(connection))
    connection.run(lambda: len(connection.body()) >= len(content))
    assert connection.body() == content
    assert connection.throughTwisted > len(content)


@pytest.mark.parametrize(
    "headers, status",
    [({"If_None_Match": "*"}, 304), ({"Range": "bytes=99999999-"}, 416)],
)
def test_answersWithoutABodyRegisterNoProducer(
    connect, repository: Path, headers: dict[str, str], status: int
) -> None:
    """304 and 416 are answered at once with sendfile on: no producer, the file closed."""
    writePack(repository, 2 * MiB)
    connection = connect()
    connection.get(PACK, **headers)
    assert connection.request.finished
    assert connection.channel._requestProducer is None
    connection.run(lambda: b"\r\n\r\n" in connection.received)
    assert connection.head()[0] == status
    assert connection.body() == b""
    assert openDescriptorsOn(repository / PACK) == 0


def test_headSendsNoBody(connect, repository: Path) -> None:
    """HEAD with sendfile on: the GET's Content-Length, no body."""
    writePack(repository, 2 * MiB)
    connection = connect()
    connection.peer.sendall(f"HEAD /project.git/{PACK} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    connection.run(lambda: b"\r\n\r\n" in connection.received)
    for _ in range(10):
        connection.step()
        connection.read()
    status, headers = connection.head()
    assert (status, headers["content-length"]) == (200, str(2 * MiB))
    assert connection.body() == b""
    assert connection.throughTwisted < 1024


def pausedDownload(connection: SocketSite) -> FileSendfileProducer:
    """Start a download of the pack that the client does not read, until the socket is full."""
    connection.get(PACK)
    connection.run(lambda: connection.server.producerPaused, reading=False)
    producer = connection.channel._requestProducer
    assert isinstance(producer, FileSendfileProducer)
    return producer


def test_fullSocketPausesTheChannelAndTheStallTimeoutDropsIt(connect, repository: Path) -> None:
    """A client that stops reading: the socket fills, the channel pauses, the stall drops it."""
    content = writePack(repository, 8 * MiB)
    connection = connect(buffer=4096)
    with capturedLogs() as events:
        assert pausedDownload(connection)._paused
        # Nothing is sent while paused: the reactor turns do not spin.
        sent = connection.request.sentLength
        for _ in range(20):
            connection.reactor.advance(0)
        assert connection.request.sentLength == sent
        assert 0 < sent < len(content)
        connection.reactor.advance(IDLE)
        connection.step()
    assert connection.server.disconnected
    assert not connection.request.finished
    assert any("client read nothing" in formatEvent(e) for e in events)
    assert not [e for e in events if e["log_level"] >= LogLevel.error]
    assert openDescriptorsOn(repository / PACK) == 0


def test_aSlowReaderGetsEverything(connect, repository: Path) -> None:
    """Small socket buffers, a client reading between turns: paused and resumed, all arrives."""
    content = writePack(repository, 2 * MiB)
    connection = connect(buffer=4096)
    connection.get(PACK)
    connection.run(finished(connection), steps=200000)
    connection.run(lambda: len(connection.body()) >= len(content))
    assert connection.body() == content
    assert connection.throughTwisted < 1024


def test_aClientLeavingStopsTheDownloadQuietly(connect, repository: Path) -> None:
    """The client resets the connection mid-download: it stops, the file closes, no error logged."""
    writePack(repository, 8 * MiB)
    connection = connect(buffer=4096)
    with capturedLogs() as events:
        producer = pausedDownload(connection)
        # Closed with unread data and no linger: a reset.
        connection.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.peer.close()
        connection.run(lambda: bool(connection.server.disconnected), reading=False)
        for _ in range(5):
            connection.reactor.advance(0)
    assert not connection.request.finished
    assert not [e for e in events if e["log_level"] >= LogLevel.error or "log_failure" in e]
    assert openDescriptorsOn(repository / PACK) == 0
    # Stopped: no turn is scheduled, and none will be.
    assert producer._call is None
    producer.resumeProducing()
    assert producer._call is None


def test_aFileShrinkingUnderUsClosesTheConnection(connect, repository: Path) -> None:
    """Truncated mid-download: what the file still holds goes out, then the connection closes."""
    writePack(repository, 4 * MiB)
    connection = connect()
    with capturedLogs() as events:
        connection.get(PACK)
        os.truncate(repository / PACK, MiB)
        connection.run(lambda: connection.closedByServer)
    assert connection.head()[1]["content-length"] == str(4 * MiB)
    assert len(connection.body()) == MiB
    assert not connection.request.finished
    assert any(e["log_level"] == LogLevel.error and "shrank" in formatEvent(e) for e in events)
    assert openDescriptorsOn(repository / PACK) == 0
