"""
Hostile request bodies: endless uploads, gzip bombs, broken pkt-lines and
request-smuggling shapes. Each is refused early with the right status, with
the daemon's memory and the disk bounded, and the next clone still works.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path

import pytest

from gitserve.core.pktline import pktLine
from tests.conftest import Daemon, GitClient, startDaemon
from tests.rawhttp import (
    LAST_CHUNK,
    RECEIVE_PACK_REQUEST,
    UPLOAD_PACK_REQUEST,
    Response,
    chunk,
    endlessPack,
    exchange,
    pushCommands,
    request,
    streamUntilAnswered,
    wantRequest,
)

# The caps, scaled down so the suite stays fast: what matters is that the
# refusal comes at the cap and not at the end of a 5 GB upload.
PUSH_CAP = 8 * 1024 * 1024
NEGOTIATION_CAP = 4 * 1024 * 1024
FIVE_GB = 5 * 1024**3
# What may still be in flight when the refusal comes: socket buffers on both
# sides of the loopback plus the discard allowance.
SLACK = 24 * 1024 * 1024
ZERO = "0" * 40


@dataclass
class Target:
    daemon: Daemon
    git: GitClient
    base: Path
    head: str

    @property
    def repo(self) -> Path:
        return self.base / "srv" / "project.git"

    def cloneWorks(self) -> None:
        """A fresh clone over the daemon still gets main."""
        clone = self.base / f"clone-{os.urandom(4).hex()}"
        self.git.run("clone", "-q", self.daemon.url("project.git"), str(clone))
        assert self.git.output("rev-parse", "HEAD", cwd=clone) == self.head
        assert not self.daemon.settledChildren(), "a git child outlived its request"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """A daemon with small caps, serving a pushable project.git."""
    base = tmp_path_factory.mktemp("bodies")
    git = GitClient(base / "home")
    head = git.seed(
        base / "work",
        base / "srv" / "project.git",
        http__receivepack="true",
        http__maxRequestBuffer=str(NEGOTIATION_CAP),
    )
    daemon = startDaemon(base / "srv", "--max-push-size", str(PUSH_CAP))
    try:
        yield Target(daemon, git, base, head)
    finally:
        daemon.stop()


def treeSize(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def endlessNegotiation() -> Iterator[bytes]:
    """Valid upload-pack lines, without end: 5 GB of them if nobody stops it."""
    line = pktLine(b"have " + b"1" * 40 + b"\n") * 1000
    return repeat(line, FIVE_GB // len(line))


def endlessPush(head: str) -> Iterator[bytes]:
    """A push whose pack is a 5 GB blob git would read to the end."""
    yield pushCommands(head, "2" * 40, "refs/heads/endless")
    yield from endlessPack(FIVE_GB)


def postHead(route: str, contentType: str, extra: dict[str, str] | None = None) -> bytes:
    return request(
        "POST",
        f"/project.git/{route}",
        {"Content-Type": contentType, "Transfer-Encoding": "chunked", **(extra or {})},
    )


def assertNoLeftovers(target: Target) -> None:
    """No quarantine directory, no temporary pack and no lock survives a refusal."""
    objects = target.repo / "objects"
    leftovers = [
        p
        for p in target.repo.rglob("*")
        if p.name.endswith(".lock")
        or p.name.startswith(("tmp_objdir", "incoming-", "tmp_pack_", "tmp_idx_"))
    ]
    assert leftovers == [], leftovers
    assert not any(objects.glob("tmp_objdir*"))


@pytest.mark.parametrize(
    ("route", "contentType", "cap", "pieces"),
    [
        ("git-upload-pack", UPLOAD_PACK_REQUEST, NEGOTIATION_CAP, "negotiation"),
        ("git-receive-pack", RECEIVE_PACK_REQUEST, PUSH_CAP, "push"),
    ],
)
def test_endlessChunkedUploadIsRefusedAtTheCap(
    target: Target, route: str, contentType: str, cap: int, pieces: str
) -> None:
    """A chunked 5 GB POST is a 413 after about the cap, with memory and disk bounded."""
    rssBefore = target.daemon.rss()
    diskBefore = treeSize(target.repo)
    body = endlessNegotiation() if pieces == "negotiation" else endlessPush(target.head)
    outcome = streamUntilAnswered(
        target.daemon.host, target.daemon.port, postHead(route, contentType), body
    )
    assert outcome.response.status == 413, outcome.response.raw[:300]
    assert outcome.sent < cap + SLACK, outcome.sent
    assert target.daemon.rss() - rssBefore < 64 * 1024 * 1024
    assert not target.daemon.settledChildren()
    assert treeSize(target.repo) - diskBefore < 1024 * 1024
    assertNoLeftovers(target)
    target.cloneWorks()


def test_declaredOversizeIsRefusedBeforeTheBody(target: Target) -> None:
    """A Content-Length past the cap is a 413 from the headers alone, nothing read."""
    outcome = streamUntilAnswered(
        target.daemon.host,
        target.daemon.port,
        request(
            "POST",
            "/project.git/git-receive-pack",
            {"Content-Type": RECEIVE_PACK_REQUEST, "Content-Length": str(FIVE_GB)},
        ),
        endlessPush(target.head),
        chunked=False,
    )
    assert outcome.response.status == 413
    assert outcome.sent < SLACK
    assert not target.daemon.settledChildren()
    target.cloneWorks()


def gzipBomb(prefix: bytes, inflated: int, filler: Iterator[bytes] | None = None) -> bytes:
    """C{prefix} and then C{inflated} bytes of zeros (or C{filler}), gzipped."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [compressor.compress(prefix)]
    zeros = b"\0" * (1024 * 1024)
    total = 0
    for piece in filler or repeat(zeros):
        out.append(compressor.compress(piece))
        total += len(piece)
        if total >= inflated:
            break
    out.append(compressor.flush())
    return b"".join(out)


def zeroPack() -> Iterator[bytes]:
    """A pack of one huge blob of zeros, stored (uncompressed) so gzip crushes it."""
    header, objectHeader, *_ = list(_first(endlessPack(FIVE_GB), 2))
    yield header + objectHeader
    block = b"\0" * 65535
    stored = (
        b"\x00" + len(block).to_bytes(2, "little") + (len(block) ^ 0xFFFF).to_bytes(2, "little")
    )
    # A raw deflate stream of stored blocks, after the zlib header.
    yield b"\x78\x01"
    while True:
        yield (stored + block) * 16


def _first(pieces: Iterator[bytes], n: int) -> Iterator[bytes]:
    for _ in range(n):
        yield next(pieces)


@pytest.mark.parametrize("route", ["git-upload-pack", "git-receive-pack"])
def test_gzipBombStopsAtTheInflateCap(target: Target, route: str) -> None:
    """A body a few hundred KB gzipped and 256 MB inflated is a 413 at the cap."""
    if route == "git-upload-pack":
        bomb = gzipBomb(wantRequest(target.head)[:-4], 256 * 1024 * 1024)
        contentType = UPLOAD_PACK_REQUEST
    else:
        bomb = gzipBomb(
            pushCommands(target.head, "3" * 40, "refs/heads/bomb"), 256 * 1024 * 1024, zeroPack()
        )
        contentType = RECEIVE_PACK_REQUEST
    assert len(bomb) < 2 * 1024 * 1024
    rssBefore = target.daemon.rss()
    response = exchange(
        target.daemon.host,
        target.daemon.port,
        request(
            "POST",
            f"/project.git/{route}",
            {"Content-Type": contentType, "Content-Encoding": "gzip"},
            body=bomb,
        ),
        timeout=60,
    )
    assert response.status == 413, response.raw[:300]
    assert target.daemon.rss() - rssBefore < 64 * 1024 * 1024
    assert not target.daemon.settledChildren()
    assertNoLeftovers(target)
    assert "refs/heads/bomb" not in target.git.output("for-each-ref", cwd=target.repo)
    target.cloneWorks()


def test_gzipBodyWithinTheCapIsServed(target: Target) -> None:
    """The control: a gzipped negotiation within the cap gets its pack."""
    body = gzip.compress(wantRequest(target.head))
    response = exchange(
        target.daemon.host,
        target.daemon.port,
        request(
            "POST",
            "/project.git/git-upload-pack",
            {"Content-Type": UPLOAD_PACK_REQUEST, "Content-Encoding": "gzip"},
            body=body,
        ),
    )
    assert response.status == 200
    assert b"PACK" in response.body


MALFORMED_PKT_LINES = [
    b"-001",
    b"+00a" + b"x" * 6,
    b" 01f" + b"x" * 27,
    b"00_4",
    b"0032want " + ZERO[:10].encode(),
    b"00ffabc",
    b"0003",
    b"fff1" + b"x" * 10,
    b"0x1f" + b"x" * 27,
    b"0009done",
]


@pytest.mark.parametrize("body", MALFORMED_PKT_LINES)
@pytest.mark.parametrize(
    ("route", "contentType"),
    [
        ("git-upload-pack", UPLOAD_PACK_REQUEST),
        ("git-receive-pack", RECEIVE_PACK_REQUEST),
    ],
)
def test_malformedPktLinesAreAProtocolError(
    target: Target, route: str, contentType: str, body: bytes
) -> None:
    """A broken pkt-line stream is a protocol error (400, or git's ERR), and nothing changes."""
    before = target.git.output("for-each-ref", cwd=target.repo)
    response = exchange(
        target.daemon.host,
        target.daemon.port,
        request("POST", f"/project.git/{route}", {"Content-Type": contentType}, body=body),
    )
    if route == "git-upload-pack":
        # Negotiation is read whole and checked by gitserve before git runs.
        assert response.status == 400, response.raw[:300]
    else:
        # A push streams into git as it arrives, so git finds the fault and
        # says so (protocol error, or its input ending early) in an ERR
        # packet, the only way to fail a stateless-rpc push: git shows it
        # as "remote error".
        assert response.status == 200, response.raw[:300]
        assert b"ERR fatal: " in response.body, response.raw[:400]
    assert target.git.output("for-each-ref", cwd=target.repo) == before
    assert not target.daemon.settledChildren()


def test_malformedPktLinesLeaveTheServerWorking(target: Target) -> None:
    """After every malformed body above, a clone still works."""
    for body in MALFORMED_PKT_LINES:
        exchange(
            target.daemon.host,
            target.daemon.port,
            request(
                "POST", "/project.git/git-upload-pack", {"Content-Type": UPLOAD_PACK_REQUEST}, body
            ),
        )
    target.cloneWorks()


SMUGGLING = {
    "content-length-and-chunked": (
        [("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
        chunk(b"0000") + LAST_CHUNK,
    ),
    "chunked-and-content-length": (
        [("Transfer-Encoding", "chunked"), ("Content-Length", "4")],
        chunk(b"0000") + LAST_CHUNK,
    ),
    "duplicate-content-length": (
        [("Content-Length", "4"), ("Content-Length", "40")],
        b"0000",
    ),
    "comma-content-length": ([("Content-Length", "4, 4")], b"0000"),
    "signed-content-length": ([("Content-Length", "+4")], b"0000"),
    "hex-content-length": ([("Content-Length", "0x4")], b"0000"),
    "negative-chunk": ([("Transfer-Encoding", "chunked")], b"-4\r\n0000\r\n" + LAST_CHUNK),
    "prefixed-chunk": ([("Transfer-Encoding", "chunked")], b"0x4\r\n0000\r\n" + LAST_CHUNK),
    "spaced-chunk": ([("Transfer-Encoding", "chunked")], b" 4\r\n0000\r\n" + LAST_CHUNK),
    "underscore-chunk": ([("Transfer-Encoding", "chunked")], b"0_4\r\n0000\r\n" + LAST_CHUNK),
    "plus-chunk": ([("Transfer-Encoding", "chunked")], b"+4\r\n0000\r\n" + LAST_CHUNK),
    "chunk-overrun": ([("Transfer-Encoding", "chunked")], b"2\r\n0000\r\n" + LAST_CHUNK),
    "gzip-transfer-encoding": (
        [("Transfer-Encoding", "gzip, chunked")],
        chunk(b"0000") + LAST_CHUNK,
    ),
    "double-chunked": (
        [("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")],
        chunk(b"0000") + LAST_CHUNK,
    ),
    "unknown-transfer-encoding": (
        [("Transfer-Encoding", "identity")],
        chunk(b"0000") + LAST_CHUNK,
    ),
}


def smuggle(target: Target, route: str, contentType: str, shape: str) -> Response:
    """Send one ambiguous framing with a second request hidden behind it; the answer."""
    headers, body = SMUGGLING[shape]
    smuggled = request("GET", "/project.git/info/refs?service=git-upload-pack")
    raw = (
        f"POST /project.git/{route} HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: {contentType}\r\n".encode()
        + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers)
        + b"\r\n"
        + body
        + smuggled
    )
    return exchange(target.daemon.host, target.daemon.port, raw)


SMUGGLING_ROUTES = [
    ("git-upload-pack", UPLOAD_PACK_REQUEST),
    ("git-receive-pack", RECEIVE_PACK_REQUEST),
]


@pytest.mark.parametrize("shape", sorted(SMUGGLING))
@pytest.mark.parametrize(("route", "contentType"), SMUGGLING_ROUTES)
def test_smugglingShapesAreBadRequests(
    target: Target, route: str, contentType: str, shape: str
) -> None:
    """Ambiguous framing is a 400 and the smuggled second request never runs."""
    response = smuggle(target, route, contentType, shape)
    assert response.status == 400, response.raw[:300]
    assert response.raw.count(b"HTTP/1.1 ") == 1, response.raw[:600]
    assert not target.daemon.settledChildren()


def test_smugglingLeavesTheServerWorking(target: Target) -> None:
    """After all the smuggling shapes, sent here and now, the next clone works."""
    for route, contentType in SMUGGLING_ROUTES:
        for shape in sorted(SMUGGLING):
            smuggle(target, route, contentType, shape)
    target.cloneWorks()
