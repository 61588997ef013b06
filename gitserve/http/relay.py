"""
git's output relayed from its pipe to the client's socket with C{splice(2)}:
the pack goes from one kernel buffer to the other, never through Python.

A git child writes its first bytes through the response as always (they
decide between an answer and an C{ERR} packet, see
L{gitserve.core.process.MAX_SHORT_ANSWER}); then, on a plain TCP or UNIX
connection (L{gitserve.twistedinternals.sendfileDescriptor}), the response
takes the pipe (L{gitserve.http.smart.SmartResponse.relayPipe}) and a
L{PipeRelay} moves the rest. Each time the pipe holds a batch (or a moment
after it became readable with less), all it holds becomes one chunk: its
size (C{FIONREAD}) is known before a byte of it is sent, so the size line
goes first and exactly that many bytes follow, even if git dies meanwhile
(they are in the pipe already). The sending itself,
in order with Twisted's writes and paused when the socket is full, is
L{gitserve.core.direct}'s.

Nothing else changes: the child stays the request's producer and passes its
pauses on to the relay; at the pipe's end the child's transport reads it
again, sees the end, and the response is finished (or aborted, when git
failed) through Twisted as always; a client that leaves stops the relay.
"""

from __future__ import annotations

import fcntl

from twisted.internet.error import ConnectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request

from gitserve.core.direct import DirectSender, PipeRange, bytesWaiting
from gitserve.core.pipefile import PipeMover
from gitserve.http.channel import connectionOf
from gitserve.interfaces import IOutputPipe, IRelayReactor

log = Logger()

# A relayed pipe is grown to this (Linux's default limit for an unprivileged
# process): each chunk then carries up to this much, git blocks on a full
# pipe a sixteenth as often, and it keeps writing while the relay waits for
# a batch (MIN_BATCH).
RELAY_PIPE_SIZE = 1024 * 1024

# git writes 64 KiB at a time: sending each piece as it comes costs a wakeup
# and three system calls (size line, range, CRLF) per piece. The relay sends
# once this much is waiting, or after BATCH_DELAY seconds. The delay also
# caps the throughput: nothing says when the pipe holds MIN_BATCH, so a git
# faster than the delay fills the pipe and waits for the timer; at 5 ms and a
# 1 MiB pipe a 537 MB fetch was held to about 120 MB/s (4.4 s against 3.1 s
# unspliced). At 1 ms the cap is about 1 GB/s, and the daemon still spends a
# fifth of the CPU of relaying through Python (240 ticks against 1,081 for
# four such fetches).
MIN_BATCH = 256 * 1024
BATCH_DELAY = 0.001


class PipeRelay(PipeMover):
    """
    Moves a git child's output from its pipe to the request's socket as
    chunks of the response, driven by the reactor: the pipe is watched for
    reading while the relay runs, the socket for writing (through its
    transport) while it is full.

    @ivar request: the response being relayed into; its head went out
        through Twisted already.
    """

    def __init__(self, request: Request, pipe: IOutputPipe, reactor: IRelayReactor) -> None:
        super().__init__(pipe, reactor)
        self.request = request
        self.fd = pipe.fileno()
        # _batchCall: waiting for the pipe to fill up to MIN_BATCH, until
        # BATCH_DELAY is up.
        self._batchDue = False
        self._chunked = bool(getattr(request, "chunked", False))
        transport = request.channel.transport  # type: ignore[attr-defined]
        self._sender = DirectSender(transport, self._moved)
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, RELAY_PIPE_SIZE)
        except OSError:
            # Over the user's pipe quota (or an older kernel): the pipe's
            # size only sets how much each chunk carries.
            pass

    def resumeProducing(self) -> None:
        """The socket has room again (the child pauses the relay when it is full)."""
        self.paused = False
        self._relay()

    def doRead(self) -> None:
        """
        The pipe is readable: git wrote more, or closed it with nothing left
        (the relay reads only between two chunks, so none is cut).
        """
        if bytesWaiting(self.fd) == 0:
            self._end()
            return
        self._relay()

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor stopped watching the pipe: it saw its end with nothing
        left in it (a hangup, as epoll reports it), or L{doRead} raised.
        """
        self._reading = False
        if reason.check(ConnectionDone):
            self._end()
        else:
            self._fail(reason.value)

    # Relaying --------------------------------------------------------------------

    def _relay(self) -> None:
        """
        Finish the chunk under way, then send what the pipe holds as the
        next: at once from L{MIN_BATCH} on, else once L{BATCH_DELAY} is up.
        """
        if self.paused or self.stopped:
            return
        try:
            if self._sender.pending and not self._sender.send():
                return
            available = bytesWaiting(self.fd)
            if available and available < MIN_BATCH and not self._batchDue:
                # git keeps writing into the pipe meanwhile.
                self._stopReading()
                if self._batchCall is None:
                    self._batchCall = self.reactor.callLater(BATCH_DELAY, self._batchUp)
                return
            if available:
                self._batchDue = False
                self._sender.queue(PipeRange(self.fd, available), self._chunked)
                if not self._sender.send():
                    return
        except OSError as e:
            self._fail(e)
            return
        if not self.paused and not self.stopped:
            self._startReading()

    def _batchUp(self) -> None:
        """Waited long enough: what the pipe holds goes, however little."""
        self._batchCall = None
        self._batchDue = True
        self._relay()

    def _moved(self, length: int) -> None:
        self.pipe.moved(length)
        # What Request.write would have counted, for the access log.
        self.request.sentLength += length

    def _end(self) -> None:
        """All of git's output went out: the child's transport takes the pipe back."""
        if self.stopped:
            return
        self.stopProducing()
        self.pipe.ended()

    def _fail(self, error: BaseException) -> None:
        """
        The connection failed: end it. Its loss stops the relay and the
        child, through the request, as any client's going away does.
        """
        log.info("relaying git's output failed: {error}", error=error)
        self.stopProducing()
        connectionOf(self.request.channel).abortConnection()
