"""
Bytes sent on a connection's socket behind Twisted's back: a range of a file
(C{sendfile(2)}) or of a pipe (C{splice(2)}) goes from the kernel to the
socket without passing through Python, framed as an HTTP chunk when the
response is chunked (its size line and closing CRLF sent around it).

Every user shares this one sender: the pack cache's readers
(L{gitserve.core.sendfile}, over HTTP and git://), git's output relayed
from its pipe (L{gitserve.http.relay}), and the dumb protocol's file
downloads (L{gitserve.http.dumb}).

Bytes are only ever sent on the socket when Twisted's own buffer for it is
empty, so they stay in order with what Twisted writes (the head before, the
last chunk after); when the socket is full, the HTTP channel is paused
exactly as a full buffer pauses it, so the channel's stall timeout drops a
client that stops reading.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
import termios
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from gitserve.twistedinternals import (
    resumeWhenWritable,
    sendfileDescriptor,
    socketOf,
    transportDrained,
)


def bytesWaiting(fd: int) -> int:
    """How many bytes the pipe or socket open as C{fd} holds, ready to read (C{FIONREAD})."""
    return int(struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0])


@dataclass(frozen=True)
class FileRange:
    """C{length} bytes of the file open as C{fd}, from C{offset}: sent with sendfile(2)."""

    fd: int
    offset: int
    length: int


@dataclass(frozen=True)
class PipeRange:
    """
    The next C{length} bytes waiting in the pipe open as C{fd}: moved with
    splice(2). They must be in the pipe already (a chunk's size line is
    sent before its bytes, so they cannot be waited for in the middle).
    """

    fd: int
    length: int


Range = FileRange | PipeRange


class SourceEnded(OSError):
    """
    A range's source held fewer bytes than the range (a file that shrank
    under us): what was announced cannot be sent. Unlike a failed
    connection, this is worth an error in the log.
    """

    def __init__(self) -> None:
        super().__init__(errno.EIO, "the source ended inside a range being sent")


class DirectSender:
    """
    Ranges queued for one connection's socket, sent in order, each as a
    whole HTTP chunk when the response is chunked: a new size line never
    starts before the previous chunk's bytes and CRLF are out.

    @ivar onSent: called with the count of every range's bytes sent (not
        the framing), for the caller's accounting.
    """

    def __init__(self, transport: object, onSent: Callable[[int], None]) -> None:
        self.transport = transport
        self.onSent = onSent
        self._segments: deque[bytes | Range] = deque()

    @property
    def pending(self) -> bool:
        """Whether something queued is still to be sent."""
        return bool(self._segments)

    def queue(self, range: Range, chunked: bool) -> None:
        """Queue C{range}, as one chunk of a chunked response or as is."""
        if chunked:
            self._segments.extend((b"%x\r\n" % range.length, range, b"\r\n"))
        else:
            self._segments.append(range)

    def send(self) -> bool:
        """
        Send what is queued, for as long as the socket takes it.

        @return: true once everything queued is sent; false when the socket
            (or Twisted's buffer ahead of it) is full: the connection's
            producer is then paused until it drains (L{resumeWhenWritable}),
            and the rest stays queued.
        @raise SourceEnded: a range's source ended before its length.
        @raise OSError: the connection is closed or failed.
        """
        while self._segments:
            if not transportDrained(self.transport):
                resumeWhenWritable(self.transport)
                return False
            fd = sendfileDescriptor(self.transport)
            if fd is None:
                raise ConnectionError("connection closed")
            try:
                self._sendFirst(fd)
            except BlockingIOError:
                resumeWhenWritable(self.transport)
                return False
        return True

    def _sendFirst(self, fd: int) -> None:
        """Send from the first segment; drop it when done."""
        segment = self._segments[0]
        more = len(self._segments) > 1
        if isinstance(segment, bytes):
            # A size line or CRLF: held back (MSG_MORE) to leave in one
            # packet with the bytes that follow it.
            n = socketOf(self.transport).send(segment, socket.MSG_MORE if more else 0)
            if n < len(segment):
                self._segments[0] = segment[n:]
            else:
                self._segments.popleft()
            return
        rest: Range
        if isinstance(segment, FileRange):
            n = os.sendfile(fd, segment.fd, segment.offset, segment.length)
            rest = FileRange(segment.fd, segment.offset + n, segment.length - n)
        else:
            # SPLICE_F_NONBLOCK: never wait on the pipe (the bytes are there);
            # the socket is non-blocking already.
            flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK | (os.SPLICE_F_MORE if more else 0)
            n = os.splice(segment.fd, fd, segment.length, flags=flags)
            rest = PipeRange(segment.fd, segment.length - n)
        if n == 0:
            raise SourceEnded()
        self.onSent(n)
        if rest.length:
            self._segments[0] = rest
        else:
            self._segments.popleft()
