"""pkt-line framing: exact lengths, control packets, and the malformed shapes git rejects."""

from __future__ import annotations

import pytest

from gitserve.core.pktline import (
    DELIM_PKT,
    FLUSH_PKT,
    MAX_PAYLOAD,
    RESPONSE_END_PKT,
    PktLineParser,
    ProtocolError,
    errorLine,
    parsePktLines,
    pktLine,
)


def test_roundTrip() -> None:
    """Framed payloads and control packets parse back to themselves, in order."""
    stream = pktLine(b"command=ls-refs\n") + b"0001" + pktLine(b"peel\n") + b"0000" + b"0002"
    assert parsePktLines(stream) == [
        b"command=ls-refs\n",
        DELIM_PKT,
        b"peel\n",
        FLUSH_PKT,
        RESPONSE_END_PKT,
    ]
    assert parsePktLines(stream)[1] is DELIM_PKT


def test_piecesOfAnySize() -> None:
    """A stream fed one byte at a time yields the same packets."""
    stream = pktLine(b"want x\n") + b"0000" + pktLine(b"done\n")
    parser = PktLineParser()
    packets = [p for byte in stream for p in parser.feed(bytes([byte]))]
    parser.close()
    assert packets == [b"want x\n", FLUSH_PKT, b"done\n"]


@pytest.mark.parametrize(
    "stream",
    [
        b"-001",
        b"+00a",
        b" 01f",
        b"00_4",
        b"0x10",
        b"0003",
        b"fff1" + b"x" * 65600,
    ],
)
def test_malformedLengths(stream: bytes) -> None:
    """Signs, underscores, spaces, the reserved length 3 and oversize lengths are errors."""
    with pytest.raises(ProtocolError):
        parsePktLines(stream)


@pytest.mark.parametrize("stream", [b"00", b"000aabc", b"0009done\n0010short"])
def test_truncatedStreams(stream: bytes) -> None:
    """A stream that ends inside a packet is an error, not a silent short read."""
    with pytest.raises(ProtocolError):
        parsePktLines(stream)


def test_limitsAndErrors() -> None:
    """The largest payload frames; one more byte is refused; ERR packets carry their message."""
    assert pktLine(b"x" * MAX_PAYLOAD)[:4] == b"fff0"
    with pytest.raises(ValueError):
        pktLine(b"x" * (MAX_PAYLOAD + 1))
    assert errorLine("no such thing") == b"0016ERR no such thing\n"
