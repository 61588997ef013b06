"""
HTTP spoken byte by byte, for the hostile-input tests.

curl and git normalise what they send (dot segments, escapes, header
folding); an attacker does not. These helpers write exactly the bytes a test
gives them and read whatever comes back, so the tests see the server's answer
to the request as written.
"""

from __future__ import annotations

import socket
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from gitserve.core.pktline import FLUSH, pktLine


@dataclass
class Response:
    """What came back on one connection: the raw bytes and the parsed status."""

    raw: bytes

    @property
    def status(self) -> int | None:
        """The status code of the first response, L{None} when there was none."""
        line = self.raw.split(b"\r\n", 1)[0]
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            return None
        return int(parts[1])

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]


def connect(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """A plain TCP connection to the daemon."""
    return socket.create_connection((host, port), timeout=timeout)


def readAll(sock: socket.socket, timeout: float = 10.0, limit: int = 64 * 1024 * 1024) -> bytes:
    """Read until the server closes the connection (or C{timeout} passes)."""
    sock.settimeout(timeout)
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + timeout
    while total < limit and time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except OSError:
            # A reset after the answer still leaves the answer in hand.
            break
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def exchange(host: str, port: int, data: bytes, timeout: float = 10.0) -> Response:
    """Send C{data} verbatim on a new connection and read until it closes."""
    with connect(host, port, timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            # The server may refuse and close before the whole request is
            # written; its answer is still readable.
            pass
        return Response(readAll(sock, timeout))


def request(
    method: str,
    target: str,
    headers: dict[str, str] | list[tuple[str, str]] | None = None,
    body: bytes = b"",
    version: str = "HTTP/1.1",
) -> bytes:
    """
    The bytes of one request, exactly as given: C{target} is not escaped or
    normalised. A C{Content-Length} is added for a body unless a header
    already frames it; C{Connection: close} makes the server end the
    exchange.
    """
    items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {name.lower() for name, _ in items}
    if "host" not in names:
        items.insert(0, ("Host", "localhost"))
    if body and "content-length" not in names and "transfer-encoding" not in names:
        items.append(("Content-Length", str(len(body))))
    if "connection" not in names:
        items.append(("Connection", "close"))
    head = f"{method} {target} {version}\r\n".encode("latin-1")
    head += b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in items)
    return head + b"\r\n" + body


def chunk(data: bytes) -> bytes:
    """One chunk of a chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"

UPLOAD_PACK_REQUEST = "application/x-git-upload-pack-request"
RECEIVE_PACK_REQUEST = "application/x-git-receive-pack-request"


def wantRequest(commit: str, capabilities: str = "ofs-delta no-progress") -> bytes:
    """A v0 upload-pack negotiation asking for one commit, as git sends it."""
    return pktLine(f"want {commit} {capabilities}\n".encode()) + FLUSH + pktLine(b"done\n")


def pushCommands(old: str, new: str, ref: str) -> bytes:
    """The command section of a v0 push (one ref update) with report-status."""
    return pktLine(f"{old} {new} {ref}\0report-status\n".encode()) + FLUSH


def endlessPack(objectSize: int = 5 * 1024**3, piece: int = 64 * 1024) -> Iterator[bytes]:
    """
    A pack that git reads happily for as long as it is fed: one blob of
    C{objectSize} bytes stored in uncompressed deflate blocks of random
    bytes. Being valid, it makes git keep reading, so what stops it is the
    server's cap, not git giving up on garbage.
    """
    import os

    yield b"PACK" + struct.pack(">II", 2, 1)
    # The object header: type 3 (blob), then the size as a little-endian
    # varint, 4 bits in the first byte and 7 in each after.
    size = objectSize
    first = (3 << 4) | (size & 0x0F)
    size >>= 4
    header = bytearray()
    while True:
        header.append(first | (0x80 if size else 0))
        if not size:
            break
        first = size & 0x7F
        size >>= 7
    yield bytes(header)
    compressor = zlib.compressobj(0)
    sent = 0
    while sent < objectSize:
        data = os.urandom(min(piece, objectSize - sent))
        sent += len(data)
        out = compressor.compress(data)
        if out:
            yield out
    yield compressor.flush()


@dataclass
class StreamOutcome:
    """How far a streamed upload got before the server answered or hung up."""

    sent: int
    response: Response
    seconds: float


def streamUntilAnswered(
    host: str,
    port: int,
    head: bytes,
    pieces: Iterator[bytes],
    chunked: bool = True,
    timeout: float = 30.0,
) -> StreamOutcome:
    """
    Send C{head}, then C{pieces} (as chunks when C{chunked}), for as long as
    the server neither answers nor closes; then read its answer. A server
    that reads everything would make this send all of C{pieces}: the caller
    bounds them, and the test checks how little was sent.
    """
    import select

    started = time.monotonic()
    sent = 0
    received = b""
    with connect(host, port, timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        pending = b""
        exhausted = False
        deadline = started + timeout
        while time.monotonic() < deadline:
            if not pending and not exhausted:
                piece = next(pieces, None)
                if piece is None:
                    exhausted = True
                    pending = LAST_CHUNK if chunked else b""
                else:
                    pending = chunk(piece) if chunked else piece
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 0.5)
            if readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                received += data
                if b"\r\n\r\n" in received:
                    break
            if writable and pending:
                try:
                    n = sock.send(pending)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:
                    break
                sent += n
                pending = pending[n:]
        sock.setblocking(True)
        # The rest of the answer; the server may keep the connection open to
        # drop what is still in flight, so this does not wait for a close.
        received += readAll(sock, timeout=1)
    return StreamOutcome(sent, Response(received), time.monotonic() - started)


def startFetch(host: str, port: int, commit: str, atLeast: int) -> socket.socket:
    """
    A raw v0 fetch of C{commit} whose answer has begun: the socket after
    C{atLeast} bytes of it were read, the rest still coming.
    """
    sock = connect(host, port)
    sock.sendall(
        request(
            "POST",
            "/project.git/git-upload-pack",
            {"Content-Type": UPLOAD_PACK_REQUEST},
            body=wantRequest(commit),
        )
    )
    got = 0
    while got < atLeast:
        data = sock.recv(65536)
        assert data, "the daemon closed before sending that much"
        got += len(data)
    return sock


def startPush(host: str, port: int, firstPart: bytes, headers: dict[str, str] | None = None):
    """A raw push to project.git whose body has begun with C{firstPart} (chunked)."""
    sock = connect(host, port)
    sock.sendall(
        request(
            "POST",
            "/project.git/git-receive-pack",
            headers or {"Content-Type": RECEIVE_PACK_REQUEST, "Transfer-Encoding": "chunked"},
        )
    )
    chunked = "Content-Length" not in (headers or {})
    for i in range(0, len(firstPart), 65536):
        piece = firstPart[i : i + 65536]
        sock.sendall(chunk(piece) if chunked else piece)
    return sock
