"""
Property-based fuzzing (hypothesis) of the three parsers hostile input meets
first: the pkt-line parser, the gzip request-body reader, and URL-to-path
resolution. Properties: nothing but the documented errors ever escapes, and
no path outside the root is ever resolved.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from urllib.parse import unquote_to_bytes

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from gitserve.core.errors import InvalidRequest, TooLarge
from gitserve.core.pktline import (
    FLUSH_PKT,
    MAX_PAYLOAD,
    PktLineParser,
    ProtocolError,
    parseLength,
    parsePktLines,
    pktLine,
)
from gitserve.core.repository import isSafeSegment, resolveRepository
from gitserve.http.body import INFLATE_STEP, BodyLost
from gitserve.http.routes import matchRoute

from .fakes import cappedBody

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def splitAt(data: bytes, cuts: list[int]) -> list[bytes]:
    """C{data} cut at the given offsets (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)]


# pkt-line -------------------------------------------------------------------

# Bytes biased towards what breaks length parsers: hex digits, signs, spaces,
# underscores, "0x".
tricky = st.lists(
    st.sampled_from([b"0", b"1", b"f", b"F", b"-", b"+", b" ", b"_", b"x", b"\n", b"\0", b"g"]),
    max_size=40,
).map(b"".join)
streams = st.one_of(
    st.binary(max_size=300), tricky, st.binary(max_size=30).map(lambda b: b"00" + b)
)


@FUZZ
@given(streams, st.lists(st.integers(min_value=0), max_size=8))
def test_pktLineParserRaisesOnlyProtocolError(data: bytes, cuts: list[int]) -> None:
    """Any bytes, fed in any pieces: packets or ProtocolError, and the same as fed whole."""
    try:
        whole = parsePktLines(data)
    except ProtocolError:
        whole = None
    parser = PktLineParser()
    packets: list[bytes] = []
    try:
        for piece in splitAt(data, cuts):
            packets.extend(parser.feed(piece))
        parser.close()
    except ProtocolError:
        assert whole is None
        return
    assert packets == whole


@FUZZ
@given(st.binary(min_size=4, max_size=4))
def test_lengthIsExactlyFourHexDigits(header: bytes) -> None:
    """A length parses iff it is four hex digits (not 3, not past the maximum)."""
    isHex = all(c in b"0123456789abcdefABCDEF" for c in header)
    try:
        value = parseLength(header)
    except ProtocolError:
        assert not isHex or int(header, 16) == 3 or int(header, 16) > MAX_PAYLOAD + 4
        return
    assert isHex and value == int(header, 16)


@FUZZ
@given(
    st.lists(st.binary(min_size=1, max_size=200), max_size=20), st.lists(st.integers(0), max_size=6)
)
def test_pktLinesRoundTrip(payloads: list[bytes], cuts: list[int]) -> None:
    """What pktLine frames, the parser gives back unchanged, whatever the pieces."""
    data = b"".join(pktLine(p) for p in payloads) + FLUSH_PKT
    parser = PktLineParser()
    packets: list[bytes] = []
    for piece in splitAt(data, cuts):
        packets.extend(parser.feed(piece))
    parser.close()
    assert packets[:-1] == payloads
    assert packets[-1] is FLUSH_PKT


# The gzip body reader ------------------------------------------------------------


def readBody(
    pieces: list[bytes], limit: int, encoding: bytes | None = b"gzip"
) -> tuple[bytes | None, Exception | None]:
    """Feed pieces to a RequestBody as the network would; its result or error."""
    network = StringTransport()
    body = cappedBody(network, limit, encoding)
    result: list[bytes] = []
    errors: list[Exception] = []
    body.readAll().addCallbacks(result.append, lambda f: errors.append(f.value))
    for piece in pieces:
        if result or errors:
            break
        body.dataReceived(piece)
    if not result and not errors:
        body.allReceived()
    assert len(result) + len(errors) == 1, "the body neither finished nor failed"
    return (result[0] if result else None), (errors[0] if errors else None)


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0), max_size=6), st.integers(1, 4096))
def test_gzipReaderOnGarbageRaisesOnlyDocumentedErrors(
    data: bytes, cuts: list[int], limit: int
) -> None:
    """Arbitrary bytes declared as gzip: a body, a 400 or a 413, never anything else."""
    result, error = readBody(splitAt(data, cuts), limit)
    if error is not None:
        assert isinstance(error, InvalidRequest | TooLarge), repr(error)
    else:
        assert result is not None and len(result) <= limit


@FUZZ
@given(
    st.one_of(st.binary(max_size=5000), st.integers(0, 300_000).map(lambda n: b"\0" * n)),
    st.lists(st.integers(0), max_size=6),
    st.integers(1, 200_000),
)
def test_gzipReaderInflatesExactlyUpToTheCap(data: bytes, cuts: list[int], limit: int) -> None:
    """Real gzip comes back whole within the cap and is a 413 past it, never more kept."""
    pieces = splitAt(gzip.compress(data), cuts)
    result, error = readBody(pieces, limit)
    if len(data) <= limit:
        assert error is None and result == data
    else:
        assert isinstance(error, TooLarge)


def test_gzipBombKeepsAtMostTheCap() -> None:
    """A 64 MiB bomb in one network read is cut at the cap: no more than cap + a step is held."""
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024), compresslevel=9)
    network = StringTransport()
    body = cappedBody(network, 1024 * 1024, b"gzip")
    sizes: list[int] = []

    class Counting:
        def registerProducer(self, producer: object, streaming: bool) -> None:
            pass

        def unregisterProducer(self) -> None:
            pass

        def write(self, data: bytes) -> None:
            sizes.append(len(data))

    errors: list[Exception] = []
    body.streamTo(Counting()).addErrback(lambda f: errors.append(f.value))
    body.dataReceived(bomb)
    assert isinstance(errors[0], TooLarge)
    assert sum(sizes) <= 1024 * 1024
    assert max(sizes) <= INFLATE_STEP


def test_lostBodyIsBodyLost() -> None:
    """A client leaving mid-body fails the read with BodyLost, the documented error."""
    body = cappedBody(StringTransport(), 100, None)
    errors: list[Exception] = []
    body.readAll().addErrback(lambda f: errors.append(f.value))
    body.dataReceived(b"0000")
    body.connectionLost()
    assert isinstance(errors[0], BodyLost)


# The path resolver -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A root of repositories with every kind of way out, and the outside it must not reach."""
    base = tmp_path_factory.mktemp("fuzzroot")
    root = base / "root"
    outside = base / "outside"
    for gitDir in (root / "project.git", root / "sub" / "nested.git", outside / "secret.git"):
        (gitDir / "objects").mkdir(parents=True)
        (gitDir / "refs").mkdir()
        (gitDir / "HEAD").write_text("ref: refs/heads/main\n")
    (root / "wt").mkdir()
    (root / "wt" / ".git").write_text(f"gitdir: {root / 'project.git'}\n")
    (root / "evil").mkdir()
    (root / "evil" / ".git").write_text(f"gitdir: {outside / 'secret.git'}\n")
    (root / "relevil").mkdir()
    (root / "relevil" / ".git").write_text("gitdir: ../../outside/secret.git\n")
    (root / "link.git").symlink_to(outside / "secret.git")
    (root / "dirlink").symlink_to(outside)
    (root / "loop").symlink_to(root / "loop")
    (root / "inner-link.git").symlink_to(root / "project.git")
    return root.resolve(), outside.resolve()


segmentPieces = st.sampled_from(
    [
        "..",
        ".",
        "",
        "project.git",
        "project",
        "sub",
        "nested",
        "nested.git",
        "wt",
        "evil",
        "relevil",
        "link.git",
        "link",
        "dirlink",
        "secret.git",
        "outside",
        "loop",
        "inner-link.git",
        ".git",
        "-x",
        "/",
        "\\",
        "\x00",
        "\n",
        "%2e",
        "%2F",
        "..%2F",
        "é",
        "root",
        "objects",
        "HEAD",
    ]
)
segments = st.lists(
    st.one_of(segmentPieces, st.text(max_size=6)).flatmap(
        lambda a: st.one_of(st.just(a), segmentPieces.map(lambda b: a + b))
    ),
    max_size=6,
)


@FUZZ
@given(segments)
def test_resolverNeverLeavesTheRoot(tree: tuple[Path, Path], names: list[str]) -> None:
    """Whatever the segments, resolution finds nothing or a git directory inside the root."""
    root, outside = tree
    raw = [name.encode("utf-8", "surrogatepass") for name in names]
    repository = resolveRepository(root, raw)
    if repository is not None:
        real = Path(os.path.realpath(repository.gitDir))
        assert real.is_relative_to(root), real
        assert not real.is_relative_to(outside)
        assert all(isSafeSegment(name) for name in names)


@FUZZ
@given(st.lists(st.one_of(segmentPieces, st.text(max_size=5)), max_size=6), st.booleans())
def test_fullUrlPathNeverLeavesTheRoot(
    tree: tuple[Path, Path], names: list[str], percentEncode: bool
) -> None:
    """A raw URL path, split and unescaped as Twisted does, never resolves outside the root."""
    root, _ = tree
    path = "/" + "/".join(names) + "/info/refs"
    if percentEncode:
        path = "".join(f"%{ord(c):02x}" if c in "./" and c != "/" else c for c in path)
    wire = path.encode("utf-8", "surrogatepass")
    # What twisted.web's Site.getResourceFor does: split on "/", then unquote.
    postpath = [unquote_to_bytes(p) for p in wire[1:].split(b"/")]
    try:
        decoded = [p.decode("utf-8") for p in postpath]
    except UnicodeDecodeError:
        return
    matched = matchRoute(decoded)
    assume(matched is not None)
    _, _, repositorySegments = matched
    repository = resolveRepository(root, [s.encode("utf-8") for s in repositorySegments])
    if repository is not None:
        assert Path(os.path.realpath(repository.gitDir)).is_relative_to(root)
