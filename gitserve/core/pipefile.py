"""
A pack cache flight's output moved from git's pipe into the flight's file
with C{splice(2)}: the kernel copies the pack into the page cache, and the
daemon never holds a byte of it. Its readers send it from there with
C{sendfile(2)} (L{gitserve.core.sendfile}) or read it (TLS, SSH).

Read into Python instead, the lead of a flight cost the daemon about twice
a plain fetch's CPU (84 to 89 ms against 40 to 47 ms for a 41 MB pack: a
read and a write of every byte, and a megabyte string per batch), where
the plain fetch's pipe is spliced to the socket (L{gitserve.http.relay}).
Spliced into the file, the lead costs 51 to 53 ms.

The flight takes the pipe as any output that relays it does
(L{gitserve.interfaces.IPipeOutput}): after git's first bytes came through
C{write}, and on a reactor that can watch it (not with C{--no-splice}).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IPushProducer, IReadDescriptor
from twisted.python.failure import Failure
from zope.interface import implementer

from gitserve.interfaces import IOutputPipe, IRelayReactor


@implementer(IReadDescriptor, IPushProducer)
class PipeMover(ABC):
    """
    What moves a git child's output from its pipe without Python in the way
    (into a flight's file here, to a socket in L{gitserve.http.relay}): the
    reactor watches the pipe while the mover runs, except while it waits a
    moment for git to fill the pipe (C{_batchCall}). Created paused; the
    child pauses, resumes and stops it where it would pause, resume and
    stop reading the pipe itself.
    """

    def __init__(self, pipe: IOutputPipe, reactor: IRelayReactor) -> None:
        self.pipe = pipe
        self.reactor = reactor
        self.paused = True
        self.stopped = False
        self._reading = False
        self._batchCall: IDelayedCall | None = None

    def pauseProducing(self) -> None:
        self.paused = True
        self._stopReading()
        self._cancelBatch()

    def stopProducing(self) -> None:
        """Nothing wants git's output from this mover any more: move nothing more."""
        self.stopped = True
        self._stopReading()
        self._cancelBatch()

    def fileno(self) -> int:
        return self.pipe.fileno()

    def logPrefix(self) -> str:
        return type(self).__name__

    @abstractmethod
    def resumeProducing(self) -> None:
        """The child reads on: so does the mover, unless it waits for a batch."""

    @abstractmethod
    def doRead(self) -> None:
        """The pipe is readable: move what it holds."""

    @abstractmethod
    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor stopped watching the pipe: it saw the pipe's end with
        nothing left in it (a hangup, as epoll reports it), or L{doRead}
        raised.
        """

    def _startReading(self) -> None:
        if not self._reading:
            self._reading = True
            self.reactor.addReader(self)

    def _stopReading(self) -> None:
        if self._reading:
            self._reading = False
            self.reactor.removeReader(self)

    def _cancelBatch(self) -> None:
        if self._batchCall is not None:
            call, self._batchCall = self._batchCall, None
            call.cancel()


class PipeToFile(PipeMover):
    """
    Moves a git child's output from its pipe to the end of a file, as it
    comes, in batches: after emptying the pipe it lets git fill it for
    C{batchDelay} seconds (the pipe holds C{batchSize}) before the next.

    @ivar offset: where in the file the next byte goes.
    """

    def __init__(
        self,
        pipe: IOutputPipe,
        fd: int,
        offset: int,
        reactor: IRelayReactor,
        batchSize: int,
        batchDelay: float,
        grew: Callable[[int], None],
        failed: Callable[[OSError], None],
    ) -> None:
        """
        @param grew: called with the count of each batch, once it is in the
            file (and counted as git's output).
        @param failed: called when the file cannot take more (a full disk);
            the pipe went back to the child's transport first, so the rest
            of git's output comes through the output's C{write}.
        """
        super().__init__(pipe, reactor)
        self.fd = fd
        self.offset = offset
        self.batchSize = batchSize
        self.batchDelay = batchDelay
        self.grew = grew
        self.failed = failed

    def resumeProducing(self) -> None:
        self.paused = False
        if self._batchCall is None and not self.stopped:
            self._startReading()

    def doRead(self) -> None:
        try:
            moved = os.splice(
                self.pipe.fileno(),
                self.fd,
                self.batchSize,
                offset_dst=self.offset,
                flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK,
            )
        except BlockingIOError:
            return
        except OSError as e:
            self._giveBack()
            self.failed(e)
            return
        if moved == 0:
            # git closed the pipe and it is empty: its transport sees the end.
            self._giveBack()
            return
        self.offset += moved
        self.pipe.moved(moved)
        self.grew(moved)
        if moved < self.batchSize and not (self.paused or self.stopped):
            # The pipe is empty: let it fill while git writes on.
            self._stopReading()
            self._batchCall = self.reactor.callLater(self.batchDelay, self._batchDue)

    def connectionLost(self, reason: Failure) -> None:
        """
        The reactor stopped watching the pipe: it saw the pipe's end with
        nothing left in it (a hangup, as epoll reports it), or L{doRead}
        raised (Twisted logged it). Either way the child's transport reads
        on from where the file's bytes end, and sees the end itself.
        """
        self._reading = False
        self._giveBack()

    def _batchDue(self) -> None:
        self._batchCall = None
        if not (self.paused or self.stopped):
            self._startReading()

    def _giveBack(self) -> None:
        """Move nothing more; the child's transport reads the pipe again."""
        if not self.stopped:
            self.stopProducing()
            self.pipe.ended()
