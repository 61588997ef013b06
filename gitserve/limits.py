"""
Limits that keep one busy or hostile client from taking the daemon down: a cap
on concurrent git children with a bounded queue, and per-connection deadlines.

Every deadline here measures time spent waiting on the client, never the
length of a transfer: a clone that takes an hour but keeps moving bytes is
never cut, while a client that stops sending or stops reading is dropped
(and its git child ended, through the request's disconnect handling).
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gitserve.errors import ServiceUnavailable
from gitserve.service import GitProcessProtocol
from gitserve.web import GitChannel, GitSite

# How long a client refused for load is told to wait before trying again.
RETRY_AFTER = 10

DEFAULT_HEADER_TIMEOUT = 30.0

# A request body must average at least this many bytes a second over each
# idle-timeout window (Apache's mod_reqtimeout asks for 500): a client that
# trickles a byte at a time keeps resetting the idle timer for ever, while
# its push holds a git child and a job slot. Time the server itself holds the
# body back (git not reading, no job slot yet) never counts against it.
MIN_BODY_RATE = 256
DEFAULT_IDLE_TIMEOUT = 120.0


def defaultMaxJobs() -> int:
    """4 × the CPUs this process may run on: git children mostly wait on I/O."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return 4 * max(cpus, 1)


class JobLimiter:
    """
    At most C{maxJobs} git children at once; up to C{maxQueue} more requests
    wait for a slot, in arrival order; past that a request is refused with
    503 and C{Retry-After}, which git shows with the message.

    A queue rather than an immediate refusal because load comes in bursts (a
    CI fleet starting at once), and a short wait is better than a failed
    build; a bound on it because each waiting request holds a connection and,
    for a push, a client with a body to send.
    """

    log = Logger()

    def __init__(self, maxJobs: int, maxQueue: int) -> None:
        if maxJobs < 1:
            raise ValueError("maxJobs must be at least 1")
        self.maxJobs = maxJobs
        self.maxQueue = maxQueue
        self.running: set[GitProcessProtocol] = set()
        self._slotsTaken = 0
        self._waiting: deque[Deferred[None]] = deque()
        self._idleWaiters: list[Deferred[None]] = []

    @property
    def queued(self) -> int:
        """How many requests wait for a slot."""
        return len(self._waiting)

    @property
    def busy(self) -> int:
        """How many slots are taken (children running or starting)."""
        return self._slotsTaken

    def run(self, start: Callable[[], GitProcessProtocol]) -> Deferred[GitProcessProtocol]:
        """
        Call C{start} once a slot is free; the slot is held until the child
        it started has ended.

        Cancelling the result (the client went away while queued) gives up
        the place in the queue.

        @return: a L{Deferred} firing with what C{start} returned, or failing
            with L{ServiceUnavailable} when the queue is full.
        """
        return self._acquire().addCallback(self._started, start)

    def _acquire(self) -> Deferred[None]:
        if self._slotsTaken < self.maxJobs:
            self._slotsTaken += 1
            return succeed(None)
        if len(self._waiting) >= self.maxQueue:
            self.log.warn(
                "refusing a git request: {busy} running and {queued} waiting",
                busy=self._slotsTaken,
                queued=len(self._waiting),
            )
            return fail(
                ServiceUnavailable(
                    "The server is busy: too many git operations at once. "
                    f"Please try again in {RETRY_AFTER} seconds.",
                    headers={b"Retry-After": b"%d" % RETRY_AFTER},
                )
            )
        waiter: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def _started(self, _: None, start: Callable[[], GitProcessProtocol]) -> GitProcessProtocol:
        try:
            protocol = start()
        except BaseException:
            self._release()
            raise
        self.running.add(protocol)

        def ended(result: Any) -> Any:
            self.running.discard(protocol)
            self._release()
            return result

        protocol.done.addBoth(ended)
        return protocol

    def _release(self) -> None:
        if self._waiting:
            # The slot passes straight to the next in line.
            self._waiting.popleft().callback(None)
            return
        self._slotsTaken -= 1
        if self._slotsTaken == 0:
            waiters, self._idleWaiters = self._idleWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def whenIdle(self) -> Deferred[None]:
        """Fires once no child runs and nobody waits (at once if already so)."""
        if self._slotsTaken == 0 and not self._waiting:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._idleWaiters.append(waiter)
        return waiter

    def terminateAll(self) -> None:
        """End every running child (SIGTERM, then SIGKILL after its grace)."""
        for protocol in list(self.running):
            protocol.terminate()
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            waiter.errback(ServiceUnavailable("The server is restarting; please try again."))


class GuardedChannel(GitChannel):
    """
    A channel with a header deadline and a stall timeout on top of Twisted's
    idle timeout.

    Twisted's idle timeout (C{timeOut}) is reset by every byte received and
    covers an idle keep-alive connection and a push body that stops coming,
    but it is switched off while a response is produced, and a client that
    trickles one header byte a minute keeps resetting it. So:

      - C{headerTimeout}: the whole header block must arrive within this
        many seconds of its first byte;
      - C{stallTimeout}: while the client does not read (the transport's
        buffer is full and has paused us), the connection may stay stuck
        this long. Waiting on git (the client caught up, git still working)
        never counts, and neither does a push body the server holds back
        (see L{timeoutConnection});
      - a request body must arrive at L{MIN_BODY_RATE} bytes a second or
        more, measured over windows of C{stallTimeout}, except in windows
        where the server held it back.
    """

    headerTimeout: float | None = None
    stallTimeout: float | None = None
    _headerCall: IDelayedCall | None = None
    _stallCall: IDelayedCall | None = None
    _bodyCall: IDelayedCall | None = None
    _bodyBytes = 0
    _bodyHeld = False
    _awaitingHeaders = True
    log = Logger()

    def dataReceived(self, data: bytes) -> None:
        if self._awaitingHeaders and self._headerCall is None and self.headerTimeout:
            self._headerCall = self.callLater(self.headerTimeout, self._headersTooSlow)
        if self._bodyCall is not None:
            self._bodyBytes += len(data)
        super().dataReceived(data)
        body = self._pendingBody()
        if body is not None and body.holdsNetwork():
            self._bodyHeld = True

    def allHeadersReceived(self) -> None:
        self._awaitingHeaders = False
        self._cancel("_headerCall")
        super().allHeadersReceived()
        if self.stallTimeout and self._pendingBody() is not None:
            self._startBodyWindow()

    def allContentReceived(self) -> None:
        self._cancel("_bodyCall")
        super().allContentReceived()

    def _pendingBody(self) -> Any:
        """The streamed body of the request being received, if unfinished."""
        body = getattr(self.requests[-1], "body", None) if self.requests else None
        return body if body is not None and not body.complete else None

    def _startBodyWindow(self) -> None:
        self._bodyBytes = 0
        self._bodyHeld = False
        self._bodyCall = self.callLater(self.stallTimeout, self._checkBodyRate)

    def _checkBodyRate(self) -> None:
        self._bodyCall = None
        body = self._pendingBody()
        if body is None:
            return
        held = self._bodyHeld or body.holdsNetwork()
        if not held and self._bodyBytes < MIN_BODY_RATE * (self.stallTimeout or 0):
            self._drop(
                f"request body slower than {MIN_BODY_RATE} bytes/s over {{seconds}}s",
                self.stallTimeout,
            )
            return
        self._startBodyWindow()

    def requestDone(self, request: Any) -> None:
        self._awaitingHeaders = True
        super().requestDone(request)

    def pauseProducing(self) -> None:
        if self.stallTimeout and self._stallCall is None:
            self._stallCall = self.callLater(self.stallTimeout, self._clientStalled)
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._cancel("_stallCall")
        super().resumeProducing()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel("_headerCall")
        self._cancel("_stallCall")
        self._cancel("_bodyCall")
        super().connectionLost(reason)
        closed = getattr(self.site, "channelClosed", None)
        if closed is not None:
            closed(self)

    def timeoutConnection(self) -> None:
        """
        Twisted's idle timeout fired. A request whose body the server itself
        stopped reading (waiting for a job slot, or for git to catch up) is
        not an idle client: wait on, and time the client again from now.
        """
        for request in self.requests:
            body = getattr(request, "body", None)
            if body is not None and not body.complete and body.holdsNetwork():
                self.setTimeout(self.timeOut)
                return
        super().timeoutConnection()

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        if call is not None:
            setattr(self, name, None)
            if call.active():
                call.cancel()

    def _headersTooSlow(self) -> None:
        self._headerCall = None
        self._drop("headers not complete after {seconds}s", self.headerTimeout)

    def _clientStalled(self) -> None:
        self._stallCall = None
        self._drop("client read nothing for {seconds}s", self.stallTimeout)

    def _drop(self, why: str, seconds: float | None) -> None:
        self.log.info(
            "dropping {peer}: " + why, peer=str(self.transport.getPeer()), seconds=seconds
        )
        # Abort rather than close: a close would wait for the very buffer the
        # client does not read, and the request's disconnect handling ends
        # its git child.
        self.transport.abortConnection()


class GuardedSite(GitSite):
    """
    A L{GitSite} whose connections are L{GuardedChannel}s, and which knows
    them all, so that a shutdown can close them once their requests are
    answered (a response still in a socket buffer when the reactor stops
    would be cut short).
    """

    protocol = GuardedChannel

    def __init__(
        self,
        resource: Any,
        *,
        idleTimeout: float = DEFAULT_IDLE_TIMEOUT,
        headerTimeout: float = DEFAULT_HEADER_TIMEOUT,
        reactor: IReactorTime | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resource, timeout=idleTimeout, reactor=reactor, **kwargs)
        self.headerTimeout = headerTimeout
        self.stallTimeout = idleTimeout
        self.channels: set[GuardedChannel] = set()
        self._closedWaiters: list[Deferred[None]] = []

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.headerTimeout = self.headerTimeout
        channel.stallTimeout = self.stallTimeout
        self.channels.add(channel)
        return channel

    def channelClosed(self, channel: GuardedChannel) -> None:
        """A connection ended."""
        self.channels.discard(channel)
        if not self.channels:
            waiters, self._closedWaiters = self._closedWaiters, []
            for waiter in waiters:
                waiter.callback(None)

    def drainConnections(self) -> Deferred[None]:
        """
        Close every connection once the request it is answering (if any) is
        done: idle keep-alive connections now, busy ones after their response.
        Closing (not aborting) sends what is still buffered first.

        @return: fires when no connection is left.
        """
        for channel in list(self.channels):
            channel.persistent = False
            if not channel.requests:
                channel.loseConnection()
        if not self.channels:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closedWaiters.append(waiter)
        return waiter

    def abortConnections(self) -> None:
        """Drop every connection at once: the last step of a shutdown."""
        for channel in list(self.channels):
            channel.transport.abortConnection()
