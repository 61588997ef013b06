"""
pkt-line framing (gitprotocol-common(5)), sans-IO.

Lengths are parsed by hand: Python's C{int(x, 16)} also accepts C{-}, C{+},
C{_} and white space, which would let C{-001} or C{ 01f} through.
"""

from __future__ import annotations

from collections.abc import Iterator

FLUSH = b"0000"
DELIM = b"0001"
RESPONSE_END = b"0002"

# The largest pkt-line git writes or accepts: 65516 bytes of payload.
MAX_PKT_LENGTH = 65520
MAX_PAYLOAD = MAX_PKT_LENGTH - 4

_HEX = b"0123456789abcdefABCDEF"


class ProtocolError(ValueError):
    """The bytes are not a well-formed pkt-line stream."""


class Special(bytes):
    """A control packet (flush, delim, response-end), told apart from data by type."""


FLUSH_PKT = Special(FLUSH)
DELIM_PKT = Special(DELIM)
RESPONSE_END_PKT = Special(RESPONSE_END)
_SPECIALS = {0: FLUSH_PKT, 1: DELIM_PKT, 2: RESPONSE_END_PKT}


def pktLine(payload: bytes) -> bytes:
    """Frame one payload as a pkt-line."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"pkt-line payload of {len(payload)} bytes exceeds {MAX_PAYLOAD}")
    return b"%04x" % (len(payload) + 4) + payload


def errorLine(message: str) -> bytes:
    """An C{ERR} packet: git stops and shows C{remote error: <message>}."""
    return pktLine(b"ERR " + message.encode("utf-8", "replace")[: MAX_PAYLOAD - 5] + b"\n")


def parseLength(header: bytes) -> int:
    """
    The value of a four-character pkt-line length.

    @raise ProtocolError: for anything but exactly four hex digits, or for
        the lengths 3 and 4 (reserved) or one past the maximum.
    """
    if len(header) != 4 or header.translate(None, _HEX):
        raise ProtocolError(f"bad pkt-line length {header!r}")
    length = int(header, 16)
    if length == 3 or length > MAX_PKT_LENGTH:
        raise ProtocolError(f"bad pkt-line length {header!r}")
    return length


class PktLineParser:
    """
    Splits a byte stream into packets, fed in arbitrary pieces.

    Data packets come out as L{bytes}; flush, delim and response-end as the
    L{Special} constants, so callers compare with C{is}.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Add C{data} and yield every packet it completes."""
        self._buffer += data
        while len(self._buffer) >= 4:
            length = parseLength(self._buffer[:4])
            if length in _SPECIALS:
                self._buffer = self._buffer[4:]
                yield _SPECIALS[length]
                continue
            if length == 4:
                # An empty data packet: legal, though git never sends one.
                self._buffer = self._buffer[4:]
                yield b""
                continue
            if len(self._buffer) < length:
                return
            packet, self._buffer = self._buffer[4:length], self._buffer[length:]
            yield packet

    def close(self) -> None:
        """
        Declare the end of the stream.

        @raise ProtocolError: when it ends inside a packet.
        """
        if self._buffer:
            raise ProtocolError(f"truncated pkt-line stream ({len(self._buffer)} bytes left)")


def parsePktLines(data: bytes) -> list[bytes]:
    """Every packet of a complete stream, as L{PktLineParser} yields them."""
    parser = PktLineParser()
    packets = list(parser.feed(data))
    parser.close()
    return packets
