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
are spliced to git's stdin pipe; between two, the next size line is taken
exactly (peeked first, so no byte of the chunk after it comes along) and
parsed here. Once a wakeup's chunks are moved, Twisted's decoder is set to
where the socket now is (L{ChunkedBodyPosition}), so Twisted's own reading
is right at any moment, and the splice hands every other case to it: the
end of the body, a size line with extensions or malformed, a chunk past
the body's cap (refused there as always), a body refused or being dropped,
git gone. A gzip or length-framed body, TLS, a C{haproxy:} listener and
C{--no-splice} never start one.

Back-pressure stays what it was: a full stdin pipe pauses the body, hence
the network (until half the pipe is free, see L{InboundSplice._waitForRoom}),
as a full write buffer does on the Python path; and bytes the Python path
already gave git's stdin writer go out before any spliced one. What changes
is how often the daemon wakes: git sends a chunk of a few KiB at a time,
and the socket wakes the daemon once it holds L{BATCH} bytes or
L{BATCH_DELAY} after it was emptied (C{SO_RCVLOWAT}).
"""

from __future__ import annotations

import fcntl
import os
import re
import socket

from twisted.internet.interfaces import IDelayedCall, IReactorTime
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


# Woken when the socket holds this much, or BATCH_DELAY seconds after it was
# emptied (see InboundSplice._batch).
BATCH = 128 * 1024
BATCH_DELAY = 0.001

# The longest wait between two looks at a full stdin pipe: at 27 MB/s (git's
# index-pack of big blobs) half of a 1 MiB pipe lasts 19 ms.
MAX_ROOM_WAIT = 0.016

# Why moving stopped: nothing more to take now (the reactor calls again);
# git's pipe is full (the body waits until half of it is free); or what
# comes next is Twisted's own reading's.
WAIT = 0
PIPE_FULL = 1
TWISTED = 2

# Never wait on git's pipe (the socket is non-blocking already). splice(2)
# is Linux's: elsewhere nothing is spliced (spliceInbound).
SPLICE_FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


class InboundSplice:
    """
    Reads one chunked request body's socket while it streams into a git
    child's stdin, moving the chunks' bytes with C{splice(2)}.

    It stays in place until the body is complete, then gives the socket back
    to Twisted for the rest of the connection's life.
    """

    def __init__(
        self,
        channel: GitChannel,
        body: RequestBody,
        stdin: object,
        socketFD: int,
        clock: IReactorTime,
    ) -> None:
        self.clock = clock
        self._batchCall: IDelayedCall | None = None
        # The socket's SO_RCVLOWAT.
        self._mark = 1
        # The bytes of a size line the last wakeup left in the socket, waiting
        # for the rest: the mark goes back to one more after a batch.
        self._sizeLineWaiting = 0
        self.channel = channel
        self.body = body
        self.stdin = stdin
        self.transport = connectionOf(channel)
        self.socket = socketOf(self.transport)
        self.socketFD = socketFD
        self.pipeFD: int = stdin.fileno()  # type: ignore[attr-defined]
        self.pipeSize = fcntl.fcntl(self.pipeFD, fcntl.F_GETPIPE_SZ)
        self.position = ChunkedBodyPosition(channel)
        self._ownRead = interceptReads(self.transport, self.doRead)

    def doRead(self) -> object:
        """
        The socket is readable: move what can be moved, or let Twisted read.
        The reactor calls this in the transport's place, with its contract.
        """
        if self.body.complete:
            restoreReads(self.transport)
            self._wakeOn(1)
            return self._ownRead()
        if not self.body.takesDirectly() or self.stdin.disconnected:  # type: ignore[attr-defined]
            self._wakeOn(1)
            return self._ownRead()
        if not transportDrained(self.stdin):
            # What went through Python first is still in git's stdin writer:
            # hold the body until the writer has written it all.
            resumeWhenWritable(self.stdin)
            return None
        left = self.position.chunkLeft()
        before = b"\r\n" if left else self.position.beforeSizeLine()
        if before is None:
            self._wakeOn(1)
            return self._ownRead()
        spliced, framing, left, outcome = self._move(left, before, self.body.room())
        if spliced or framing:
            # Nothing else ran meanwhile: Twisted's decoder learns where the
            # socket is now, once for all the chunks moved.
            self.position.movedTo(left)
            self.body.movedDirectly(spliced)
            self.channel.bodyBytesTakenDirectly(spliced + framing)
        if outcome == WAIT:
            self._batch()
            return None
        # Whatever the socket holds is to be read when the reactor next
        # looks at it.
        self._wakeOn(1)
        if outcome == PIPE_FULL:
            self.body.pauseProducing()
            self._waitForRoom(BATCH_DELAY)
        elif not (spliced or framing):
            return self._ownRead()
        # Twisted's read is next, but not in this wakeup: the connection may
        # have been paused meanwhile.
        return None

    def _batch(self) -> None:
        """
        Nothing more can be moved now: be woken again once the socket holds
        L{BATCH} bytes, or L{BATCH_DELAY} from now by whatever it then holds
        past what is waiting already (C{_sizeLineWaiting}).

        git sends its chunks one by one as it writes them, a few KiB each,
        and a daemon woken for every one spends more on the wakeups than on
        the bytes (a 150 MB push: 12,170 wakeups, a third of a second of
        CPU). The kernel holds the readiness back (C{SO_RCVLOWAT});
        lowering the mark again reports what is there at once, so the end
        of the body waits at most L{BATCH_DELAY}.
        """
        if self._batchCall is None:
            self._setMark(BATCH)
            self._batchCall = self.clock.callLater(BATCH_DELAY, self._batchUp)

    def _batchUp(self) -> None:
        self._batchCall = None
        if not self.transport.disconnected:  # type: ignore[attr-defined]
            self._setMark(self._sizeLineWaiting + 1)

    def _waitForRoom(self, delay: float) -> None:
        """
        git reads slower than the client sends (index-pack of a 537 MB push
        takes 27 MB/s): wait until half its pipe is free, while git reads on.

        The pipe is writable again as soon as git took one buffer of it,
        and a body resumed then fills that one and pauses again, thousands
        of times (a 537 MB push: 13,563 wakeups that moved nothing, and 1.9
        s of the daemon's CPU). Nothing tells when the pipe is half empty,
        so it is looked at after C{delay}, then twice as long each time, up
        to L{MAX_ROOM_WAIT}.
        """
        self.clock.callLater(delay, self._checkRoom, delay)

    def _checkRoom(self, delay: float) -> None:
        if not self.stdin.disconnected:  # type: ignore[attr-defined]
            try:
                held = bytesWaiting(self.pipeFD)
            except OSError:
                held = 0
            if held > self.pipeSize // 2:
                self._waitForRoom(min(2 * delay, MAX_ROOM_WAIT))
                return
        # Room for the body again (or git is gone, which Twisted's path meets).
        self.body.resumeProducing()

    def _wakeOn(self, mark: int) -> None:
        """Be woken as soon as the socket holds C{mark} bytes, batching no more."""
        if self._batchCall is not None:
            call, self._batchCall = self._batchCall, None
            call.cancel()
        self._setMark(mark)

    def _setMark(self, mark: int) -> None:
        if mark != self._mark:
            try:
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, mark)
            except OSError:
                return
            self._mark = mark

    def _move(self, left: int, before: bytes, room: int | None) -> tuple[int, int, int, int]:
        """
        Move chunks: the rest of the current one (C{left} bytes), then for
        each next one its size line (and the CRLF C{before} it) taken
        exactly, peeked first so that no byte of the chunk comes along, and
        its bytes spliced; for as long as the socket has them, git's pipe
        takes them, the body's cap has room and this wakeup's share lasts.

        git's chunks are 8 KiB mostly, so this loop runs for each: it calls
        nothing it does not need to. A size line that is not all there yet,
        the last chunk, extensions, something malformed or a chunk past the
        cap are Twisted's decoder's to read, to end the body or refuse it as
        always.

        @return: the chunk bytes spliced, the framing bytes taken, the
            bytes of the current chunk still to come, and why it stopped:
            L{WAIT}, L{PIPE_FULL} or L{TWISTED}.
        """
        sock, socketFD, pipeFD = self.socket, self.socketFD, self.pipeFD
        spliced = framing = 0
        waitedOn, self._sizeLineWaiting = self._sizeLineWaiting, 0
        while spliced < BYTES_PER_WAKEUP:
            if not left:
                try:
                    peeked = sock.recv(SIZE_LINE_PEEK, socket.MSG_PEEK)
                except BlockingIOError:
                    return spliced, framing, left, WAIT
                except OSError:
                    return spliced, framing, left, TWISTED
                start = len(before)
                end = peeked.find(b"\r\n", start)
                if (
                    end < 0
                    and 0 < len(peeked) < SIZE_LINE_PEEK
                    and partOfSizeLine(peeked, before)
                    # Woken with no byte more than last time: the client
                    # closed (Twisted's read sees it).
                    and (spliced or framing or len(peeked) != waitedOn)
                ):
                    # git wrote a chunk's CRLF with it, its next size line
                    # is yet to come: what is there is not enough to wake for.
                    self._sizeLineWaiting = len(peeked)
                    return spliced, framing, left, WAIT
                if end < 0 or not peeked.startswith(before):
                    return spliced, framing, left, TWISTED
                if not CHUNK_SIZE.fullmatch(peeked, start, end):
                    return spliced, framing, left, TWISTED
                size = int(peeked[start:end], 16)
                if not size or (room is not None and size > room - spliced):
                    return spliced, framing, left, TWISTED
                sock.recv(end + 2)
                framing += end + 2
                left = size
                before = b"\r\n"
            try:
                moved = os.splice(socketFD, pipeFD, left, flags=SPLICE_FLAGS)
            except BlockingIOError:
                # Nothing more from the client, or no room in git's pipe.
                return spliced, framing, left, PIPE_FULL if bytesWaiting(socketFD) else WAIT
            except OSError:
                # git closed its stdin (EPIPE), or the connection failed: the
                # same error meets Twisted's path, which handles it as always.
                return spliced, framing, left, TWISTED
            if not moved:
                # The client closed: Twisted's read sees the end.
                return spliced, framing, left, TWISTED
            spliced += moved
            left -= moved
        return spliced, framing, left, WAIT


def partOfSizeLine(data: bytes, before: bytes) -> bool:
    """Whether C{data} may be the start of C{before} and a size line git sends."""
    if len(data) <= len(before):
        return before.startswith(data)
    return data.startswith(before) and bool(CHUNK_SIZE.fullmatch(data, len(before)))


def spliceInbound(
    channel: HTTPChannel, body: RequestBody, process: object, clock: IReactorTime
) -> InboundSplice | None:
    """
    Splice C{body} into C{process}'s stdin from now on, when the connection
    and the body's framing allow it (see the module's docstring).
    """
    if not hasattr(os, "splice"):
        return None
    socketFD = sendfileDescriptor(channel.transport)
    stdin = stdinWriter(process)
    if not isinstance(channel, GitChannel) or socketFD is None or stdin is None or body.inflated:
        return None
    if not ChunkedBodyPosition(channel).chunked:
        return None
    return InboundSplice(channel, body, stdin, socketFD, clock)
