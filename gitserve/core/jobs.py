"""
The job limiter: a cap on concurrent git children with a bounded queue, the
same for every front door, so a clone storm over one transport cannot starve
the others.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger

from gitserve.core.errors import Busy
from gitserve.interfaces import IGitJob

# How long a client refused for load is told to wait before trying again.
RETRY_AFTER = 10

_Job = TypeVar("_Job", bound=IGitJob)


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
    L{Busy}, whose message git shows.

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
        self.running: set[IGitJob] = set()
        self._slotsTaken = 0
        self._waiting: deque[Deferred[None]] = deque()
        self._idleWaiters: list[Deferred[None]] = []
        # Requests refused because the queue was full, for the metrics.
        self.refusals = 0

    @property
    def queued(self) -> int:
        """How many requests wait for a slot."""
        return len(self._waiting)

    @property
    def busy(self) -> int:
        """How many slots are taken (children running or starting)."""
        return self._slotsTaken

    def run(self, start: Callable[[], _Job]) -> Deferred[_Job]:
        """
        Call C{start} once a slot is free; the slot is held until the child
        it started has ended.

        Cancelling the result (the client went away while queued) gives up
        the place in the queue.

        @return: a L{Deferred} firing with what C{start} returned, or failing
            with L{Busy} when the queue is full.
        """
        return self._acquire().addCallback(self._started, start)

    def _acquire(self) -> Deferred[None]:
        if self._slotsTaken < self.maxJobs:
            self._slotsTaken += 1
            return succeed(None)
        if len(self._waiting) >= self.maxQueue:
            self.refusals += 1
            self.log.warn(
                "refusing a git request: {busy} running and {queued} waiting",
                busy=self._slotsTaken,
                queued=len(self._waiting),
            )
            return fail(
                Busy(
                    "The server is busy: too many git operations at once. "
                    f"Please try again in {RETRY_AFTER} seconds.",
                    retryAfter=RETRY_AFTER,
                )
            )
        waiter: Deferred[None] = Deferred(self._waiting.remove)
        self._waiting.append(waiter)
        return waiter

    def _started(self, _: None, start: Callable[[], _Job]) -> _Job:
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
            waiter.errback(Busy("The server is restarting; please try again."))
