"""
A push body moved from the client's socket into git's stdin with
C{splice(2)}: the pack goes from one kernel buffer to the other, never
through Python; only the chunked framing around it (a size line and a CRLF
per chunk, a few bytes each) is read by the daemon.

git sends every push larger than its C{http.postBuffer} (1 MiB by default)
chunked and uncompressed, and that is the framing this takes: on a plain
TCP or UNIX connection (L{gitserve.twistedinternals.sendfileDescriptor}),
the request's socket is read by an L{InboundSplice} instead of Twisted
(L{gitserve.twistedinternals.interceptReads}). Inside a chunk, its bytes
are spliced to git's stdin pipe; between two, the next size line is read
(exactly: peeked first, so no byte of the chunk after it comes along) and
given to Twisted's decoder as if Twisted had read it. After each move the
decoder's position is moved on (L{ChunkedBodyPosition}), so Twisted's own
reading is right at any moment, and the splice hands every other case to
it: the end of the body, a size line not all there yet, a chunk past the
body's cap (refused there as always), a body refused or being dropped, git
gone. A gzip or length-framed body, TLS, a C{haproxy:} listener and
C{--no-splice} never start one.

Back-pressure stays what it was: a full stdin pipe pauses the body, hence
the network, until the pipe is writable
(L{gitserve.twistedinternals.resumeWhenWritable} on git's stdin writer),
as a full write buffer does on the Python path; and bytes the Python path
already gave git's stdin writer go out before any spliced one.
"""

from __future__ import annotations

import os
import re
import socket

from twisted.web.http import HTTPChannel

from gitserve.core.direct import bytesWaiting
from gitserve.http.body import RequestBody
from gitserve.http.channel import GitChannel, connectionOf
from gitserve.twistedinternals import (
    ChunkedBodyPosition,
    interceptReads,
    restoreReads,
    resumeWhenWritable,
    sendfileDescriptor,
    socketOf,
    stdinWriter,
    transportDrained,
)

# One wakeup moves at most about this much, as Twisted's read of a push
# body takes (gitserve.http.smart.PUSH_READ_SIZE), so that one fast push
# does not starve the others.
BYTES_PER_WAKEUP = 256 * 1024

# Enough for a chunk's CRLF and size line (git sends no extensions); a
# longer one is left to Twisted's decoder, which reads any.
SIZE_LINE_PEEK = 32

# A size line as git sends it: hex digits only (Twisted reads extensions too).
CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")


# What a step returns when it took nothing: wait for the reactor to call
# again, or leave this part to Twisted's own reading.
WAIT = 0
TWISTED = -1


class InboundSplice:
    """
    Reads one chunked request body's socket while it streams into a git
    child's stdin, moving the chunks' bytes with C{splice(2)}.

    It stays in place until the body is complete, then gives the socket back
    to Twisted for the rest of the connection's life.

    @ivar moved: the bytes spliced so far.
    """

    def __init__(self, channel: GitChannel, body: RequestBody, stdin: object, socketFD: int):
        self.channel = channel
        self.body = body
        self.stdin = stdin
        self.transport = connectionOf(channel)
        self.socket = socketOf(self.transport)
        self.socketFD = socketFD
        self.pipeFD: int = stdin.fileno()  # type: ignore[attr-defined]
        self.position = ChunkedBodyPosition(channel)
        self.moved = 0
        self._ownRead = interceptReads(self.transport, self.doRead)

    def doRead(self) -> object:
        """
        The socket is readable: move what can be moved, or let Twisted read.
        The reactor calls this in the transport's place, with its contract.
        """
        if self.body.complete:
            restoreReads(self.transport)
            return self._ownRead()
        if not self.body.takesDirectly() or self.stdin.disconnected:  # type: ignore[attr-defined]
            return self._ownRead()
        if not transportDrained(self.stdin):
            # What went through Python first is still in git's stdin writer:
            # hold the body until the writer has written it all.
            resumeWhenWritable(self.stdin)
            return None
        room = self.body.room()
        taken = 0
        # git's chunks are 8 KiB mostly: this loop runs for each, so it
        # does no more than it must (see the module's docstring).
        while taken < BYTES_PER_WAKEUP:
            left = self.position.chunkLeft()
            if left:
                if room is not None:
                    left = min(left, room - taken)
                count = self._splice(left)
            else:
                count = self._takeSizeLine()
                if count > 0 and not self.body.takesDirectly():
                    # The announced size is past the cap: refused.
                    taken += count
                    break
            if count == TWISTED and not taken:
                return self._ownRead()
            if count <= 0:
                # Waiting; or Twisted's read is next, but not in this
                # wakeup: the connection may have been paused meanwhile.
                break
            taken += count
        if taken:
            self.channel.bodyBytesTakenDirectly(taken)
        return None

    def _splice(self, count: int) -> int:
        """
        Move up to C{count} bytes of the current chunk into git's stdin.

        @return: how many were moved, L{WAIT} or L{TWISTED}.
        """
        if count <= 0:
            # Past the body's cap: Twisted's reading refuses it.
            return TWISTED
        try:
            moved = os.splice(
                self.socketFD, self.pipeFD, count, flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
            )
        except BlockingIOError:
            if bytesWaiting(self.socketFD):
                # The client sent more than git's pipe has room for.
                resumeWhenWritable(self.stdin)
            return WAIT
        except OSError:
            # git closed its stdin (EPIPE), or the connection failed: the
            # same error meets Twisted's path, which handles it as always.
            return TWISTED
        if not moved:
            # The client closed: Twisted's read sees the end.
            return TWISTED
        self.moved += moved
        self.position.chunkBytesTaken(moved)
        self.body.movedDirectly(moved)
        return moved

    def _takeSizeLine(self) -> int:
        """
        Take exactly the next size line (and the CRLF before it) off the
        socket, peeked first so that no byte of the chunk comes along, when
        it is one git sends: hex digits of a chunk that is not the last.
        Anything else (not all there yet, the last chunk, extensions,
        something malformed) is Twisted's decoder's to read, to end the body
        or refuse it as always.

        @return: how many bytes were taken, L{WAIT} or L{TWISTED}.
        """
        before = self.position.beforeSizeLine()
        if before is None:
            return TWISTED
        try:
            peeked = self.socket.recv(SIZE_LINE_PEEK, socket.MSG_PEEK)
        except BlockingIOError:
            return WAIT
        except OSError:
            return TWISTED
        end = peeked.find(b"\r\n", len(before))
        if end < 0 or not peeked.startswith(before):
            return TWISTED
        digits = peeked[len(before) : end]
        if not CHUNK_SIZE.fullmatch(digits):
            return TWISTED
        size = int(digits, 16)
        if not size:
            return TWISTED
        self.socket.recv(end + 2)
        self.position.sizeLineTaken(size)
        # The cap's check on each size line, as Twisted's reading makes it
        # (gitserve.twistedinternals.watchChunkSizes).
        self.body.chunkAnnounced(size)
        return end + 2


def spliceInbound(channel: HTTPChannel, body: RequestBody, process: object) -> InboundSplice | None:
    """
    Splice C{body} into C{process}'s stdin from now on, when the connection
    and the body's framing allow it (see the module's docstring).
    """
    socketFD = sendfileDescriptor(channel.transport)
    stdin = stdinWriter(process)
    if not isinstance(channel, GitChannel) or socketFD is None or stdin is None or body.inflated:
        return None
    if not ChunkedBodyPosition(channel).chunked:
        return None
    return InboundSplice(channel, body, stdin, socketFD)
